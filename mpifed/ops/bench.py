"""``mpifed bench``: FedNL against the C++ u-FedNL reference figures, at scale and on GPUs.

    mpiexec -n 2 mpifed bench [--only ROW ...] [--json FILE [--append]] [--rounds N] [--list]
    mpiexec -n 2 mpifed bench --only scale [--clients N] [--algorithm M]   # 10^5 clients, d = 100
    mpiexec -n R mpifed bench --only weak --json F --append          # R = 1, 2, 4: one row per rank count
    mpiexec -n G mpifed bench --only gpu-w8a gpu-scale               # one rank per GPU (cupy)

Each row is one ordinary mpifed run, in-process through :func:`mpifed.driver.run` on every rank.

**u-FedNL rows** (``w8a``, ``a9a``, ``phishing``; the default set, and ``gpu-w8a`` on cupy) are the setup
u-FedNL's ``bin_fednl_local`` was measured with (Burlachenko & Richtarik, u-FedNL; FedNL of Safaryan et
al., ICML 2022, Algorithm 1 with Option 2 = "option B", H + l^k I): 142 clients, rows shuffled with a
fixed seed (123, u-FedNL's default ``--reshuffle_train_seed``; numpy's permutation, not u-FedNL's
generator), m = floor(rows / 142) consecutive shuffled rows per client (the remainder dropped),
intercept, lambda = 1e-3, Top-K with K = 8d, theoretical alpha (1), stop at ||grad P(x^k)|| <= 1e-14 or
after 1000 rounds, x^0 = 0. The x*/f* reference solve is skipped (``reference_iterations = 0``):
u-FedNL does not do it either.

**Scale rows** (``scale``: 10^5 clients of the synthetic federation at d = 100, m = 8 rows each;
``gpu-scale``: 10^4 clients at d = 300 on cupy; ``weak``: 25,000 clients per rank, so run it once per
rank count with ``--append``) run FedNL Top-K 8d for 5 rounds (``--rounds``), not to convergence, or
another second-order method with its defaults (``--algorithm``: newton, newton-star, nl1, nl2, cnl, fedpm,
localnewton, or a FedNL variant, which keeps Top-K 8d and Option 2), and report the memory each rank
holds: the client state (the bytes of the arrays of the method's client state: FedNL's packed learned
Hessians H_i, T = d(d+1)/2 float64 per client; Newton-Learn's coefficients h_i; nothing for Newton,
NEWTON-STAR, FedPM and LocalNewton) and the data (the bytes of the arrays of the rank's client block:
rows, weights, labels, scatter matrices), and the ratio of the peak RSS to their sum (the memory target:
peak RSS at most 1.2x the state and data), also counting only what the row adds above the rank's resident
set before it (``ratio_above_start``). A synthetic row whose estimated peak (the state, the data twice during
setup, and the method's chunk-sized temporaries) does not fit in the memory available is refused before it
starts. NEWTON-STAR's scale rows take one reference Newton step for its x* (``SCALE_REFERENCE``: the
memory does not depend on how close x* is). Only the u-FedNL rows run by default; the others when named with ``--only``.

Per row, from the trace (rank 0's clock) and from timers this module puts around
``LogisticBlock.derivatives`` (gradients and Hessians), ``TopK.sparse`` (the selection) and ``TraceWriter.write``
while the row runs (the shared modules are not changed; on cupy the timers wait for the GPU):

* ``rounds_to_tol`` = the first k with ||grad P(x^k)|| <= tol; ``seconds_to_tol`` = the sum of the
  round times of rows 0..k (client + comm + server, as ``time_s``); ``wall_s`` = the whole
  ``driver.run`` call, setup (data loading, H_i^0) and trace writing included; for the fixed-round
  rows, the means are over the rows 0..R-1 of R rounds;
* per-round means over rows 0..k by phase: client (``derivatives``; ``compress``: Top-K, or the compiled fused
  step of :mod:`mpifed.kernels`, which forms sparse data's Hessians too; the rest),
  comm (the double-double reduction, waiting for the slowest rank included), server (the solve),
  trace (writing the row; outside the round times);
* ``rounds_per_s`` = rounds_to_tol / seconds_to_tol (fixed rows: 1 / s_per_round),
  ``client_rounds_per_s`` = n * rounds_per_s;
* ``peak_rss_mb`` = the peak resident set of every rank during the row (VmHWM, reset before each row
  through /proc/self/clear_refs after handing freed heap back to the OS; else ru_maxrss, the process's
  peak so far), summed over ranks; ``rss_at_start_mb_per_rank`` = the resident set before the row (the
  interpreter, numpy, scipy, mpi4py, mpifed with its compiled kernels and, on rank 0, h5py for the trace);
* ratios to u-FedNL: seconds_to_tol, s/round and peak RSS; ``gpu-w8a`` also against mpifed's own
  2-rank CPU figure (``ratio_s_per_round_vs_mpifed_cpu``; the GPU target: at most 0.1, a tenth of the CPU's s/round);
* GPU rows: per rank, the device, the peak bytes in use in cupy's memory pool (a cupy MemoryHook) and
  the pool's size.
"""
from __future__ import annotations

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

