"""Local Curvature Descent LCD1, LCD2, LCD3 (Richtarik, Giancola, Lubczyk, Yadav, "Local Curvature Descent:
Squeezing More Curvature out of Standard and Polyak Gradient Descent", arXiv:2405.16574).

The methods assume a curvature map C(x) >= 0 with, for all x, y (d = y - x)::

    P(x) + <grad P(x), d> + ||d||^2_C(x) / 2  <=  P(y)  <=  P(x) + <grad P(x), d> + ||d||^2_C(x) / 2 + L ||d||^2 / 2,

and take, with g = grad P(x^k), C = C(x^k) and f* = min P::

    LCD1:  x^{k+1} = x^k - (C + L I)^{-1} g                           (generalises GD with step 1/L)
    LCD2:  x^{k+1} = the Euclidean projection of x^k onto Q_k = {y : P(x^k) + <g, d> + ||d||^2_C / 2 <= f*}
                   = x^k - mu (I + mu C)^{-1} g,  mu >= 0 the root of P(x^k) + <g, d> + ||d||^2_C / 2 = f*
                                                                       (generalises GD with the Polyak step)
    LCD3:  x^{k+1} = the projection onto Q_k in the norm of C
                   = x^k - s C^{-1} g,  s = 1 - sqrt(1 - 2 (P(x^k) - f*) / <g, C^{-1} g>)   (closed form).

What was checked: only the paper's abstract was reachable (it confirms the three methods, that LCD1 generalises
GD with a fixed step, LCD2 the Polyak step, LCD3 is a variable-metric LCD2 with a closed form, and the motivating
class "sums of squares of absolutely convex functions"); the assumption and the three rules above are the
project's reconstruction (ALGORITHMS-NEXT.md, B9), and the closed forms are derived from the KKT conditions of
the two projections. The paper's equation numbers could not be checked.

Curvature maps (the lower bound must hold *globally*):

* least squares, P = (1/n) sum_i (1/(2 m_i)) ||A_i x - b_i||^2 + lam ||x||^2 / 2 is a sum of squares of the
  absolutely convex ``phi_ij = |a_ij^T x - b_ij|``, whose map sum grad phi grad phi^T is G = mean_i A_i^T A_i / m_i;
  with the ridge term, C = G + lam I makes both bounds equalities and L = 0 (LCD1 is Newton's step);
* logistic: no x-dependent map satisfies the lower bound everywhere (phi'' -> 0 far out), so C = lam I and
  L = lambda_max(G) / 4; LCD1 is then exactly GD with step 1/(lam + lambda_max(G)/4), and LCD2/LCD3 are
  Polyak-type steps that know lam;
* ``--no-local-curvature``: C = 0 and L = lam + c lambda_max(G) (GD's constant): LCD1 is GD, LCD2 is GD with the
  Polyak step (x - (P(x) - f*) g / ||g||^2); LCD3 needs C > 0 and refuses.

C is the same at every x in both cases, so the server keeps its eigendecomposition from setup. If Q_k is empty
(an f* below min of the model), LCD2 takes the model's minimiser (the limit mu -> infinity); if P(x^k) <= f*,
it stays. f* is P(x*) of the reference solve unless ``--f-star`` gives it.

Exchanges: one per round. Bits per client: d floats up (grad f_i), plus one float f_i(x^k) for LCD2/LCD3;
d floats down. Setup on least squares: each client's A_i^T A_i / m_i (d(d+1)/2 floats, counted); on logistic
the Gram matrices for L travel as GD's do (a simulator convenience, not counted).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize

from ... import tri
from ...errors import ConfigError
from ...network import flops as fl
from ..base import SolverError, Uplink, bits_for
from .gd import smoothness_of_P

VARIANTS = {"lcd1": 1, "lcd2": 2, "lcd3": 3}


@dataclass(frozen=True)
class Params:
    """variant: 1, 2 or 3; f_star: min P (None: the reference solve's); curvature: use C (else C = 0);
    exact: the problem is a quadratic whose C is its Hessian (least squares); bound: sup l'' (GD's L)."""

    variant: int
    f_star: float | None = None
    curvature: bool = True
    exact: bool = False
    lam: float = 1e-3
    bound: float = 0.25
    float_bits: int = 32
    uses = ("f_star", "local_curvature")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        variant = VARIANTS[opts.algorithm]
        if variant == 1 and opts.f_star is not None:
            raise ConfigError("--f-star does not apply to lcd1 (its step uses L, not f*); it is for lcd2 and lcd3")
        curvature = opts.local_curvature is not False
        if variant == 3 and not curvature:
            raise ConfigError("lcd3 steps with C^{-1}: it needs the curvature map (drop --no-local-curvature)")
        block = fed.block
        if variant == 3 and block.third_derivative_bound != 0 and opts.lam <= 0:
            raise ConfigError(f"lcd3 needs a positive definite C; on --problem {block.name} C = lam I, so "
                              f"--lam = {opts.lam!r} is out of range (valid: lam > 0)")
        return cls(variant, opts.f_star, curvature, block.third_derivative_bound == 0, opts.lam,
                   block.curvature_bound, opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    w: np.ndarray  # eigenvalues of C
    V: np.ndarray  # its eigenvectors
    L: float


def client_init(p: Params, block, x0, streams):
    """Least squares with C: each client's A_i^T A_i / m_i (counted); otherwise the Gram matrices for L, as GD."""
    zero = np.zeros(block.n)
    gram = block.gram()
    if p.curvature and p.exact:
        values, index = bits_for(block.n, block.T, p.float_bits)
        return None, Uplink(zero, np.zeros((block.n, block.d)), values, index, {"gram": gram})
    return None, Uplink(zero, np.zeros((block.n, block.d)), zero, zero, {"gram": gram})


def server_init(p: Params, agg, x0):
    d = len(x0)
    if not p.curvature:
        C, L = np.zeros((d, d)), smoothness_of_P(agg, d, p.lam, p.bound)
    elif p.exact:
        C, L = tri.unpack(agg.mean("gram"), d) + p.lam * np.eye(d), 0.0
    else:
        C, L = p.lam * np.eye(d), smoothness_of_P(agg, d, 0.0, p.bound)
    w, V = np.linalg.eigh(C)
    w = np.maximum(w, 0.0)  # C >= 0: rounding only
    if p.variant == 3 and not w[0] > 0:
        raise ConfigError(f"lcd3 needs a positive definite C; smallest eigenvalue {w[0]:.3e} (give --lam > 0)")
    if p.variant == 1 and not w[0] + L > 0:
        raise SolverError("C + L I is singular: give --lam > 0")
    return ServerState(w, V, L)


def client_step(p: Params, block, state, x, streams):
    loss, grad, _ = block.derivatives(x, hessian=False)
    values, index = bits_for(block.n, block.d + (p.variant > 1), p.float_bits)
    return state, Uplink(loss, grad, values, index)


def server_step(p: Params, state: ServerState, x, agg):
    g, f = agg.grad / agg.n, agg.loss / agg.n
    gh = state.V.T @ g  # g in the eigenbasis of C
    if p.variant == 1:
        step = gh / (state.w + state.L)
    elif p.variant == 2:
        step = polyak_step(gh, state.w, f - p.f_star)
    else:
        Cg = gh / state.w
        ratio = 2.0 * (f - p.f_star) / float(gh @ Cg)
        step = (1.0 - np.sqrt(max(1.0 - ratio, 0.0))) * Cg if ratio > 0 else np.zeros_like(g)
    return state, x - state.V @ step, len(x) * p.float_bits


def polyak_step(gh, w, gap: float):
    """LCD2's step in the eigenbasis of C: a gh with a = mu / (1 + mu w), mu the root of
    q(mu) = gap - sum gh^2 a (1 - a w / 2) (decreasing in mu; a stays finite as mu grows); 0 when gap <= 0."""
    if gap <= 0:
        return np.zeros_like(gh)
    g2 = gh * gh

    def q(mu):
        a = 1.0 / (1.0 / mu + w)
        return gap - float(np.sum(g2 * a * (1.0 - 0.5 * a * w)))

    lo = gap / float(g2.sum())  # the Polyak mu (C = 0): q(lo) >= 0 since C >= 0
    if q(lo) <= 0:
        return gh / (1.0 / lo + w)
    hi = 2.0 * lo
    while q(hi) > 0:
        if hi > 1e300:  # Q_k empty, or f* its boundary only in the limit: the model's minimiser
            return np.where(w > 0, gh / np.where(w > 0, w, 1.0), hi * gh)
        lo, hi = hi, 2.0 * hi
    mu = scipy.optimize.brentq(q, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=500)
    return gh / (1.0 / mu + w)


def flops(p: Params, s) -> fl.Work:
    """Client: f_i and grad f_i. Server: the sum of d (+ 1) floats and the means (d + 1), gh = V^T g (2 d^2),
    the step in the eigenbasis (LCD1: gh / (w + L), 2d; LCD2: g^2 and its sum (2d), mu by the secular equation
    (:func:`~mpifed.network.flops.secular_root`, 8 per entry: a = 1/(1/mu + w), 1 - a w / 2, g^2 a (...) and its
    sum), gh / (1/mu + w) (2d); LCD3: C^{-1} g, <g, C^{-1} g> and the scaling, 4d) and x - V step (2 d^2 + d).
    Setup, least squares with C only (counted as an exchange): the clients' A_i^T A_i / m_i (2 per row pair and
    T divisions), the server's sum, mean (T), unpacking (d^2), + lam I (d) and eigendecomposition (9 d^3)."""
    d, floats = s.d, s.d + (p.variant > 1)
    step = {1: 2.0 * d, 2: 4.0 * d + fl.secular_root(d, 8.0), 3: 4.0 * d}[p.variant]
    server = fl.aggregate(s, floats) + floats + 2.0 * d * d + step + 2.0 * d * d + d
    if p.curvature and p.exact:
        return fl.Work(fl.loss_grad(s), server, init=2.0 * s.pairs + s.T,
                       init_server=fl.aggregate(s, s.T) + s.T + fl.unpack(d) + d + 9.0 * d**3)
    return fl.Work(fl.loss_grad(s), server)
