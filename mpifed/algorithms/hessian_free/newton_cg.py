"""Newton-CG: distributed inexact Newton with Hessian-vector products and an Armijo line search (Nocedal & Wright,
Numerical Optimization, 2nd ed., Alg. 7.1 (line-search Newton-CG) with the forcing term of Sec. 7.1, eq. (7.3);
the plain HVP + CG variant of DiSCO, Zhang & Xiao, ICML 2015, Alg. 2 with M = I).

Round k, with g_k = grad P(x^k) and H_k = grad^2 P(x^k) = (1/n) sum_i grad^2 f_i(x^k) (lam I included)::

    exchange 0:   x^k down; f_i(x^k), grad f_i(x^k) up                                   (d + 1 floats up)
    CG on H_k z = g_k from z = 0 (r = g_k, p = r):   each iteration one exchange, p down and
                  grad^2 f_i(x^k) p up (d floats each way);  alpha = r^T r / p^T H_k p,  z += alpha p,
                  r -= alpha H_k p,  p = r + (r^T r / r_old^T r_old) p;
                  stop when ||r|| <= eta_k ||g_k||,  eta_k = min(0.5, c sqrt(||g_k||))  (c = --forcing, 1),
                  or after --cg-iterations (100) iterations
    Armijo:       d_k = -z; the largest t = gamma^s (gamma = 1/2, s = 0, 1, ...) with
                  P(x^k + t d_k) <= P(x^k) + c_1 t <g_k, d_k>,  c_1 = 1e-4;  one exchange per trial:
                  x^k + d_k down as d floats, then t as one float; f_i up as one float
    x^{k+1} = x^k + t d_k  (the clients hold it: no further broadcast).

When the decrease the test asks for is below P's floating-point resolution (abs(P) 2^-40), the unit step is taken
untested (FedNL-LS's safeguard; the trace's ``armijo_tested`` says which rounds tested). Checked against
ALGORITHMS-NEXT.md section A1 ("plain HVP + CG variant") and Nocedal & Wright Alg. 7.1; the clients' products are
:meth:`mpifed.problems.logistic.LogisticBlock.hvp`, summed as in :mod:`~mpifed.algorithms.hessian_free.common`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..base import Aggregate, Query
from . import common
from .common import Backtracking, ClientState
from ...network import flops as fl

QUERIES = ("hvp", "loss")


@dataclass(frozen=True)
class Params:
    """cg_iterations: CG's cap per round; forcing: c in eta_k = min(0.5, c sqrt(||g_k||)); Armijo c_1 and gamma."""

    cg_iterations: int = 100
    forcing: float = 1.0
    c1: float = 1e-4
    gamma: float = 0.5
    max_backtracks: int = 50
    float_bits: int = 32
    uses = ("cg_iterations", "forcing")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(cg_iterations=opts.cg_iterations or 100, forcing=1.0 if opts.forcing is None else opts.forcing,
                   float_bits=opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    report: dict = field(default_factory=dict)  # CG iterations, step length, backtracks of the last round


@dataclass(frozen=True)
class CG:
    """CG on H_k z = g_k in progress: the last direction p was sent for H_k p."""

    g: np.ndarray
    f0: float
    tol: float  # eta_k ||g_k||
    z: np.ndarray
    r: np.ndarray
    p: np.ndarray
    rr: float
    iterations: int


client_init = common.client_init
client_step = common.gradient_and_loss_step


def server_init(p: Params, agg, x0):
    return ServerState()


def client_hvp(p: Params, block, state: ClientState, v, streams):
    return state, common.hvp_uplink(block, state, v, p.float_bits)


def client_loss(p: Params, block, state: ClientState, point, streams):
    return state, common.loss_uplink(block, point, p.float_bits)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    g = agg.grad / agg.n
    norm = float(np.linalg.norm(g))
    rr = float(g @ g)
    cg = CG(g, agg.loss / agg.n, min(0.5, p.forcing * np.sqrt(norm)) * norm, np.zeros_like(g), g, g, rr, 0)
    if rr == 0.0:
        return _line_search(p, cg, x)
    return Query(g, cg, len(x) * p.float_bits, kind="hvp")


def server_resume(p: Params, s, x, agg: Aggregate):
    if isinstance(s, CG):
        return _cg_iteration(p, s, x, agg.fields["hv"] / agg.n)
    if common.armijo_accepts(p.c1, s, agg.loss / agg.n):
        report = {**s.report, "step_length": s.t, "backtracks": s.backtracks, "armijo_tested": 1.0}
        return ServerState(report), x + s.t * s.direction, 0.0
    s = common.backtrack(s, p.gamma, p.max_backtracks, p.c1)
    return Query(x + s.t * s.direction, s, p.float_bits, kind="loss")


def _cg_iteration(p: Params, s: CG, x, Hp):
    curvature = float(s.p @ Hp)
    if curvature <= 0.0:  # H_k >= lam I; only rounding at lam = 0 gets here: keep the last z (or g, a gradient step)
        return _line_search(p, s if s.iterations else dataclasses.replace(s, z=s.g), x)
    alpha = s.rr / curvature
    z, r = s.z + alpha * s.p, s.r - alpha * Hp
    rr, done = float(r @ r), s.iterations + 1
    if np.sqrt(rr) <= s.tol or done >= p.cg_iterations:
        return _line_search(p, CG(s.g, s.f0, s.tol, z, r, s.p, rr, done), x)
    direction = r + (rr / s.rr) * s.p
    return Query(direction, CG(s.g, s.f0, s.tol, z, r, direction, rr, done), len(x) * p.float_bits, kind="hvp")


def _line_search(p: Params, s: CG, x):
    direction = -s.z
    slope = float(s.g @ direction)
    report = {"cg_iterations": float(s.iterations)}
    if slope == 0.0 or common.unresolvable(p.c1, s.f0, slope):
        report.update(step_length=1.0, backtracks=0.0, armijo_tested=0.0)
        return ServerState(report), x + direction, len(x) * p.float_bits
    trial = Backtracking(direction, 1.0, s.f0, slope, 0, report)
    return Query(x + direction, trial, len(x) * p.float_bits, kind="loss")


def flops(p: Params, s) -> fl.Work:
    """Exchange 0: f_i, grad f_i and the rows' h_ij kept for the products
    (:func:`~mpifed.network.flops.gradient_and_coefficients`); the server sums d + 1 floats, g = grad / n (d),
    ||g|| and r^T r (4 d), and once per round the direction -z, <g, d_k> and the first trial point (4 d).
    Two kinds of query:

    * ``hvp``, one per CG iteration: grad^2 f_i(x^k) p on every client (:func:`~mpifed.network.flops.hvp`);
      the server sums d floats, H p / n (d), p^T H p, z += alpha p, r -= alpha H p, r^T r, p = r + beta p
      (10 d);
    * ``loss``, one per Armijo trial: f_i at the trial point (:func:`~mpifed.network.flops.loss_only`); the
      server sums one float, tests (4) and forms the next trial point (2 d)."""
    d = s.d
    return fl.Work(fl.gradient_and_coefficients(s), fl.aggregate(s, d + 1) + d + 4.0 * d + 4.0 * d,
                   query={"hvp": fl.hvp(s), "loss": fl.loss_only(s)},
                   query_server={"hvp": fl.aggregate(s, d) + 11.0 * d, "loss": fl.aggregate(s, 1) + 4.0 + 2.0 * d})
