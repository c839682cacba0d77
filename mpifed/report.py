"""Reading traces back for people: ``mpifed info`` tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import trace as tracemod
from .errors import MpifedError

COLUMNS = ("round", "loss", "grad_norm", "f_gap", "dist_to_opt", "bits_up", "bits_up_index", "bits_down", "time_s")


def info(path: Path, every: int | None = None) -> None:
    """Print one trace (header + per-round table) or, for a folder, one line per trace."""
    if path.is_dir():
        _folder(path)
        return
    t = tracemod.load(path)
    cfg = t.config
    print(f"trace      {t.path}")
    print(f"status     {t.attrs.get('status')}" + (f": {t.attrs['message']}" if t.attrs.get("message") else ""))
    print(f"mpifed     {t.attrs.get('mpifed_version')} (schema {t.attrs.get('schema_version')}), "
          f"{t.attrs.get('mpi_size')} MPI rank(s)")
    env = t.attrs.get("environment", {})
    if env:
        hosts = sorted({r["host"] for r in env.get("ranks", [])})
        backends = sorted({r["backend"] for r in env.get("ranks", [])})
        print(f"where      {', '.join(hosts)}; {env.get('mpi_library')}; backend {', '.join(backends)}")
    print(f"problem    {cfg.get('dataset')} ({t.attrs.get('data_source')}): n = {t.attrs.get('n_clients')} clients, "
          f"d = {t.attrs.get('dimension')}, lam = {cfg.get('lam')}, f* = {t.attrs.get('f_star')}")
    print(f"method     {t.attrs.get('method')}")
    print("config     " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items()) if v is not None))
    print("bits       per client, cumulative; bits_up includes bits_up_index (sparse indices)")
    m = t.metrics
    n = t.rounds
    if n == 0:
        print("(no rounds recorded)")
        return
    step = every or max(1, n // 30)
    rows = sorted(set(range(0, n, step)) | {n - 1})
    cols = [c for c in COLUMNS if c in m]
    print("  ".join(f"{c:>12}" for c in cols))
    for i in rows:
        print("  ".join(f"{m[c][i]:>12.0f}" if c == "round" else f"{m[c][i]:>12.4e}" for c in cols))


def _folder(folder: Path) -> None:
    paths = sorted(folder.glob("*.h5"))
    if not paths:
        raise MpifedError(f"no .h5 traces in {folder}")
    print(f"{'trace':<32} {'algorithm':>10} {'status':>10} {'rounds':>7} {'grad_norm':>11} {'bits_up':>11} {'time_s':>9}")
    for p in paths:
        t = tracemod.load(p)
        m = t.metrics
        last = lambda key: m[key][-1] if key in m and len(m[key]) else np.nan  # noqa: E731
        print(f"{p.name:<32} {t.config.get('algorithm', '?'):>10} {t.attrs.get('status'):>10} {t.rounds - 1:>7} "
              f"{last('grad_norm'):>11.3e} {last('bits_up'):>11.4e} {last('time_s'):>9.3f}")
