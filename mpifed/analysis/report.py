"""Reading traces back for people: ``mpifed info`` tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import trace as tracemod
from ..errors import MpifedError

COLUMNS = ("round", "grad_norm", "prox_grad_norm", "nnz", "f_gap", "dist_to_opt", "pca_gap", "participants", "bits_up",
           "bits_up_index", "bits_down", "time_s", "test_accuracy")
# networks (--model): no optimum to measure against; FedRCO's monitor counts where the trace has them
NN_COLUMNS = ("round", "loss", "grad_norm", "test_accuracy", "test_loss", "participants", "bits_up", "bits_down",
              "time_s", "rollbacks", "resets", "inversions")


def is_network(t: tracemod.Trace) -> bool:
    """Whether the trace is of a network (``--model``): f*, x* and a gradient-norm target do not apply."""
    return t.config.get("model") is not None


def info(path: Path, every: int | None = None, target: float = 1e-10) -> None:
    """Print one trace (header + per-round table) or, for a folder, one line per trace (cost to ``target``)."""
    if path.is_dir():
        _folder(path, target)
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
    problem = f"problem    {cfg.get('dataset')} ({t.attrs.get('data_source')}): n = {t.attrs.get('n_clients')} clients, "
    if is_network(t):
        print(problem + f"model {cfg.get('model')} with {t.attrs.get('dimension')} parameters")
    else:
        print(problem + f"d = {t.attrs.get('dimension')}, lam = {cfg.get('lam')}, f* = {t.attrs.get('f_star')}")
    part = t.attrs.get("partition")
    if isinstance(part, dict):
        print(f"partition  {part.get('spec')} (seed {part.get('seed')}): m_i in [{part.get('m_min')}, "
              f"{part.get('m_max')}], redraws {part.get('redraws', 0)}, "
              f"rows moved to small clients {part.get('moved_rows', 0)}")
    if t.attrs.get("test_set"):
        print(f"test       {t.attrs['test_set']}")
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
    cols = [c for c in (NN_COLUMNS if is_network(t) else COLUMNS) if c in m]
    print("  ".join(f"{c:>12}" for c in cols))
    for i in rows:
        print("  ".join(f"{m[c][i]:>12.0f}" if c == "round" else f"{m[c][i]:>12.4e}" for c in cols))


def to_target(t: tracemod.Trace, target: float) -> dict:
    """A trace's cost to reach ||grad P|| <= target (a PCA trace: pca_gap = 1 - <x, v_1>^2 <= target; a composite
    run, ``--l1``: its prox-gradient norm ``prox_grad_norm``): the first such row's round, bits and seconds.

    Rounds, bits and seconds are NaN when the run never got there; ``best_test_accuracy`` is the largest
    evaluated ``test_accuracy`` of the whole run (NaN without a test set).
    """
    m = t.metrics
    measure = next((name for name in ("pca_gap", "prox_grad_norm") if name in m), "grad_norm")
    g = m.get(measure, np.array([]))
    hit = np.flatnonzero(g <= target)
    row = int(hit[0]) if hit.size else None
    at = lambda key: float(m[key][row]) if row is not None and key in m else np.nan  # noqa: E731
    last = lambda key: float(m[key][-1]) if key in m and len(m[key]) else np.nan  # noqa: E731
    return {"name": t.path.stem, "algorithm": t.config.get("algorithm", "?"), "status": t.attrs.get("status"),
            "rounds": float(row) if row is not None else np.nan, "exchanges": at("exchanges"), "bits_up": at("bits_up"),
            "bits_up_index": at("bits_up_index"), "bits_down": at("bits_down"), "seconds": at("time_s"),
            "recorded": t.rounds - 1, "final_grad_norm": last(measure), "final_f_gap": last("f_gap"),
            "best_test_accuracy": _nanmax(m.get("test_accuracy"))}


def _nanmax(values) -> float:
    values = np.asarray(values if values is not None else [], dtype=np.float64)
    return float(np.nanmax(values)) if np.isfinite(values).any() else np.nan


def comparison(folder: Path, target: float) -> list[dict]:
    """:func:`to_target` for every trace in a folder, sorted by name."""
    return [to_target(t, target) for t in _traces(folder)]


def _traces(folder: Path) -> list:
    """Every trace in a folder, sorted by name (an error if there is none)."""
    paths = sorted(Path(folder).glob("*.h5"))
    if not paths:
        raise MpifedError(f"no .h5 traces in {folder}")
    return [tracemod.load(p) for p in paths]


def best_accuracy(t: tracemod.Trace) -> dict:
    """A network trace's best evaluated test accuracy, the first round it was reached, and the bits and
    seconds spent by then (NaN without evaluations)."""
    m = t.metrics
    acc = np.asarray(m.get("test_accuracy", []), dtype=np.float64)
    row = int(np.nanargmax(acc)) if np.isfinite(acc).any() else None
    at = lambda key: float(m[key][row]) if row is not None and key in m else np.nan  # noqa: E731
    return {"name": t.path.stem, "algorithm": t.config.get("algorithm", "?"), "status": t.attrs.get("status"),
            "recorded": t.rounds - 1, "best_test_accuracy": at("test_accuracy"), "round": at("round"),
            "bits_up": at("bits_up"), "bits_down": at("bits_down"), "seconds": at("time_s"),
            "final_loss": float(m["loss"][-1]) if len(m.get("loss", [])) else np.nan}


def _folder(folder: Path, target: float = 1e-10) -> None:
    traces = _traces(folder)
    if all(is_network(t) for t in traces):
        _network_folder(traces)
        return
    rows = [to_target(t, target) for t in traces]
    measure = "||grad P|| (--l1 runs: ||G_1/L(x)||)" if any("prox_grad_norm" in t.metrics for t in traces) else "||grad P||"
    print(f"to {measure} <= {target:g} (PCA traces: pca_gap <= {target:g}): rounds, exchanges, bits per client "
          f"(uplink incl. indices; downlink), seconds (client + comm + server); '-' = not reached")
    print(f"{'run':<24} {'algorithm':>11} {'status':>10} {'rounds':>7} {'exchanges':>9} {'bits_up':>11} {'bits_down':>11} "
          f"{'seconds':>9} {'final |grad|':>13} {'best test acc':>13}")
    fmt = lambda v, f: "-" if not np.isfinite(v) else format(v, f)  # noqa: E731
    for r in rows:
        print(f"{r['name']:<24} {r['algorithm']:>11} {r['status']:>10} {fmt(r['rounds'], '.0f'):>7} "
              f"{fmt(r['exchanges'], '.0f'):>9} {fmt(r['bits_up'], '.4e'):>11} {fmt(r['bits_down'], '.4e'):>11} {fmt(r['seconds'], '.3f'):>9} "
              f"{r['final_grad_norm']:>13.3e} {fmt(r['best_test_accuracy'], '.4f'):>13}")


def _network_folder(traces: list) -> None:
    """One line per network trace: its best test accuracy and what it cost to get there."""
    print("best test accuracy of the global model, the first round it was reached, and the bits per client "
          "(uplink incl. indices; downlink) and seconds (client + comm + server) spent by then")
    print(f"{'run':<24} {'algorithm':>14} {'status':>10} {'rounds':>7} {'best acc':>9} {'at round':>9} "
          f"{'bits_up':>11} {'bits_down':>11} {'seconds':>9} {'final loss':>11}")
    fmt = lambda v, f: "-" if not np.isfinite(v) else format(v, f)  # noqa: E731
    for r in map(best_accuracy, traces):
        print(f"{r['name']:<24} {r['algorithm']:>14} {r['status']:>10} {r['recorded']:>7} "
              f"{fmt(r['best_test_accuracy'], '.4f'):>9} {fmt(r['round'], '.0f'):>9} {fmt(r['bits_up'], '.4e'):>11} "
              f"{fmt(r['bits_down'], '.4e'):>11} {fmt(r['seconds'], '.3f'):>9} {fmt(r['final_loss'], '.4e'):>11}")
