"""Seconds per exchange of LCD, BPM and GD on phishing (least squares and logistic): 100 rounds with --tol 0,
three repeats each, the setup upload excluded; docs/methods/curvature-and-ball.md keeps the figures.

    MPIFED_DATA=/path/to/datasets .venv/bin/python jobs/exchange_seconds.py
"""
import numpy as np

from mpifed.driver import run

BASE = {"dataset": "phishing", "tol": 0.0, "rounds": 100, "quiet": True, "out": "runs/exchange-seconds.h5",
        "overwrite": True}
CASES = [("least-squares", "gd", {}), ("least-squares", "lcd1", {}), ("least-squares", "lcd2", {}),
         ("least-squares", "lcd3", {}), ("least-squares", "bpm", {"radius": 1.0}), ("logistic", "gd", {}),
         ("logistic", "lcd2", {}), ("logistic", "bpm", {"radius": 1.0})]

for problem, algorithm, extra in CASES:
    seconds = []
    for _ in range(3):
        m = run({**BASE, "problem": problem, "algorithm": algorithm, **extra}).metrics
        setup = 1 if m["exchanges"][0] else 0  # a counted setup upload is an exchange of row 0
        seconds.append(m["time_s"][-1] / (m["exchanges"][-1] - setup))
    print(f"{problem:14s} {algorithm:5s} ms per exchange: median {1e3 * np.median(seconds):.2f} "
          f"(runs {', '.join(f'{1e3 * s:.2f}' for s in seconds)})", flush=True)