from ..errors import MpifedError

CLIENTS = 142
TOL = 1e-14
MAX_ROUNDS = 1000
SHUFFLE_SEED = 123  # u-FedNL's default --reshuffle_train_seed
FIXED_ROUNDS = 5    # scale, weak-scaling and gpu-scale rows: a few rounds, not to convergence
# Chunk-sized (clients x T) temporaries a FedNL round holds besides the state: grad^2 f_i, the difference
# and C(difference) (mpifed.algorithms.base.client_chunks), with room for the allocator's slack.
CHUNK_COPIES = 4
# Methods whose client state is a packed Hessian per client (the scale rows keep Top-K 8d and Option 2 for them);
# the other --algorithm choices of the fixed rows run with their own defaults.
FEDNL_FAMILY = ("fednl", "fednl-bc", "fednl-cr", "fednl-ls", "fednl-pp")
SCALE_REFERENCE = 1  # newton-star's scale rows: reference Newton steps for its x*


@dataclass(frozen=True)
class Row:
    """One benchmark row.

    ``kind`` "ufednl": a u-FedNL setup run to ||grad P|| <= 1e-14 and compared with its figures
    (``reference``). "scale" and "weak": a synthetic federation run for a fixed number of rounds,
    reporting per-round time and memory against the client state and data each rank holds; a weak row
    has ``per_rank`` clients on every rank, so its size grows with the number of ranks. ``backend``
    "cupy" marks a GPU row (one rank per GPU, the device chosen from the node-local rank).
    Rows with ``default`` False run only when named with ``--only``.
    """

    name: str
    dataset: str
    rows: int                 # samples in the file (m = rows // clients); synthetic rows: rows per client x clients
    reference: dict | None    # u-FedNL: s_per_round, rounds_to_tol, seconds_to_tol, peak_rss_mb
    clients: int = CLIENTS
    extra: dict = field(default_factory=dict)
    hidden: bool = False      # test-only rows are not run by default nor listed
    kind: str = "ufednl"
    fixed_rounds: int | None = None
    per_rank: int | None = None
    backend: str = "numpy"
    default: bool = True
    note: str = ""
    shuffled: bool = True     # u-FedNL rows: rows shuffled with SHUFFLE_SEED, or the file's order (the papers' split)

    @property
    def m(self) -> int:
        return self.rows // self.clients if self.per_rank is None else self.rows // self.per_rank

    def n_clients(self, size: int = 1, clients: int | None = None, per_rank: int | None = None) -> int:
        """The federation's size at ``size`` ranks (``clients`` / ``per_rank`` override the row's)."""
        if self.per_rank is not None:
            return (per_rank or self.per_rank) * size
        return clients or self.clients

    def config(self, rounds: int | None = None, size: int = 1, clients: int | None = None,
               per_rank: int | None = None, algorithm: str | None = None) -> dict:
        fixed = self.kind != "ufednl"
        rounds = rounds or self.fixed_rounds or MAX_ROUNDS
        n = self.n_clients(size, clients, per_rank)
        # every row runs its whole budget (tol 0): rounds to 1e-14 is read off the trace
        cfg = {"dataset": self.dataset, "clients": n, "samples_per_client": self.m if fixed else self.rows // n,
               "shuffle": SHUFFLE_SEED if self.shuffled else None, "intercept": not fixed, "lam": 1e-3,
               "algorithm": "fednl", "compressor": "topk:k=8d", "option": 2, "alpha": None, "tol": 0.0,
               "rounds": rounds, "reference_iterations": 0, "seed": 0, "quiet": True, "overwrite": True,
               # the test set at the first and last rounds only: a round is the method's work (u-FedNL
               # evaluates no test set), and rank 0's evaluation would hold the other ranks at the next broadcast
               "eval_every": rounds}
        if fixed:
            del cfg["shuffle"]
        if self.backend != "numpy":
            cfg["backend"] = self.backend
        cfg.update(self.extra)
        if algorithm is not None and algorithm != "fednl":
            if not fixed:
                raise MpifedError(f"--algorithm applies to the scale, weak and gpu-scale rows; row {self.name} is "
                                  f"the u-FedNL setup (FedNL)")
            from ..algorithms import METHODS

            if algorithm not in METHODS:
                raise MpifedError(f"--algorithm {algorithm!r} is not a method on the logistic problem; valid: "
                                  f"{', '.join(METHODS)}")
            cfg["algorithm"] = algorithm
            for key in ("compressor", "option") if algorithm not in FEDNL_FAMILY else ():
                del cfg[key]
            if algorithm in ("fednl-cr", "fednl-pp"):  # Option 2 is theirs already, and not a choice
                del cfg["option"]
            if algorithm == "newton-star":
                cfg["reference_iterations"] = SCALE_REFERENCE
        return cfg

    def describe(self) -> str:
        cfg = self.config()
        size = (f"{self.per_rank} clients per rank" if self.per_rank else f"{cfg['clients']} clients") + \
            f" x {cfg['samples_per_client']} rows"
        what = f"{cfg['rounds']} rounds"
        if self.kind == "ufednl":
            what += ", rows shuffled (seed 123)" if self.shuffled else ", rows in file order (the papers' split)"
        d = f", d = {cfg['features']}" if "features" in cfg else ""
        extra = "" if self.default else " [only with --only]"
        return (f"{self.name:<14} {cfg['dataset']}{d}: {size}, fednl {cfg['compressor']} option 2, {what}, "
                f"backend {self.backend}{extra}" + (f"; {self.note}" if self.note else ""))


