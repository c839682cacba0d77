"""Check `mpifed advise` over datasets x profiles: predicted against actual time to the target, and the pick.

For each dataset the advisor's probe runs once (its traces are profile-independent); its predictions are then
made under each profile. The actual times come from the full runs of the plan jobs/netsim-<name>.toml (run
them first; its [common] table is the federation the probe runs on), re-simulated under the same profiles.
Prints a Markdown table per dataset and a summary line.

    MPIFED_DATA=... .venv/bin/python jobs/advisor_check.py [--datasets phishing a9a w8a dense] [--target 1e-6]
"""
import argparse
from pathlib import Path

import numpy as np

from mpifed import network
from mpifed.config import read_toml
from mpifed.analysis import baseline as base
from mpifed.ops import advise
from mpifed.trace import load

PROFILES = ("datacenter", "4g", "3g", "mixed-3g-4g")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["phishing", "a9a", "w8a"])
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES))
    ap.add_argument("--target", type=float, default=1e-6)
    ap.add_argument("--probe-rounds", type=int, default=advise.PROBE_ROUNDS)
    args = ap.parse_args()
    hits = within = cases = 0
    for ds in args.datasets:
        folder = Path("runs/advise-check") / ds
        plan = read_toml(f"jobs/netsim-{ds}.toml")
        skip = {"rounds", "tol", "quiet", "eval_every", "reference_iterations"}
        values = {k: v for k, v in plan["common"].items() if k not in skip}
        candidates = [c for c in advise.CANDIDATES if Path(plan["out"], f"{c}.h5").is_file()]
        advise.advise(values, args.target, candidates, args.probe_rounds, folder)
        probes = {c: load(folder / f"probe-{c}.h5") for c in candidates}
        full = {c: load(Path(plan["out"]) / f"{c}.h5") for c in candidates}
        print(f"\n{ds}: predicted / actual simulated seconds to ||grad P|| <= {args.target:g} "
              f"(rounds in brackets); * = pick, + = actual fastest\n")
        print("| profile | " + " | ".join(candidates) + " | pick within 10 % |")
        print("|---|" + "---|" * (len(candidates) + 1))
        for name in args.profiles:
            p = network.load(name)
            pred = {c: advise.predict(probes[c], args.target, p) for c in candidates}
            act = {c: base.cost(full[c], args.target, profile=p) for c in candidates}
            pick = min(pred, key=lambda c: pred[c]["time_s"])
            best = min(act, key=lambda c: act[c]["time_s"] if np.isfinite(act[c]["time_s"]) else np.inf)
            ok = act[pick]["time_s"] <= 1.1 * act[best]["time_s"]
            cases, hits, within = cases + 1, hits + (pick == best), within + ok
            cells = [f"{pred[c]['time_s']:.3g} ({pred[c]['rounds']:.0f}) / {act[c]['time_s']:.3g} ({act[c]['rounds']:.0f})"
                     + ("*" if c == pick else "") + ("+" if c == best else "") for c in candidates]
            print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    print(f"\npick = actual fastest in {hits}/{cases} cases; within 10 % of the fastest in {within}/{cases}")


if __name__ == "__main__":
    main()
