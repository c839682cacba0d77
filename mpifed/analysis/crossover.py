"""Where the trade flips: speed-up over a first-order baseline against the communication/computation ratio.

The network of a profile is made ``s`` times faster (:meth:`~mpifed.network.Profile.faster`: bandwidths times s,
round trips divided by s) over a geometric range of s, the devices unchanged, and every trace of a plan is
re-simulated (:func:`mpifed.network.replay`). The x-axis is the baseline's own ratio

    R(s) = communication seconds / computation seconds of the baseline's run to the target,

so R = 10 is the blog's "communication 10x more expensive than computation". Per method: the wall-clock speed-up
time(baseline) / time(method) at each R, and the crossover R* where it passes 1 (log-linear interpolation
between the two sweep points around it).
"""
from __future__ import annotations

import numpy as np

from . import baseline as base


def sweep(traces: list, baseline: str, target: float, profile, factors, metric: str = "grad_norm") -> dict:
    """{"ratio": (S,) R of the baseline, "speedup": {run: (S,)}, "crossover": {run: [R*, ...]}} over ``factors``."""
    ref = base.find_baseline(traces, baseline)
    others = [t for t in traces if t is not ref]
    ratio, speed = [], {t.path.stem: [] for t in others}
    for f in factors:
        p = profile.faster(f)
        c = base.cost(ref, target, metric, p)
        sim = base.simulated(ref, p)
        row = base.target_row(ref, target, metric)
        ratio.append(sim[row, 1] / sim[row, 2] if row is not None else np.nan)
        for t in others:
            speed[t.path.stem].append(c["time_s"] / base.cost(t, target, metric, p)["time_s"])
    ratio = np.asarray(ratio)
    speed = {k: np.asarray(v) for k, v in speed.items()}
    return {"ratio": ratio, "speedup": speed, "crossover": {k: crossings(ratio, v) for k, v in speed.items()},
            "baseline": ref.path.stem}


def crossings(ratio, speedup) -> list[float]:
    """The ratios R* where the speed-up passes 1, interpolated linearly in (log R, log speed-up)."""
    x, y = np.log(ratio), np.log(speedup)
    out = []
    for i in range(len(x) - 1):
        if np.isfinite(y[i]) and np.isfinite(y[i + 1]) and (y[i] < 0) != (y[i + 1] < 0):
            out.append(float(np.exp(x[i] + (x[i + 1] - x[i]) * (0 - y[i]) / (y[i + 1] - y[i]))))
    return out


def plot(result: dict, out: str, title: str) -> None:
    """Speed-up against R on log-log axes, one line per method, crossovers marked, R = 10 dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    order = np.argsort(result["ratio"])
    for name, s in result["speedup"].items():
        line, = ax.plot(result["ratio"][order], s[order], label=name)
        for r in result["crossover"][name]:
            ax.plot([r], [1.0], "o", color=line.get_color())
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axvline(10.0, color="gray", ls=":", lw=1, label="R = 10 (rule of thumb)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"communication / computation time of {result['baseline']} (R)")
    ax.set_ylabel(f"wall-clock speed-up over {result['baseline']}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def render(result: dict) -> str:
    names = list(result["speedup"])
    lines = [f"crossover ratios R* (speed-up over {result['baseline']} = 1) and speed-up at the sweep's ends"]
    lo, hi = np.nanargmin(result["ratio"]), np.nanargmax(result["ratio"])
    lines.append(f"{'run':<22} {'R*':>22} {'at R=' + format(result['ratio'][lo], '.2g'):>12} "
                 f"{'at R=' + format(result['ratio'][hi], '.2g'):>12}")
    for n in names:
        cross = ", ".join(format(r, ".3g") for r in result["crossover"][n]) or "none"
        s = result["speedup"][n]
        lines.append(f"{n:<22} {cross:>22} {s[lo]:>12.3g} {s[hi]:>12.3g}")
    return "\n".join(lines)