def _ufednl(s_per_round, rounds, seconds, rss_mb):
    return {"s_per_round": s_per_round, "rounds_to_tol": rounds, "seconds_to_tol": seconds, "peak_rss_mb": rss_mb,
            "source": "u-FedNL bin_fednl_local, 2 workers, 2-core machine"}


# mpifed's own w8a s/round on a 2-core CPU at 2 ranks (2026-12-03 12:58 UTC, the latest table of docs/benchmarks.md); the GPU row's target is 10x less
CPU_W8A_S_PER_ROUND = 0.0609
_SCALE = {"features": 100, "intercept": False}

_UFEDNL = {"w8a": (49749, _ufednl(0.162, 246, 40.9, 693)), "a9a": (32561, _ufednl(0.026, 94, 2.7, 179)),
           "phishing": (11055, _ufednl(0.0054, 74, 0.5, 42))}

ROWS = {row.name: row for row in [
    *(Row(name + suffix, name, rows, ref, shuffled=not suffix)
      for name, (rows, ref) in _UFEDNL.items() for suffix in ("", "-file")),
    # scale: 10^5 clients of a synthetic d = 100 federation, memory against state + data
    Row("scale", "synthetic", 8 * 100_000, None, clients=100_000, extra=_SCALE, kind="scale",
        fixed_rounds=FIXED_ROUNDS, default=False, note="--clients N to resize"),
    # weak scaling: 25,000 clients per rank; run once per rank count (-n 1, 2, 4) with --json F --append
    Row("weak", "synthetic", 8 * 25_000, None, clients=25_000, extra=_SCALE, kind="weak",
        fixed_rounds=FIXED_ROUNDS, per_rank=25_000, default=False,
        note="run at -n 1, 2, 4 with --append; --per-rank N to resize"),
    # GPU (cupy): the w8a setup, and 10^4 clients of a synthetic d = 300 federation
    Row("gpu-w8a", "w8a", 49749, {**_ufednl(0.162, 246, 40.9, 693), "mpifed_cpu_s_per_round": CPU_W8A_S_PER_ROUND},
        backend="cupy", default=False, note="one rank per GPU"),
    Row("gpu-scale", "synthetic", 8 * 10_000, None, clients=10_000, extra={"features": 300, "intercept": False},
        kind="scale", fixed_rounds=FIXED_ROUNDS, backend="cupy", default=False, note="one rank per GPU"),
    # tests only: a synthetic federation (d = 20 > 15, so K = 8d < T) with nominal reference figures
    Row("tiny", "synthetic", 8 * 50, {"s_per_round": 0.001, "rounds_to_tol": 10, "seconds_to_tol": 0.01,
                                     "peak_rss_mb": 100.0, "source": "nominal (test row)"},
        clients=8, extra={"intercept": False, "features": 20}, hidden=True, fixed_rounds=30),
    Row("tiny-scale", "synthetic", 6 * 40, None, clients=40, extra={"features": 20, "intercept": False},
        kind="scale", fixed_rounds=3, hidden=True, default=False),
    Row("tiny-weak", "synthetic", 6 * 10, None, clients=10, extra={"features": 20, "intercept": False},
        kind="weak", fixed_rounds=3, per_rank=10, hidden=True, default=False),
]}
DEFAULT = [name for name, row in ROWS.items() if row.default and not row.hidden]
LISTED = [name for name, row in ROWS.items() if not row.hidden]
PHASES = ("client", "hessian", "compress", "client_other", "comm", "server", "trace")


