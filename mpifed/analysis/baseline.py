"""Methods against a baseline at a target, on simulated wall-clock: ``mpifed compare PLAN --baseline METHOD``.

For every trace, the first recorded x^k at the target (||grad P|| <= target, or test accuracy >= target for a
network) gives rounds, bits per client (uplink with indices, plus downlink), simulated computation and simulated
wall-clock; against the baseline's, three ratios:

    communication reduction = bits(baseline) / bits(method)
    compute increase        = compute(method) / compute(baseline)       (simulated seconds of computation)
    wall-clock speed-up     = time(baseline) / time(method)              (simulated seconds)

Under the trace's own profile the simulated columns are read as recorded; under any other profile they are
re-simulated from the recorded bits, exchanges and FLOPs (:func:`mpifed.network.replay`), without re-running.
"""
from __future__ import annotations

import numpy as np

from .. import network
from ..errors import MpifedError

METRICS = {"grad_norm": "||grad P|| <=", "test_accuracy": "test accuracy >="}


def simulated(t, profile=None) -> np.ndarray:
    """(rows, 3) cumulative simulated [seconds, communication, computation] of a trace, under its own profile
    (``profile`` None: the recorded columns) or re-simulated under ``profile``."""
    m = t.metrics
    if "netsim/flops" not in t.arrays or "sim_time_s" not in m:
        raise MpifedError(f"{t.path} has no simulated time (a trace written before the network model)")
    if profile is None:
        return np.stack([np.asarray(m[c], dtype=float) for c in network.SIM_COLUMNS], axis=1)
    ns = t.attrs["netsim"]
    return network.replay(m, t.arrays["netsim/flops"], t.arrays["netsim/server_flops"], ns["seed"], ns["tau"],
                          profile)


def target_row(t, target: float, metric: str = "grad_norm") -> int | None:
    """The first row that reaches the target, or None."""
    if metric not in METRICS:
        raise MpifedError(f"metric {metric!r} is unknown; valid: {', '.join(METRICS)}")
    values = np.asarray(t.metrics.get(metric, []), dtype=float)
    hit = np.flatnonzero(values <= target if metric == "grad_norm" else values >= target)
    return int(hit[0]) if hit.size else None


def cost(t, target: float, metric: str = "grad_norm", profile=None) -> dict:
    """Rounds, bits per client, simulated compute and wall-clock seconds to the target (NaN if not reached)."""
    row = target_row(t, target, metric)
    out = {"name": t.path.stem, "algorithm": t.config.get("algorithm", "?"), "rounds": np.nan, "bits": np.nan,
           "compute_s": np.nan, "time_s": np.nan}
    if row is None:
        return out
    sim = simulated(t, profile)
    m = t.metrics
    return {**out, "rounds": float(m["round"][row]), "bits": float(m["bits_up"][row] + m["bits_down"][row]),
            "compute_s": float(sim[row, 2]), "time_s": float(sim[row, 0])}


def find_baseline(traces: list, baseline: str):
    """The trace named ``baseline`` (a run of the plan), else the only one whose algorithm it is."""
    named = [t for t in traces if t.path.stem == baseline]
    if named:
        return named[0]
    runs = [t for t in traces if t.config.get("algorithm") == baseline]
    if len(runs) != 1:
        names = ", ".join(t.path.stem for t in traces)
        raise MpifedError(f"--baseline {baseline!r} names {'no' if not runs else 'more than one'} run of the plan; "
                          f"valid: a run name ({names}) or the algorithm of exactly one run")
    return runs[0]


def table(traces: list, baseline: str, target: float, metric: str = "grad_norm", profiles=(None,)) -> list[dict]:
    """One row per (profile, trace): :func:`cost` and the three ratios against the baseline's cost."""
    base = find_baseline(traces, baseline)
    rows = []
    for profile in profiles:
        ref = cost(base, target, metric, profile)
        for t in traces:
            c = cost(t, target, metric, profile)
            name = profile.name if profile is not None else t.attrs.get("netsim", {}).get("profile", {}).get("name", "?")
            rows.append({**c, "profile": name, "baseline": base.path.stem,
                         "comm_reduction": ref["bits"] / c["bits"], "compute_increase": c["compute_s"] / ref["compute_s"],
                         "speedup": ref["time_s"] / c["time_s"]})
    return rows


def render(rows: list, target: float, metric: str = "grad_norm") -> str:
    """The table as text; '-' where a run (or the baseline) never reached the target."""
    fmt = lambda v, f: "-" if not np.isfinite(v) else format(v, f)  # noqa: E731
    head = (f"to {METRICS[metric]} {target:g}, against {rows[0]['baseline'] if rows else '?'}: bits per client "
            f"(up + down), simulated compute and wall-clock seconds; ratios: communication reduction, compute "
            f"increase, wall-clock speed-up")
    lines = [head, f"{'profile':<14} {'run':<22} {'rounds':>7} {'bits':>11} {'compute s':>11} {'wall s':>11} "
                   f"{'comm red.':>9} {'compute x':>9} {'speed-up':>9}"]
    for r in rows:
        lines.append(f"{r['profile']:<14} {r['name']:<22} {fmt(r['rounds'], '.0f'):>7} {fmt(r['bits'], '.4e'):>11} "
                     f"{fmt(r['compute_s'], '.4e'):>11} {fmt(r['time_s'], '.4e'):>11} "
                     f"{fmt(r['comm_reduction'], '.3g'):>9} {fmt(r['compute_increase'], '.3g'):>9} "
                     f"{fmt(r['speedup'], '.3g'):>9}")
    return "\n".join(lines)


