"""A comparison plan's runs with each rank's peak memory above its start: rounds, exchanges, bits and seconds to
the plan's target, and peak RSS minus the RSS before the run, per rank.

    mpiexec -n 2 python benchmarks/plan_memory.py jobs/compare-second-order-large.toml [--only NAME ...]
        [--overwrite] [--markdown FILE]

Before each run every rank hands freed heap back to the OS (``release_memory``), resets its VmHWM
(/proc/self/clear_refs, Linux >= 4.0) and reads VmRSS (``base``); after it, VmHWM (``peak``): ``peak - base`` is
what the run added on that rank (data loading, the method's state, the trace writer on rank 0), as the
``ratio_above_start`` of ``mpifed bench``. The traces go to the plan's folder, so ``mpifed compare PLAN --table``
and ``mpifed info`` read them again. Seconds: the trace's ``time_s`` (client + comm + server) at the first row at
or below the target, and the run's wall-clock.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hessian_free_memory import rss_mb


def reset_peak() -> None:
    from mpifed.federation import release_memory

    release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        pass  # no /proc: ru_maxrss, the process's peak so far, is read instead


def row(name: str, config, out, memory: list, wall: float, target: float) -> dict:
    m = out.metrics
    hit = np.flatnonzero(m["grad_norm"] <= target)
    at = int(hit[0]) if len(hit) else len(m["round"]) - 1
    return {"run": name, "algorithm": config.algorithm, "dataset": config.dataset, "reached": bool(len(hit)),
            "rounds": int(m["round"][at]), "exchanges": int(m["exchanges"][at]), "bits_up": float(m["bits_up"][at]),
            "time_s": float(m["time_s"][at]), "wall_s": wall, "grad_norm": float(m["grad_norm"][at]),
            "peak_above_start_mb": [p - b for b, p in memory], "base_mb": [b for b, _ in memory]}


def markdown(rows: list, target: float) -> str:
    lines = [f"| run | rounds | exchanges | bits up per client | seconds (time_s / wall) | peak RSS above start, "
             f"MB per rank |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = " / ".join(f"{v:.0f}" for v in r["peak_above_start_mb"])
        if r["reached"]:
            lines.append(f"| {r['run']} | {r['rounds']} | {r['exchanges']} | {r['bits_up']:.3e} | "
                         f"{r['time_s']:.1f} / {r['wall_s']:.1f} | {peak} |")
        else:
            lines.append(f"| {r['run']} | not in {r['rounds']} (‖∇P‖ = {r['grad_norm']:.1e}) | > {r['exchanges']} | "
                         f"> {r['bits_up']:.3e} | > {r['time_s']:.1f} / {r['wall_s']:.1f} | {peak} |")
    return "\n".join(lines) + f"\n\n(to ‖∇P‖ ≤ {target:g})\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan")
    ap.add_argument("--only", nargs="+", default=None)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--markdown", default=None, help="also write the table to this file (rank 0)")
    args = ap.parse_args()

    from mpifed.comm import MPIComm
    from mpifed.driver import run
    from mpifed.ops.compare import load_plan

    comm = MPIComm()
    plan = load_plan(args.plan, args.only, args.overwrite)
    rows = []
    for name, config in plan.runs:
        reset_peak()
        base = rss_mb("VmRSS")
        t0 = time.perf_counter()
        out = run(config, comm=comm)
        wall = time.perf_counter() - t0
        memory = comm.allgather((base, rss_mb("VmHWM")))
        if comm.is_root:
            rows.append(row(name, config, out, memory, wall, plan.target))
            print(markdown(rows[-1:], plan.target).splitlines()[2], flush=True)
    if comm.is_root:
        text = markdown(rows, plan.target)
        print(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