class _Timers:
    """Wall-clock timers around a few functions of the shared modules, removed afterwards.

    ``sync`` (the cupy backend) waits for the GPU before reading the clock, so a phase is its work,
    not the time to queue it. Also keeps the last client state and block the method's
    ``client_step`` returned and received (``captured``), to measure what a rank holds, and the time
    each client step spent in the timed functions (``in_step``: a chunked step calls them once per chunk).
    With ``split_setup`` (the fixed rows), the peak RSS up to the method's ``client_init`` (the federation's
    set-up) is kept in ``setup_peak`` and the peak is reset there, so what follows is the method's own.
    """

    def __init__(self, method=None, sync=None, split_setup: bool = False):
        from .. import compressors, kernels, trace
        from ..problems import logistic as problems

        self.calls = {"hessian": [], "compress": [], "trace": []}
        self._targets = [(problems.LogisticBlock, "derivatives", "hessian"), (compressors.TopK, "sparse", "compress"),
                         (problems.LogisticBlock, "derivatives_and_coefficients", "hessian"),
                         (kernels, "topk_update", "compress"), (kernels, "hessian_topk_update", "compress"),
                         (trace.TraceWriter, "write", "trace")]
        self._sync = sync
        self._method = method
        self._split = split_setup
        self.setup_peak = None
        self.captured = {}
        self.in_step = {"hessian": [], "compress": []}
        self._saved = []

    def __enter__(self):
        for owner, attr, key in self._targets:
            original = owner.__dict__[attr]
            self._saved.append((owner, attr, original))
            setattr(owner, attr, self._timed(original, self.calls[key]))
        if self._method is not None:
            original = self._method.client_step
            self._saved.append((self._method, "client_step", original))

            def client_step(params, block, state, x, streams):
                before = {key: len(self.calls[key]) for key in self.in_step}
                new_state, uplink = original(params, block, state, x, streams)
                self.captured.update(state=new_state, block=block)
                for key, calls in self.in_step.items():
                    calls.append(float(np.sum(self.calls[key][before[key]:])))
                return new_state, uplink

            self._method.client_step = client_step
        if self._method is not None and self._split:
            init = self._method.client_init
            self._saved.append((self._method, "client_init", init))

            def client_init(*args):
                self.setup_peak = _peak_mb("VmHWM")  # read before the reset
                _reset_peak()
                return init(*args)

            self._method.client_init = client_init
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)

    def _timed(self, fn, out):
        sync = self._sync

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                if sync:
                    sync()
                return result
            finally:
                out.append(time.perf_counter() - t)
        return timed


def _reset_peak() -> str:
    """Reset this process's VmHWM (Linux >= 4.0); returns how the peak will be read.

    Freed heap is first handed back to the OS (glibc ``malloc_trim``), so that a row's peak does not
    include what an earlier row of the same process left behind.
    """
    from ..federation import release_memory

    release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _proc_mb(path: str, key: str) -> float | None:
    """A ``key: N kB`` line of a /proc file, in MB (None where /proc is missing)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _status_mb(key: str) -> float | None:
    return _proc_mb("/proc/self/status", key)


def _peak_mb(method: str) -> float:
    if method == "VmHWM":
        peak = _status_mb("VmHWM")
        if peak is not None:
            return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _per_round(calls: list, rows: int) -> np.ndarray:
    """One entry per trace row, or NaN if the calls do not line up with the rows."""
    got = np.asarray(calls[:rows], dtype=float)
    return got if got.size == rows else np.full(rows, np.nan)


def nbytes(obj) -> int:
    """Bytes of the arrays (numpy, cupy, scipy/cupyx sparse) among an object's attributes or dataclass fields."""
    total = 0
    for value in (vars(obj).values() if hasattr(obj, "__dict__") else ()):
        for item in (value if isinstance(value, tuple) else (value,)):  # a tuple: the kernels' row pairs
            if hasattr(item, "indptr") and hasattr(item, "data"):  # a sparse matrix
                total += sum(int(getattr(item, a).nbytes) for a in ("data", "indices", "indptr"))
            elif hasattr(item, "nbytes") and hasattr(item, "shape"):
                total += int(item.nbytes)
    return total


def _meminfo_mb(key: str) -> float | None:
    return _proc_mb("/proc/meminfo", key)


