"""``mpifed advise``: pick the method that reaches the target first in simulated wall-clock, from a short probe.

The probe runs each candidate for a few rounds (``probe_rounds``, stopping early at the target) on the given
federation, every probe round counted (its rounds, bits and simulated seconds are reported with the advice).
From each probe trace, under the chosen profile:

* rounds to the target: the round the probe reached it, else the probe's rounds plus
  log(target / g_P) / log(rho), with rho = (g_P / g_{P-j})^(1/j) the contraction of ||grad P|| over the probe's
  last j = 3 rounds (a linear-rate extrapolation: pessimistic for superlinear methods, which speed up later);
* seconds per round: the mean simulated round over the same rounds (:func:`mpifed.network.replay`, the method's
  FLOP model and the bits it actually sent), so the predicted time is the probe's time plus the extrapolated
  rounds at that pace;
* a conditioning estimate kappa ~ 1 / (1 - rho) from GD's rate (GD with step 1/L contracts by 1 - 1/kappa).

The pick is the smallest predicted time; with ``run`` it is then run to the target. Convex (tabular) problems
only: a network's test accuracy has no such extrapolation here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import baseline as base
from ..errors import ConfigError
from ..trace import load

CANDIDATES = ("gd", "newton", "fednl", "fednl-ls", "fedpm")
PROBE_ROUNDS = 10
WINDOW = 3  # rounds the rate is measured over


def predict(t, target: float, profile) -> dict:
    """Predicted rounds and simulated seconds to ||grad P|| <= target from a probe trace, and why."""
    g = np.asarray(t.metrics["grad_norm"], dtype=float)
    sim = base.simulated(t, profile)
    P = len(g) - 1
    row = base.target_row(t, target)
    if row is not None:
        return {"rounds": float(row), "time_s": float(sim[row, 0]), "rate": np.nan,
                "reason": f"reached the target in the probe, at round {row}"}
    j = min(WINDOW, P)
    rate = (g[P] / g[P - j]) ** (1.0 / j) if j and g[P - j] > 0 else np.nan
    per_round = (sim[P, 0] - sim[P - j, 0]) / j if j else np.nan
    share = (sim[P, 1] - sim[P - j, 1]) / max(sim[P, 0] - sim[P - j, 0], 1e-300) if j else np.nan
    if not 0 < rate < 1:
        return {"rounds": np.inf, "time_s": np.inf, "rate": rate,
                "reason": f"no progress over the probe's last {j} rounds (rate {rate:.3g})"}
    more = np.ceil(np.log(target / g[P]) / np.log(rate))
    return {"rounds": P + more, "time_s": float(sim[P, 0] + more * per_round), "rate": float(rate),
            "reason": f"rate {rate:.4g}/round over rounds {P - j}-{P}, {per_round:.3g} s/round "
                      f"({100 * share:.0f} % communication)"}


def advise(values: dict, target: float, candidates=CANDIDATES, probe_rounds: int = PROBE_ROUNDS,
           folder: str | Path = "runs/advise", comm=None) -> dict:
    """Probe every candidate on the configuration ``values`` (RunConfig fields), predict, and pick.

    Returns {"table": [rows], "pick": name, "kappa": estimate, "probe": {rounds, bits, time_s}} on rank 0
    (None elsewhere)."""
    from ..config import build, network_profile
    from ..driver import run

    if values.get("model") is not None:
        raise ConfigError("mpifed advise predicts from ||grad P|| and takes tabular problems only; leave --model out")
    if probe_rounds < WINDOW:
        raise ConfigError(f"--probe-rounds = {probe_rounds} is out of range; valid: an integer >= {WINDOW}")
    folder = Path(folder)
    configs = {name: build({**values, "algorithm": name, "rounds": probe_rounds, "tol": target, "quiet": True,
                            "reference_iterations": 0, "out": str(folder / f"probe-{name}.h5"), "overwrite": True})
               for name in candidates}
    profile = network_profile(next(iter(configs.values())))
    results = [run(c, comm=comm) for c in configs.values()]
    if results[0].path is None:
        return None
    rows, probe = [], {"rounds": 0, "bits": 0.0, "time_s": 0.0}
    for name, result in zip(candidates, results):
        t = load(result.path)
        rows.append({"algorithm": name, **predict(t, target, profile)})
        sim = base.simulated(t, profile)
        probe["rounds"] += t.rounds - 1
        probe["bits"] += float(t.metrics["bits_up"][-1] + t.metrics["bits_down"][-1])
        probe["time_s"] += float(sim[-1, 0])
    gd = next((r for r in rows if r["algorithm"] == "gd" and 0 < r["rate"] < 1), None)
    pick = min(rows, key=lambda r: r["time_s"])["algorithm"]
    return {"table": rows, "pick": pick, "kappa": 1.0 / (1.0 - gd["rate"]) if gd else np.nan, "probe": probe,
            "profile": profile.name, "target": target}


def render(advice: dict) -> str:
    fmt = lambda v, f: "-" if not np.isfinite(v) else format(v, f)  # noqa: E731
    p = advice["probe"]
    lines = [f"predicted time to ||grad P|| <= {advice['target']:g} on {advice['profile']} (probe: {p['rounds']} "
             f"rounds in all, {p['bits']:.3e} bits per client, {p['time_s']:.3g} s simulated, counted)",
             f"conditioning estimate from GD's rate: kappa ~ {fmt(advice['kappa'], '.3g')}",
             f"{'algorithm':<10} {'rounds':>8} {'seconds':>11}  why"]
    for r in sorted(advice["table"], key=lambda r: r["time_s"]):
        lines.append(f"{r['algorithm']:<10} {fmt(r['rounds'], '.0f'):>8} {fmt(r['time_s'], '.4g'):>11}  {r['reason']}")
    lines.append(f"pick: {advice['pick']}")
    return "\n".join(lines)
