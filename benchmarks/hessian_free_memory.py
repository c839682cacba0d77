"""Peak memory and seconds per exchange of a Hessian-free run at large d, per rank.

    mpiexec -n 2 python benchmarks/hessian_free_memory.py --features 100000 --clients 1000 [--nnz 50]
        [--samples-per-client 100] [--algorithm newton-cg] [--tol 1e-8] [--rounds 50] [--set mu=0.001 ...]

Any method runs (``--set KEY=VALUE``: a further run option, e.g. DANE's ``mu``; numbers are read as numbers).

Each rank prints its resident set after a small warm-up run and ``malloc_trim`` (``base``), its peak resident set over the run (VmHWM;
``ru_maxrss`` where /proc has none), and the bytes of its data: the CSR rows (values, column indices, row
pointers), labels, per-row client ids and the per-client column supports of
:meth:`~mpifed.problems.logistic.LogisticBlock.weighted_row_chunks` (built once, kept). ``peak - base`` is what
the run added; it is compared with data + O(d) state. Rank 0 then prints the run's rounds, exchanges, seconds
(client + comm + server, the trace's ``time_s``) and seconds per exchange. No reference solve (d x d).
"""
from __future__ import annotations

import argparse
import resource


def rss_mb(field: str) -> float:
    """VmRSS or VmHWM of this process in MB (ru_maxrss when /proc is not there)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _number(text: str):
    """An option's value: an int or float when it reads as one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--samples-per-client", type=int, default=100)
    ap.add_argument("--nnz", type=int, default=50)
    ap.add_argument("--algorithm", default="newton-cg")
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further run option")
    args = ap.parse_args()

    from mpifed.comm import MPIComm
    from mpifed.driver import run
    from mpifed.federation import build_federation, release_memory
    from mpifed.config import build
    from mpifed.plan import resolve

    comm = MPIComm()
    config = {"dataset": f"synthetic-sparse:nnz={args.nnz}", "features": args.features, "clients": args.clients,
              "samples_per_client": args.samples_per_client, "algorithm": args.algorithm, "tol": args.tol,
              "rounds": args.rounds, "reference_iterations": 0, "quiet": True,
              "out": f"runs/hessian-free-memory-{args.algorithm}-{args.features}.h5", "overwrite": True}
    for item in args.set:
        key, _, value = item.partition("=")
        config[key.replace("-", "_")] = _number(value)
    # a small run first imports everything a run imports (h5py, scipy's solvers, ...); then the freed heap is
    # handed back and the peak reset, so that ``peak - base`` is what the large run itself holds
    run({**config, "features": 100, "clients": comm.size, "rounds": 1, "out": config["out"] + ".warm.h5"}, comm=comm)
    release_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = rss_mb("VmRSS")
    out = run(config, comm=comm)
    peak = rss_mb("VmHWM")
    # the data a rank holds, measured on a second build of its share (not counted in the run's peak above)
    block = build_federation(resolve(build(config)).data, comm).block
    A = block._A
    index, flat, columns = block._support
    data = sum(a.nbytes for a in (A.data, A.indices, A.indptr, block.b, block.row_client, index, flat, columns))
    rows = comm.allgather((comm.rank, block.n, A.nnz, base, peak, data / 2**20))
    if comm.is_root:
        for rank, n, nnz, b, p, dmb in rows:
            print(f"rank {rank}: {n} clients, {nnz} non-zeros, data {dmb:.1f} MB, RSS before {b:.1f} MB, "
                  f"peak {p:.1f} MB, peak - base {p - b:.1f} MB ({(p - b) / dmb:.2f} x data), "
                  f"O(d) vector {8 * args.features / 2**20:.2f} MB")
        m = out.metrics
        ex, sec = int(m["exchanges"][-1]), float(m["time_s"][-1])
        print(f"{args.algorithm}, d = {args.features}: {out.status} after {out.rounds} rounds, {ex} exchanges, "
              f"||grad P|| = {m['grad_norm'][-1]:.3e}, {sec:.2f} s, {sec / max(ex, 1):.4f} s per exchange, "
              f"bits up per client {m['bits_up'][-1]:.4e}")


if __name__ == "__main__":
    main()