def _local_ranks(comm) -> int:
    """MPI ranks on this node (they share its memory)."""
    from ..backend import local_rank_and_size

    return local_rank_and_size(comm)[1]


def check_fits(row: Row, cfg: dict, comm) -> None:
    """Refuse, on every rank with one line, a synthetic row whose FedNL state would not fit in memory.

    Estimate per rank: the (clients x T) float64 state (FedNL and its variants; none for the other methods),
    CHUNK_COPIES chunk-sized temporaries and the data
    (the clients' rows, held twice during setup), against MemAvailable shared by the node's ranks (host) or the GPU's
    free memory (cupy).
    """
    if cfg["dataset"] != "synthetic":
        return
    from ..algorithms.base import clients_per_chunk
    from ..comm import client_range
    from ..comm import collective

    def check():
        lo, hi = client_range(cfg["clients"], comm.size, comm.rank)
        d = cfg["features"]
        T = d * (d + 1) // 2
        state = (hi - lo) * T * 8 if cfg["algorithm"] in FEDNL_FAMILY else 0
        chunk = min((hi - lo) * T * 8, clients_per_chunk(T, row.backend == "cupy") * 8 * T)
        need = state + CHUNK_COPIES * chunk + 2 * (hi - lo) * cfg["samples_per_client"] * d * 8
        if row.backend == "cupy":
            import cupy

            free = cupy.cuda.runtime.memGetInfo()[0] / 2**20
            where = f"GPU {cupy.cuda.runtime.getDevice()} has {free / 1024:.1f} GB free"
        else:
            avail = _meminfo_mb("MemAvailable")
            if avail is None:
                return
            free = avail / _local_ranks(comm)
            where = f"this node has {avail / 1024:.1f} GB available for {_local_ranks(comm)} rank(s)"
        if need / 2**20 > 0.85 * free:
            raise MpifedError(
                f"row {row.name}: {cfg['clients']} clients at d = {d} need about {need / 2**30:.1f} GB per rank "
                f"(the {state / 2**30:.2f} GB {cfg['algorithm']} state and its round's temporaries) but {where}; "
                f"use more ranks or nodes, or fewer clients ({'--per-rank' if row.per_rank else '--clients'} N)")

    collective(comm, check)


class _GpuPeak:
    """Peak bytes in use in cupy's memory pool while a row runs (a cupy MemoryHook), and the pool's size."""

    def __init__(self, backend):
        self.bk, self.peak, self.now, self.hook = backend, 0, 0, None

    def __enter__(self):
        if self.bk.name != "cupy":
            return self
        from cupy.cuda import memory_hook

        outer = self

        class Hook(memory_hook.MemoryHook):
            name = "mpifed_bench_peak"

            def malloc_postprocess(self, **kw):
                outer.now += kw["mem_size"]
                outer.peak = max(outer.peak, outer.now)

            def free_postprocess(self, **kw):
                outer.now -= kw["mem_size"]

        cupy = self.bk.xp
        cupy.get_default_memory_pool().free_all_blocks()
        self.base = cupy.get_default_memory_pool().used_bytes()
        self.now = self.peak = self.base
        self.hook = Hook()
        self.hook.__enter__()
        return self

    def __exit__(self, *exc):
        if self.hook is not None:
            self.hook.__exit__(*exc)

    def report(self) -> dict | None:
        if self.bk.name != "cupy":
            return None
        cupy = self.bk.xp
        props = cupy.cuda.runtime.getDeviceProperties(self.bk.device)
        free, total = cupy.cuda.runtime.memGetInfo()
        name = props["name"]
        pool = cupy.get_default_memory_pool()
        return {"device": self.bk.device, "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_total_mb": total / 2**20, "peak_pool_used_mb": self.peak / 2**20,
                "pool_total_mb": pool.total_bytes() / 2**20, "device_used_mb_at_end": (total - free) / 2**20}


def _backend_for(row: Row, comm):
    """The row's backend on this rank; a cupy row without cupy or a GPU fails on every rank with one line."""
    from ..backend import get_backend
    from ..comm import collective

    def get():
        try:
            return get_backend(row.backend)
        except MpifedError as err:
            raise MpifedError(f"row {row.name}: {err}") from None

    return collective(comm, get)


