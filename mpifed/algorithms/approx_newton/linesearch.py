"""GIANT's line search in one exchange (Wang, Roosta, Xu, Mahoney, NeurIPS 2018, Sec. 3; the authors' code,
SparkGiant ``Giant.scala``): the server broadcasts the direction p (d floats), every client returns its
objective at the J trial points x - alpha_j p, alpha_j = gamma^j (j = 0..J-1; J = 10, gamma = 1/4), and the
server takes the largest alpha_j with

    P(x - alpha_j p) <= P(x) - c alpha_j <p, grad P(x)>          (c = 0.1 in the code)

and the smallest alpha_j when none passes (as the code does).

Numerical safeguard (not in the paper; as :mod:`mpifed.algorithms.second_order.fednl_ls`): when the required
decrease c <p, grad P(x)> is below ``RESOLUTION`` |P(x)|, the computed objective cannot resolve the test, so the
unit step is taken without the exchange; the trace's ``armijo_tested`` column says which rounds tested.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import Query, Uplink, bits_for
from ..second_order.fednl_ls import RESOLUTION

TRIALS = 10
DEFAULT_C, DEFAULT_GAMMA = 0.1, 0.25


@dataclass(frozen=True)
class Search:
    """The server's pending search: direction p, P(x), <p, grad P(x)>, what the round reports, the state to keep."""

    direction: np.ndarray
    f0: float
    slope: float
    report: dict
    state: object


def steps(gamma: float) -> np.ndarray:
    return gamma ** np.arange(TRIALS, dtype=np.float64)


def start(x, direction, g, f0: float, c: float, report: dict, state, float_bits: int):
    """The Query broadcasting p, or (state, x - p, down bits) when the test is below f's resolution."""
    slope = float(direction @ g)
    if c * slope <= RESOLUTION * abs(f0):
        report.update(step_length=1.0, armijo_tested=0.0)
        return state, x - direction, len(x) * float_bits
    return Query(np.asarray(direction, dtype=np.float64), Search(direction, f0, slope, report, state),
                 len(x) * float_bits)


def client_values(block, x, direction, gamma: float, float_bits: int) -> Uplink:
    """f_i(x - alpha_j p) of every client for the J trial steps, (n, J); J floats each."""
    xp = block.bk.xp
    trial = xp.stack([block.loss(x - a * direction) for a in steps(gamma)], axis=1)
    values, index = bits_for(block.n, TRIALS, float_bits)
    return Uplink(xp.zeros(block.n), None, values, index, {"trial": trial})


def finish(search: Search, x, agg, c: float, gamma: float, float_bits: int):
    """(state, x - alpha p, down bits) with the largest alpha_j that passes the test (the smallest if none)."""
    alpha = steps(gamma)
    P = agg.fields["trial"].reshape(-1) / agg.n
    passed = np.flatnonzero(P <= search.f0 - c * alpha * search.slope)
    j = int(passed[0]) if len(passed) else TRIALS - 1
    search.report.update(step_length=float(alpha[j]), armijo_tested=1.0)
    return search.state, x - alpha[j] * search.direction, len(x) * float_bits
