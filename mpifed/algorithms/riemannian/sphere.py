"""The unit sphere's toolkit and the setup every Riemannian method shares.

On S^{d-1} = {x : ||x|| = 1} with tangent spaces T_x = {v : <x, v> = 0} and the metric of R^d:

* projection onto T_x: P_x v = v - <x, v> x; the Riemannian gradient of f is grad f(x) = P_x grad_E f(x);
* retraction: R_x(v) = (x + v) / ||x + v|| (the metric-projection retraction; a second-order approximation of
  the exponential map Exp_x(v) = cos||v|| x + sin||v|| v/||v||, so the iterates are x^{k+1} = R_{x^k}(-eta g^k));
* vector transport: T_{x -> y} u = P_y u (transport by projection, in place of parallel transport).

These are the cheap choices of Absil, Mahony and Sepulchre (2008, Ch. 4 and Sec. 8.1); Demidovich, Malinovsky
and Richtarik (2024, arXiv:2403.06677) state R-LSVRG, R-PAGE and R-MARINA with Exp and parallel transport.
Every method here takes the same three maps, so equal messages give equal iterates to the last bit.

Setup (one uncounted message, as GD's Gram matrices): each client's Rayleigh quotient Lambda_i ~ lambda_max(A_i)
after :data:`POWER_STEPS` power iterations from x^0. f_i = -x^T A_i x has Riemannian Hessian
P_x(-2 A_i v) + 2 (x^T A_i x) v on T_x, of norm at most 2 (lambda_max(A_i) - lambda_min(A_i)) <= 2 lambda_max(A_i)
(A_i >= 0), so L_i = 2 Lambda_i; and lambda_max(mean A_i) <= mean lambda_max(A_i) gives L = 2 mean Lambda_i for f.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...rng import ClientStreams
from ..base import Uplink

POWER_STEPS = 50  # power iterations per client at setup: the Rayleigh quotients settle well within the steps' margin


def project(x, v):
    """P_x v: rows of v (d,) or (n, d) projected onto the tangent space at x (d,)."""
    return v - (v @ x)[..., None] * x if v.ndim == 2 else v - (v @ x) * x


def retract(x, v):
    """R_x(v) = (x + v) / ||x + v||."""
    y = x + v
    return y / np.linalg.norm(y)


def step(x, g, eta: float):
    """x^{k+1} = R_x(-eta g)."""
    return retract(x, -eta * g)


def gradients(block, x):
    """(f_i(x) (n,), Riemannian gradients P_x grad_E f_i(x) (n, d)) of the block's clients."""
    loss, egrad, _ = block.derivatives(x)
    return loss, project(x, egrad)


def dense_bits(n: int, d: int, float_bits: int, sending=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-client (value bits, index bits): d floats from each client where ``sending`` (all when None)."""
    values = np.full(n, float(d * float_bits))
    return (values if sending is None else np.where(sending, values, 0.0)), np.zeros(n)


def coin(seed: int, n: int, name: str, k: int, p: float) -> bool:
    """The round's shared coin: True in round 0, then Bernoulli(p) from the pseudo-client stream (seed, name, n, k),
    the same on every rank and the server (no bits: it is derived, as the participants are)."""
    if k == 0 or p >= 1.0:
        return True
    return bool(ClientStreams(seed, [n], k).uniform(name, 1)[0, 0] < p)


@dataclass(frozen=True)
class Smoothness:
    """L = 2 mean Lambda_i (of f), L_tilde = 2 sqrt(mean Lambda_i^2) (mean-square), L_max = 2 max Lambda_i."""

    L: float
    L_tilde: float
    L_max: float


@dataclass(frozen=True)
class EstimatorState:
    """The server state of R-PAGE and R-MARINA: the step, the last estimator g^{k-1}, the constants, the round."""

    eta: float
    g: np.ndarray
    smooth: Smoothness
    k: int = 0


def client_init(p, block, x0, streams):
    """Every method's setup: no client state yet, and the :func:`smoothness_uplink`."""
    return None, smoothness_uplink(block, x0)


def smoothness_uplink(block, x0) -> Uplink:
    """The setup message: each client's Lambda_i, gathered (no bits, not an exchange)."""
    xp, zero = block.bk.xp, np.zeros(block.n)
    top = block.top_eigenvalues(xp.asarray(x0), POWER_STEPS)
    return Uplink(xp.zeros(block.n), xp.zeros((block.n, block.d)), zero, zero, gathered={"top": top})


def smoothness(agg) -> Smoothness:
    top = np.maximum(np.asarray(agg.gathered["top"], dtype=np.float64).ravel(), 0.0)
    return Smoothness(2.0 * float(top.mean()), 2.0 * math.sqrt(float((top ** 2).mean())), 2.0 * float(top.max()))
