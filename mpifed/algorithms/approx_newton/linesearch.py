"""GIANT's line search in one exchange (Wang, Roosta, Xu, Mahoney, NeurIPS 2018, Sec. 3; the authors' code,
SparkGiant ``Giant.scala``): the server broadcasts the direction p (d floats), every client returns its
objective at the J trial points x - alpha_j p, alpha_j = gamma^j (j = 0..J-1; J = 10, gamma = 1/4), and the
server takes the largest alpha_j with

    P(x - alpha_j p) <= P(x) - c alpha_j <p, grad P(x)>          (c = 0.1 in the code)

and the smallest alpha_j when none passes (as the code does).

The clients send the changes f_i(x - alpha_j p) - f_i(x), computed row by row without cancellation
(:meth:`~mpifed.problems.logistic.LogisticBlock.loss_changes`), rather than the values themselves; the test
is the same, and it stays decidable near x*, where the decrease is far below the rounding of P (the code's
differences of values stall there: on w8a, GIANT would stop near ||grad P|| = 5e-8).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...network import flops as fl
from ..base import Query, Uplink, bits_for

TRIALS = 10
DEFAULT_C, DEFAULT_GAMMA = 0.1, 0.25


@dataclass(frozen=True)
class Search:
    """The server's pending search: direction p, <p, grad P(x)>, what the round reports, the state to keep."""

    direction: np.ndarray
    slope: float
    report: dict
    state: object


def steps(gamma: float) -> np.ndarray:
    return gamma ** np.arange(TRIALS, dtype=np.float64)


def start(direction, g, report: dict, state, float_bits: int) -> Query:
    """The Query broadcasting p."""
    return Query(np.asarray(direction, dtype=np.float64), Search(direction, float(direction @ g), report, state),
                 len(direction) * float_bits)


def client_values(block, x, direction, gamma: float, float_bits: int) -> Uplink:
    """f_i(x - alpha_j p) - f_i(x) of every client for the J trial steps, (n, J); J floats each."""
    values, index = bits_for(block.n, TRIALS, float_bits)
    return Uplink(block.bk.xp.zeros(block.n), None, values, index, {"trial": block.loss_changes(x, direction, steps(gamma))})


def finish(search: Search, x, agg, c: float, gamma: float, float_bits: int):
    """(state, x - alpha p, down bits) with the largest alpha_j that passes the test (the smallest if none)."""
    alpha = steps(gamma)
    change = agg.fields["trial"].reshape(-1) / agg.n
    passed = np.flatnonzero(change <= -c * alpha * search.slope)
    j = int(passed[0]) if len(passed) else TRIALS - 1
    search.report.update(step_length=float(alpha[j]))
    return search.state, x - alpha[j] * search.direction, len(x) * float_bits


def client_flops(s):
    """One client's J = 10 trial changes f_i(x - alpha_j p) - f_i(x) from one pass over its rows
    (:meth:`~mpifed.problems.logistic.LogisticBlock.loss_changes`): the margins of x and of p (4 nnz), <x, p> and
    ||p||^2 (4 d), b t and phi'(b t) once per row (m + E m); per trial and row -alpha s and b delta (2 m),
    expm1 and log1p (2 E m), the product (m) and the client's sum (m), and the ridge's change (6)."""
    per_trial = 2.0 * fl.ELEMENTARY * s.m + 4.0 * s.m + 6.0
    return 4.0 * s.nnz + 4.0 * s.d + (1.0 + fl.ELEMENTARY) * s.m + TRIALS * per_trial


def server_flops(s) -> float:
    """The server's start, <p, grad P> (2 d), and finish: the sum of the J changes, their mean (J), the Armijo
    test c alpha_j slope and the comparison (3 J), x - alpha p (2 d)."""
    return 2.0 * s.d + fl.aggregate(s, TRIALS) + 4.0 * TRIALS + 2.0 * s.d
