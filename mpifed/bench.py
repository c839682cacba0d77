"""``mpifed bench``: FedNL against the C++ u-FedNL reference figures (issue 7).

    mpiexec -n 2 mpifed bench [--only w8a a9a phishing] [--json FILE] [--rounds N] [--list]

Each row is one ordinary mpifed run, in-process through :func:`mpifed.driver.run` on every rank,
of the setup u-FedNL's ``bin_fednl_local`` was measured with (Burlachenko & Richtarik, u-FedNL;
FedNL of Safaryan et al., ICML 2022, Algorithm 1 with Option 2 = "option B", H + l^k I):
142 clients, rows shuffled with a fixed seed (123, u-FedNL's default ``--reshuffle_train_seed``;
numpy's permutation, not u-FedNL's generator), m = floor(rows / 142) consecutive shuffled rows per
client (the remainder dropped), intercept, lambda = 1e-3, Top-K with K = 8d, theoretical alpha (1),
stop at ||grad P(x^k)|| <= 1e-14 or after 1000 rounds, x^0 = 0. The x*/f* reference solve is
skipped (``reference_iterations = 0``): u-FedNL does not do it either.

Per row, from the trace (rank 0's clock) and from timers this module puts around
``LogisticBlock.derivatives`` (gradients and Hessians), ``TopK.compress`` and ``TraceWriter.write``
while the row runs (the shared modules are not changed):

* ``rounds_to_tol`` = the first k with ||grad P(x^k)|| <= tol; ``seconds_to_tol`` = the sum of the
  round times of rows 0..k (client + comm + server, as ``time_s``); ``wall_s`` = the whole
  ``driver.run`` call, setup (data loading, H_i^0) and trace writing included;
* per-round means over rows 0..k by phase: client (``derivatives``, ``compress``, the rest),
  comm (the double-double reduction, waiting for the slowest rank included), server (the solve),
  trace (writing the row; outside the round times);
* ``rounds_per_s`` = rounds_to_tol / seconds_to_tol, ``client_rounds_per_s`` = n * rounds_per_s;
* ``peak_rss_mb`` = the peak resident set of every rank during the row (VmHWM, reset before each row
  through /proc/self/clear_refs; else ru_maxrss, the process's peak so far), summed over ranks;
* ratios to u-FedNL: seconds_to_tol, s/round and peak RSS.

Rows that do not exist yet (GPU, 10^5 clients) are later work: add them to ``ROWS``.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MpifedError

CLIENTS = 142
TOL = 1e-14
MAX_ROUNDS = 1000
SHUFFLE_SEED = 123  # u-FedNL's default --reshuffle_train_seed


@dataclass(frozen=True)
class Row:
    """One benchmark: a dataset in the u-FedNL setup, and u-FedNL's figures for it."""

    name: str
    dataset: str
    rows: int                 # samples in the file (m = rows // clients)
    reference: dict           # u-FedNL: s_per_round, rounds_to_tol, seconds_to_tol, peak_rss_mb
    clients: int = CLIENTS
    extra: dict = field(default_factory=dict)
    hidden: bool = False      # test-only rows are not run by default

    def config(self, rounds: int = MAX_ROUNDS) -> dict:
        cfg = {"dataset": self.dataset, "clients": self.clients, "samples_per_client": self.rows // self.clients,
               "shuffle": SHUFFLE_SEED, "intercept": True, "lam": 1e-3, "algorithm": "fednl",
               "compressor": "topk:k=8d", "option": 2, "alpha": None, "tol": TOL, "rounds": rounds,
               "reference_iterations": 0, "seed": 0, "quiet": True, "overwrite": True}
        cfg.update(self.extra)
        return cfg


def _ufednl(s_per_round, rounds, seconds, rss_mb):
    return {"s_per_round": s_per_round, "rounds_to_tol": rounds, "seconds_to_tol": seconds, "peak_rss_mb": rss_mb,
            "source": "u-FedNL bin_fednl_local, 2 workers, 2-core machine (issue 7)"}