def run_row(row: Row, comm, rounds: int | None = None, folder: str | None = None, clients: int | None = None,
            per_rank: int | None = None, algorithm: str | None = None) -> dict | None:
    """Run one row on every rank of ``comm``; rank 0 returns its result, the others None."""
    from .. import kernels
    from ..algorithms import METHODS
    from ..driver import run
    from ..trace import _h5py

    bk = _backend_for(row, comm)
    cfg = row.config(rounds, comm.size, clients, per_rank, algorithm)
    check_fits(row, cfg, comm)
    sync = (lambda: bk.xp.cuda.get_current_stream().synchronize()) if bk.name == "cupy" else None
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cfg["out"] = str(Path(tmp) / f"bench-{row.name}.h5")
        if comm.is_root:  # the trace writer's library is part of the start, as for every row after the first
            _h5py()
        kernels.warm_up()  # so are the compiled kernels, loaded (and compiled, the first time) before the clock starts
        how = _reset_peak()
        floor = _status_mb("VmRSS") or 0.0
        comm.allgather(None)  # start together
        with _Timers(METHODS[cfg["algorithm"]], sync, split_setup=row.kind != "ufednl") as timers, _GpuPeak(bk) as gpu:
            t0 = time.perf_counter()
            result = run(cfg, comm)
            wall = time.perf_counter() - t0
        peaks = comm.allgather(_peak_mb(how))
        setup_peaks = comm.allgather(timers.setup_peak)
        floors = comm.allgather(floor)
        block, state = timers.captured.get("block"), timers.captured.get("state")
        held = comm.allgather((block.n if block else 0, nbytes(state) if state else 0, nbytes(block) if block else 0))
        gpus = comm.allgather(gpu.report())
    if not comm.is_root:
        return None
    m = result.metrics
    rows_done = len(m["round"])
    fixed = row.kind != "ufednl"
    hit = np.flatnonzero(m["grad_norm"] <= TOL) if not fixed else np.array([], dtype=int)
    k = max(rows_done - 2, 0)  # rows 0..R-1: the R full rounds (the last row only measures x^R)
    upto = slice(0, k + 1)
    rounds = m["time_client"] + m["time_comm"] + m["time_server"]
    seconds = float(np.sum(rounds[upto]))
    phase = {"client": m["time_client"], "comm": m["time_comm"], "server": m["time_server"],
             "hessian": _per_round(timers.in_step["hessian"], rows_done),
             "compress": _per_round(timers.in_step["compress"], rows_done),
             "trace": _per_round(timers.calls["trace"], rows_done)}
    phase["client_other"] = phase["client"] - phase["hessian"] - phase["compress"]
    mean = {name: float(np.mean(np.asarray(phase[name])[upto])) for name in PHASES}
    s_per_round = seconds / (k + 1)
    n = int(cfg["clients"])
    method_peaks = peaks
    if fixed and None not in setup_peaks:  # the whole row's peak, and the method's (from client_init on) apart
        peaks = [max(p, q) for p, q in zip(peaks, setup_peaks)]
    out = {
        "row": row.name, "kind": row.kind, "algorithm": cfg["algorithm"], "backend": bk.describe(), "dataset": row.dataset,
        "config": {key: v for key, v in cfg.items() if key != "out"}, "n_clients": n, "mpi_size": comm.size,
        "d": int(result.x.shape[0]), "status": result.status, "rounds_run": rows_done - 1,
        "final_grad_norm": float(m["grad_norm"][-1]), "seconds_run": float(m["time_s"][-1]), "wall_s": wall,
        "s_per_round": s_per_round, "s_per_round_by_phase": mean,
        "rounds_per_s": 1.0 / s_per_round if s_per_round > 0 else float("nan"),
        "peak_rss_mb_per_rank": peaks, "peak_rss_mb": float(sum(peaks)), "peak_rss_method": how,
        "rss_at_start_mb_per_rank": floors, "peak_above_start_mb": float(sum(p - f for p, f in zip(peaks, floors))),
        "load_average": list(os.getloadavg()), "gpu": gpus if bk.name == "cupy" else None,
    }
    out["client_rounds_per_s"] = n * out["rounds_per_s"]
    clients_per_rank = [c for c, _, _ in held]
    state_mb = [s / 2**20 for _, s, _ in held]
    data_mb = [b / 2**20 for _, _, b in held]
    out.update({
        "clients_per_rank": clients_per_rank,
        "state_bytes_per_client": (held[0][1] / held[0][0]) if held[0][0] else None,
        "state_mb_per_rank": state_mb, "data_mb_per_rank": data_mb,
        "ratio_rss_to_state_data_per_rank": [p / (s + b) if s + b else None for p, s, b in zip(peaks, state_mb, data_mb)],
        "ratio_above_start_to_state_data_per_rank": [(p - f) / (s + b) if s + b else None
                                                     for p, f, s, b in zip(peaks, floors, state_mb, data_mb)],
    })
    if fixed:
        out.update({
            "setup_peak_rss_mb_per_rank": setup_peaks, "method_peak_rss_mb_per_rank": method_peaks,
            "ratio_method_above_start_to_state_data_per_rank": [(p - f) / (s + b) if s + b else None
                                                                for p, f, s, b in zip(method_peaks, floors, state_mb, data_mb)],
        })
    if not fixed:
        out.update(_budget_columns(rounds[upto], hit, row.reference, s_per_round, out["peak_above_start_mb"]))
        R = k + 1
        out["s_per_round_by_phase_early"], out["s_per_round_by_phase_late"] = (
            {name: float(np.median(np.asarray(phase[name])[part])) for name in PHASES}
            for part in (slice(FIRST.start, min(FIRST.stop, R)), slice(R // 2, R)))
    return out


FIRST = slice(1, 21)  # "early" rounds 1..20, against the second half of the budget


def _budget_columns(times, hit, ref: dict, s_per_round: float, above_start_mb: float) -> dict:
    """The u-FedNL rows' columns from the R round times (rows 0..R-1) and the rows where ||grad P|| <= tol."""
    R = len(times)
    k = int(hit[0]) if hit.size else None
    early, late = np.median(times[FIRST]) if R > 1 else float("nan"), np.median(times[R // 2:])
    after = times[k + 1:] if k is not None else times[:0]
    seconds_to_tol = float(np.sum(times[:k + 1])) if k is not None else None
    return {
        "rounds_to_tol": k, "seconds_to_tol": seconds_to_tol,
        "s_per_round_early": float(early), "s_per_round_late": float(late),
        "late_over_early": float(late / early) if early > 0 else float("nan"),
        "s_per_round_after_tol": float(np.median(after)) if after.size else None,
        "reference": ref,
        "ratio_s_per_round": s_per_round / ref["s_per_round"],
        "ratio_seconds_to_tol": seconds_to_tol / ref["seconds_to_tol"] if k is not None else None,
        "ratio_peak_above_start": above_start_mb / ref["peak_rss_mb"],
        **({"ratio_s_per_round_vs_mpifed_cpu": s_per_round / ref["mpifed_cpu_s_per_round"]}
           if "mpifed_cpu_s_per_round" in ref else {}),
    }


def machine(comm) -> dict:
    """What the numbers were measured on."""
    import mpi4py
    import scipy

    from ..version import __version__

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mpi_size": comm.size, "mpi": comm.library() if comm.size > 1 else
            "serial", "host": platform.node(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "mpi4py": mpi4py.__version__, "mpifed": __version__,
            "memory_total_mb": _meminfo_mb("MemTotal"),
            "load_average": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def bench(names=None, rounds: int | None = None, comm=None, folder: str | None = None, clients: int | None = None,
          per_rank: int | None = None, algorithm: str | None = None) -> dict | None:
    """Run the rows ``names`` (default: the u-FedNL rows); rank 0 returns {machine, rows}."""
    from ..comm import world

    names = list(names or DEFAULT)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise MpifedError(f"no benchmark row {', '.join(unknown)}; rows: {', '.join(LISTED)}")
    comm = comm or world()
    info = machine(comm)
    for name in names:  # a wrong --algorithm stops before any row runs
        ROWS[name].config(algorithm=algorithm)
    results = [run_row(ROWS[name], comm, rounds, folder, clients, per_rank, algorithm) for name in names]
    if not comm.is_root:
        return None
    info["load_average_end"] = list(os.getloadavg())
    return {"machine": info, "rows": results}


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def table(report: dict) -> str:
    """The printed table: the u-FedNL rows, then the fixed-round rows, then the phases in ms per round."""
    ufednl = [r for r in report["rows"] if r.get("kind", "ufednl") == "ufednl"]
    fixed = [r for r in report["rows"] if r.get("kind", "ufednl") != "ufednl"]
    lines = []
    if ufednl:
        lines.append(f"{'row':<14}{'d':>5}{'rounds':>7}{'to 1e-14':>9}{'s to tol':>9}{'s/round':>9}{'1-20':>8}"
                     f"{'2nd half':>9}{'ratio':>6}{'after tol':>10}{'MB >start':>10}{'start/rk':>9}"
                     f"  {'x u-FedNL: s/round':>18}{'MB':>6}")
        for r in ufednl:
            floor = max(r["rss_at_start_mb_per_rank"], default=0.0)
            lines.append(f"{r['row']:<14}{r['d']:>5}{r['rounds_run']:>7}{_fmt(r['rounds_to_tol'], 'd'):>9}"
                         f"{_fmt(r['seconds_to_tol'], '.3f'):>9}{r['s_per_round']:>9.4f}"
                         f"{_fmt(r['s_per_round_early'], '.4f'):>8}{_fmt(r['s_per_round_late'], '.4f'):>9}"
                         f"{_fmt(r['late_over_early'], '.2f'):>6}{_fmt(r['s_per_round_after_tol'], '.4f'):>10}"
                         f"{r['peak_above_start_mb']:>10.0f}{floor:>9.0f}  {r['ratio_s_per_round']:>18.2f}"
                         f"{r['ratio_peak_above_start']:>6.2f}")
    if fixed:
        if lines:
            lines.append("")
        lines.append(f"{'row':<10}{'method':>12}{'ranks':>6}{'clients':>9}{'d':>5}{'rounds':>7}{'s/round':>9}"
                     f"{'client-rds/s':>13}{'state B/client':>15}{'state MB/rk':>12}{'data MB/rk':>11}{'RSS MB/rk':>10}"
                     f"{'RSS/(st+data)':>14}{'above start':>12}{'from init':>10}")
        for r in fixed:
            ratio, above, own = (max((x for x in r.get(key, [None]) if x is not None), default=None) for key in (
                "ratio_rss_to_state_data_per_rank", "ratio_above_start_to_state_data_per_rank",
                "ratio_method_above_start_to_state_data_per_rank"))
            lines.append(f"{r['row']:<10}{r.get('algorithm', 'fednl'):>12}{r['mpi_size']:>6}{r['n_clients']:>9}{r['d']:>5}"
                         f"{r['rounds_run']:>7}{r['s_per_round']:>9.3f}{r['client_rounds_per_s']:>13.0f}"
                         f"{_fmt(r['state_bytes_per_client'], '.0f'):>15}{max(r['state_mb_per_rank']):>12.1f}"
                         f"{max(r['data_mb_per_rank']):>11.1f}{max(r['peak_rss_mb_per_rank']):>10.0f}"
                         f"{_fmt(ratio, '.2f'):>14}{_fmt(above, '.2f'):>12}{_fmt(own, '.2f'):>10}")
        for r in fixed:
            for g in r.get("gpu") or []:
                if g:
                    lines.append(f"{r['row']}: GPU {g['device']} {g['name']}: peak pool use {g['peak_pool_used_mb']:.0f} MB, "
                                 f"pool {g['pool_total_mb']:.0f} MB")
    lines.append("")
    lines.append(f"{'ms / round':<14}" + "".join(f"{p:>13}" for p in PHASES))
    for r in report["rows"]:
        lines.append(f"{r['row']:<14}" + "".join(f"{1e3 * r['s_per_round_by_phase'][p]:>13.2f}" for p in PHASES))
        for when in ("early", "late"):
            if f"s_per_round_by_phase_{when}" in r:
                lines.append(f"{'  ' + when:<14}" + "".join(
                    f"{1e3 * r[f's_per_round_by_phase_{when}'][p]:>13.2f}" for p in PHASES))
    mach = report["machine"]
    lines.append("")
    lines.append(f"{mach['cpu']}, {mach['cores']} cores, {mach['mpi_size']} MPI rank(s), load average "
                 f"{mach['load_average'][0]:.2f} -> {mach['load_average_end'][0]:.2f}; "
                 f"client = hessian + compress + client_other; trace is outside the round times; "
                 f"s/round is the mean over the budget, 1-20 and 2nd half are medians (phases: mean, early = "
                 f"median of rounds 1-20, late = median of the 2nd half); MB >start is the peak RSS "
                 f"above each rank's resident set at the start of the row, summed over ranks")
    return "\n".join(lines)


def main(only=None, json_path=None, rounds: int | None = None, list_rows: bool = False, clients: int | None = None,
         per_rank: int | None = None, append: bool = False, algorithm: str | None = None) -> int:
    """The ``mpifed bench`` command."""
    from ..comm import world

    if list_rows:
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            for name in LISTED:
                print(ROWS[name].describe())
        return 0
    for flag, value in (("--rounds", rounds), ("--clients", clients), ("--per-rank", per_rank)):
        if value is not None and value < 1:
            raise MpifedError(f"{flag} must be >= 1, got {value}")
    if append and not json_path:
        raise MpifedError("--append adds rows to the file named by --json; give --json FILE")
    comm = world()
    report = bench(only, rounds, comm, clients=clients, per_rank=per_rank, algorithm=algorithm)
    if report is not None:
        print(table(report), flush=True)
        if json_path:
            path = Path(json_path)
            if append and path.exists():
                old = json.loads(path.read_text())
                old.setdefault("runs", [old["machine"]]).append(report["machine"])
                old["rows"] += report["rows"]
                report = old
            path.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {json_path}", flush=True)
    sys.stdout.flush()
    return 0
