"""Pick each method's step from a tuning folder (jobs/mnist-cnn-tune.toml): per algorithm, the step whose global
model has the best val_accuracy (--validation rows, never the test set) at the last round of the budget; ties go
to the smaller step, and a run that diverged (status failed) is never chosen.

    .venv/bin/python jobs/select_step.py runs/mnist-cnn-tune
"""
import sys
from collections import defaultdict

import numpy as np

from mpifed import trace
from mpifed.analysis.plots import expand


def choose(folder):
    """{algorithm: (chosen step, [(step, val_accuracy at the last round; -inf: diverged), ...] by step)}."""
    trials = defaultdict(list)
    for path in expand([folder]):
        t = trace.load(path)
        status = t.attrs.get("status")
        val = np.asarray(t.metrics.get("val_accuracy", []), dtype=float)
        if status == "failed":
            score = -np.inf
        elif status != "completed":
            raise SystemExit(f"{path}: status {status}; wait until every run of the folder has completed")
        elif not val.size or not np.isfinite(val[-1]):
            raise SystemExit(f"{path}: no val_accuracy at its last round (run with --validation and eval_every = 1)")
        else:
            score = float(val[-1])
        trials[t.config["algorithm"]].append((t.config["step_size"], score))
    return {a: (max(sorted(r), key=lambda sv: (sv[1], -sv[0]))[0], sorted(r)) for a, r in trials.items()}


if __name__ == "__main__":
    for algorithm, (step, rows) in choose(sys.argv[1] if len(sys.argv) > 1 else "runs/mnist-cnn-tune").items():
        grid = "  ".join(f"{s:g}: " + (f"{v:.4f}" if np.isfinite(v) else "diverged") for s, v in rows)
        print(f"{algorithm:<12} step {step:<10g} (val_accuracy at the last round: {grid})")