ROWS = {row.name: row for row in [
    Row("w8a", "w8a", 49749, _ufednl(0.162, 246, 40.9, 693)),
    Row("a9a", "a9a", 32561, _ufednl(0.026, 94, 2.7, 179)),
    Row("phishing", "phishing", 11055, _ufednl(0.0054, 74, 0.5, 42)),
    # tests only: a synthetic federation (d = 20 > 15, so K = 8d < T) with nominal reference figures
    Row("tiny", "synthetic", 8 * 50, {"s_per_round": 0.001, "rounds_to_tol": 10, "seconds_to_tol": 0.01,
                                     "peak_rss_mb": 100.0, "source": "nominal (test row)"},
        clients=8, extra={"intercept": False, "features": 20}, hidden=True),
]}
DEFAULT = [name for name, row in ROWS.items() if not row.hidden]
PHASES = ("client", "hessian", "compress", "client_other", "comm", "server", "trace")


class _Timers:
    """Wall-clock timers around a few functions of the shared modules, removed afterwards."""

    def __init__(self):
        from . import compressors, problems, trace

        self.calls = {"hessian": [], "compress": [], "trace": []}
        self._targets = [(problems.LogisticBlock, "derivatives", "hessian"), (compressors.TopK, "compress", "compress"),
                         (trace.TraceWriter, "write", "trace")]
        self._saved = []

    def __enter__(self):
        for owner, attr, key in self._targets:
            original = owner.__dict__[attr]
            self._saved.append((owner, attr, original))
            setattr(owner, attr, self._timed(original, self.calls[key]))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in self._saved:
            setattr(owner, attr, original)

    @staticmethod
    def _timed(fn, out):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                out.append(time.perf_counter() - t)
        return timed


