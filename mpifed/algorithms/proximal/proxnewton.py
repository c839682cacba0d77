"""Proximal Newton with a backtracking line search: the reference solve for x* when lam1 > 0 (the driver's
yardstick, as Newton's method is for the smooth problem; not a ``--algorithm``).

Lee, Sun, Saunders, "Proximal Newton-type methods for minimizing composite functions", SIAM J. Optim. 2014,
Algorithm 1 with H_k the exact Hessian: at x^k (clients send f_i, grad f_i and their Hessians, as
:mod:`~mpifed.algorithms.second_order.newton`),

    u^k = argmin_u  g^T (u - x^k) + 1/2 (u - x^k)^T H (u - x^k) + lam1 ||u||_1,   d^k = u^k - x^k,
    x^{k+1} = x^k + t d^k,  t = 1, 1/2, 1/4, ... the first with
    P(x^k + t d^k) <= P(x^k) + c t Delta,   Delta = g^T d^k + lam1 (||u^k||_1 - ||x^k||_1) < 0   (their eq. (2.17))

with c = 1e-4; each trial point costs one extra exchange of the f_i (a :class:`~mpifed.algorithms.base.Query`).
Near x* the unit step is taken and the convergence is quadratic (their Thm. 3.3). The subproblem is solved on
the server (d x d) by accelerated proximal gradient for a strongly convex quadratic (Nesterov's constant
momentum, H >= lam I), then polished: on the support S it found, u_S solves H_SS (u_S - x_S) = -(g_S + lam1 sign u_S)
exactly, kept when its signs agree and every coordinate off S satisfies the subproblem's optimality condition.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ... import tri
from ...errors import MpifedError
from ...problems import l1
from ..base import Aggregate, Query, Uplink, bits_for
from ..second_order.newton import client_init, client_step, server_init  # noqa: F401  (Newton's setup and client step)

ARMIJO_C = 1e-4
MAX_BACKTRACKS = 50


@dataclass(frozen=True)
class Params:
    lam1: float = 0.0
    float_bits: int = 32
    uses = ()


@dataclass(frozen=True)
class Trial:
    P0: float          # P(x^k)
    direction: np.ndarray
    delta: float       # Delta of the Armijo test
    t: float = 1.0
    backtracks: int = 0


def subproblem(H: np.ndarray, g: np.ndarray, x: np.ndarray, lam1: float) -> np.ndarray:
    """u minimising g^T (u - x) + 1/2 (u - x)^T H (u - x) + lam1 ||u||_1 (H symmetric positive definite)."""
    w = np.linalg.eigvalsh(H)
    L, mu = w[-1], max(w[0], 1e-300)
    beta = (np.sqrt(L) - np.sqrt(mu)) / (np.sqrt(L) + np.sqrt(mu))
    u = v = x.copy()
    for _ in range(200000):
        u_next = l1.soft_threshold(v - (g + H @ (v - x)) / L, lam1 / L)
        v = u_next + beta * (u_next - u)
        change, u = np.linalg.norm(u_next - u), u_next
        if change <= 1e-16 * max(1.0, np.linalg.norm(u)):
            break
    return _polish(H, g, x, lam1, u)


def _polish(H, g, x, lam1, u):
    """The exact solution on u's support with its signs, when it satisfies the optimality conditions; else u."""
    S = u != 0
    s = np.sign(u[S])
    exact = np.zeros_like(u)
    if S.any():
        exact[S] = x[S] - np.linalg.solve(H[np.ix_(S, S)], g[S] - H[np.ix_(S, ~S)] @ x[~S] + lam1 * s)
    residual = g + H @ (exact - x)
    ok = np.all(np.sign(exact[S]) == s) and np.all(np.abs(residual[~S]) <= lam1 * (1 + 1e-9))
    return exact if ok else u


def server_step(p: Params, state, x, agg: Aggregate):
    H = tri.unpack(agg.mean("hess"), len(x))
    g = agg.grad / agg.n
    u = subproblem(H, g, x, p.lam1)
    direction = u - x
    delta = float(g @ direction + l1.value(u, p.lam1) - l1.value(x, p.lam1))
    if not delta < 0:  # the decrease is below rounding (x* is near): the unit step, no line search
        return state, u, 0.0
    trial = Trial(agg.loss / agg.n + l1.value(x, p.lam1), direction, delta)
    return Query(x + direction, trial, len(x) * p.float_bits)


def client_query(p: Params, block, state, point, streams):
    values, index = bits_for(block.n, 1, p.float_bits)
    return state, Uplink(block.loss(point), None, values, index)


def server_resume(p: Params, trial: Trial, x, agg: Aggregate):
    point = x + trial.t * trial.direction
    if agg.loss / agg.n + l1.value(point, p.lam1) <= trial.P0 + ARMIJO_C * trial.t * trial.delta:
        return None, point, 0.0
    if trial.backtracks >= MAX_BACKTRACKS:
        raise MpifedError(f"the proximal Newton line search found no step after {MAX_BACKTRACKS} halvings "
                          f"(Delta = {trial.delta:.3e})")
    trial = replace(trial, t=trial.t / 2, backtracks=trial.backtracks + 1)
    return Query(x + trial.t * trial.direction, trial, len(x) * p.float_bits)