def _reset_peak() -> str:
    """Reset this process's VmHWM (Linux >= 4.0); returns how the peak will be read.

    Freed heap is first handed back to the OS (glibc ``malloc_trim``), so that a row's peak does not
    include what an earlier row of the same process left behind.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_mb(method: str) -> float:
    if method == "VmHWM":
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _per_round(calls: list, first: int, rows: int) -> np.ndarray:
    """One entry per trace row: the calls from ``first`` on, or NaN if they do not line up."""
    got = np.asarray(calls[first:first + rows], dtype=float)
    return got if got.size == rows else np.full(rows, np.nan)


def run_row(row: Row, comm, rounds: int = MAX_ROUNDS, folder: str | None = None) -> dict | None:
    """Run one row on every rank of ``comm``; rank 0 returns its result, the others None."""
    from .driver import run

    cfg = row.config(rounds)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cfg["out"] = str(Path(tmp) / f"bench-{row.name}.h5")
        how = _reset_peak()
        comm.allgather(None)  # start together
        with _Timers() as timers:
            t0 = time.perf_counter()
            result = run(cfg, comm)
            wall = time.perf_counter() - t0
        peaks = comm.allgather(_peak_mb(how))
    if not comm.is_root:
        return None
    m = result.metrics
    rows_done = len(m["round"])
    hit = np.flatnonzero(m["grad_norm"] <= TOL)
    k = int(hit[0]) if hit.size else rows_done - 1
    upto = slice(0, k + 1)
    seconds = float(m["time_s"][k])
    phase = {"client": m["time_client"], "comm": m["time_comm"], "server": m["time_server"],
             "hessian": _per_round(timers.calls["hessian"], 1, rows_done),  # call 0 is the setup's H_i^0
             "compress": _per_round(timers.calls["compress"], 0, rows_done),
             "trace": _per_round(timers.calls["trace"], 0, rows_done)}
    phase["client_other"] = phase["client"] - phase["hessian"] - phase["compress"]
    mean = {name: float(np.mean(np.asarray(phase[name])[upto])) for name in PHASES}
    rounds_to_tol = k if hit.size else None
    rate = k / seconds if seconds > 0 else float("nan")
    ref = row.reference
    s_per_round = seconds / (k + 1)
    return {
        "row": row.name, "dataset": row.dataset, "config": {key: v for key, v in cfg.items() if key != "out"},
        "n_clients": row.clients, "d": int(result.x.shape[0]), "status": result.status,
        "rounds_run": rows_done - 1, "rounds_to_tol": rounds_to_tol, "final_grad_norm": float(m["grad_norm"][-1]),
        "seconds_to_tol": seconds if hit.size else None, "seconds_run": float(m["time_s"][-1]), "wall_s": wall,
        "s_per_round": s_per_round, "s_per_round_by_phase": mean,
        "rounds_per_s": rate, "client_rounds_per_s": row.clients * rate,
        "peak_rss_mb_per_rank": peaks, "peak_rss_mb": float(sum(peaks)), "peak_rss_method": how,
        "reference": ref,
        "ratio_seconds_to_tol": (seconds / ref["seconds_to_tol"]) if hit.size else None,
        "ratio_s_per_round": s_per_round / ref["s_per_round"],
        "ratio_peak_rss": float(sum(peaks)) / ref["peak_rss_mb"],
    }


def machine(comm) -> dict:
    """What the numbers were measured on."""
    import mpi4py
    import scipy

    from . import __version__

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mpi_size": comm.size, "mpi": comm.library() if comm.size > 1 else
            "serial", "host": platform.node(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "mpi4py": mpi4py.__version__, "mpifed": __version__,
            "load_average": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def bench(names=None, rounds: int = MAX_ROUNDS, comm=None, folder: str | None = None) -> dict | None:
    """Run the rows ``names`` (default: every non-test row); rank 0 returns {machine, rows}."""
    from .comm import world

    names = list(names or DEFAULT)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise MpifedError(f"no benchmark row {', '.join(unknown)}; rows: {', '.join(DEFAULT)}")
    comm = comm or world()
    info = machine(comm)
    results = [run_row(ROWS[name], comm, rounds, folder) for name in names]
    if not comm.is_root:
        return None
    info["load_average_end"] = list(os.getloadavg())
    return {"machine": info, "rows": results}


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def table(report: dict) -> str:
    """The printed table: one line per row, then the phases in ms per round."""
    head = (f"{'row':<9}{'d':>5}{'rounds':>8}{'s to tol':>10}{'wall s':>8}{'s/round':>9}{'rounds/s':>10}"
            f"{'client-rds/s':>13}{'RSS MB':>8}  {'x u-FedNL: time':>15}{'s/round':>8}{'RSS':>6}")
    lines = [head]
    for r in report["rows"]:
        lines.append(f"{r['row']:<9}{r['d']:>5}{_fmt(r['rounds_to_tol'], 'd'):>8}{_fmt(r['seconds_to_tol'], '.3f'):>10}"
                     f"{r['wall_s']:>8.2f}{r['s_per_round']:>9.4f}{r['rounds_per_s']:>10.2f}"
                     f"{r['client_rounds_per_s']:>13.0f}{r['peak_rss_mb']:>8.0f}  "
                     f"{_fmt(r['ratio_seconds_to_tol'], '.3f'):>15}{r['ratio_s_per_round']:>8.2f}"
                     f"{r['ratio_peak_rss']:>6.2f}")
    lines.append("")
    lines.append(f"{'ms / round':<9}" + "".join(f"{p:>13}" for p in PHASES))
    for r in report["rows"]:
        lines.append(f"{r['row']:<9}" + "".join(f"{1e3 * r['s_per_round_by_phase'][p]:>13.2f}" for p in PHASES))
    mach = report["machine"]
    lines.append("")
    lines.append(f"{mach['cpu']}, {mach['cores']} cores, {mach['mpi_size']} MPI rank(s), load average "
                 f"{mach['load_average'][0]:.2f} -> {mach['load_average_end'][0]:.2f}; "
                 f"client = hessian + compress + client_other; trace is outside the round times")
    return "\n".join(lines)


def main(only=None, json_path=None, rounds: int = MAX_ROUNDS, list_rows: bool = False) -> int:
    """The ``mpifed bench`` command."""
    from .comm import world

    if list_rows:
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            for name in DEFAULT:
                cfg = ROWS[name].config()
                print(f"{name:<9} {cfg['dataset']}: {cfg['clients']} clients x {cfg['samples_per_client']} rows, "
                      f"fednl {cfg['compressor']} option 2, tol {TOL:g}, at most {cfg['rounds']} rounds")
        return 0
    if rounds < 1:
        raise MpifedError(f"--rounds must be >= 1, got {rounds}")
    comm = world()
    report = bench(only, rounds, comm)
    if report is not None:
        print(table(report), flush=True)
        if json_path:
            Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {json_path}", flush=True)
    sys.stdout.flush()
    return 0
