"""Fed-Sophia, the convex "diagonal Newton" variant on logistic regression (Elbakary, Ben Issaid, Shehab, Seddik,
ElBatt, Bennis, IEEE ICC 2024, arXiv:2406.06655, Alg. 1, with its local Sophia rule, Liu et al. arXiv:2305.14342,
Alg. 3, moved to the server; the Fed-Sophia text was not read: the rule follows the project's source sheet,
section A6, from a third-party summary and the Sophia paper).

Round k: x down (d floats); client i sends grad f_i(x) and a curvature diagonal D_i (2d floats), either

    exact:       D_i = diag grad^2 f_i(x) = (1/m_i) sum_j sigma_ij (1 - sigma_ij) a_ij^2 + lam        (GLM)
    hutchinson:  D_i = u_i * (grad^2 f_i(x) u_i),  u_i Rademacher from client i's own stream

(one probe; E[u * (H u)] = diag H, Bekas, Kokiopoulou, Saad 2007),

and the server keeps Sophia's two moving averages and takes the clipped preconditioned step

    m = beta1 m + (1 - beta1) g,   h = beta2 h + (1 - beta2) mean_i D_i,
    x <- x - eta clip(m / max(gamma h, eps), rho)                     (elementwise clip to [-rho, rho])

with g = grad P(x) and eps = 1e-12. Where h <= 0 (a Hutchinson estimate can be) the step is +-eta rho, Sophia's
sign-step fallback. With beta1 = beta2 = 0, gamma = 1 and a large rho it is the diagonal Newton step
x - D^{-1} g.

Defaults: eta = 0.1 (``step_size``; on a9a the unit step oscillates and 0.2 stalls at ||grad P|| ~ 0.5, while
0.1 reaches 1.4e-3 in 300 rounds, GD 4.4e-3), gamma = 1, rho = 1 (``clip``, Sophia's), beta1 = 0 and beta2 = 0 with the exact
diagonal (a deterministic diagonal needs no averaging), beta2 = 0.99 (Sophia's) with Hutchinson's, whose single
probe is noisy; Sophia's beta1 = 0.96 and weight decay are LLM settings (weight decay is 0 here: lam is in f_i).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ...network import flops as fl
from ..base import Uplink, bits_for
from ..first_order.fedavg import _or
from .giant import gradient_and_coefficients

EPS = 1e-12


@dataclass(frozen=True)
class Params:
    """eta step, beta1 / beta2 moving averages, gamma curvature scale, rho clip, diagonal 'exact' | 'hutchinson'."""

    eta: float = 0.1
    beta1: float = 0.0
    beta2: float = 0.0
    gamma: float = 1.0
    rho: float = 1.0
    diagonal: str = "exact"
    float_bits: int = 32
    uses = ("step_size", "beta1", "beta2", "gamma", "clip", "diagonal")

    def __post_init__(self):
        if self.diagonal not in ("exact", "hutchinson"):
            raise ConfigError(f"diagonal = {self.diagonal!r} is out of range; valid: exact, hutchinson")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        diagonal = _or(opts.diagonal, "exact")
        return cls(_or(opts.step_size, 0.1), _or(opts.beta1, 0.0), _or(opts.beta2, 0.99 if diagonal == "hutchinson" else 0.0),
                   _or(opts.gamma, 1.0), _or(opts.clip, 1.0), diagonal, opts.float_bits)


@dataclass
class ServerState:
    m: np.ndarray | None
    h: np.ndarray | None
    report: dict


def rademacher(streams, d: int, xp=np, name: str = "hutchinson", clients=slice(None), dtype=np.float64):
    """One Rademacher vector per client (n, d) (of the block's ``clients`` only: a host bool mask) from its own
    stream ``name`` of the round."""
    bits = streams.bits(name, d)[clients]
    return xp.asarray(1.0 - 2.0 * (bits & np.uint64(1)).astype(dtype))


def diagonals(p: Params, block, x, h, streams):
    """The clients' D_i (n, d): the exact GLM diagonal from the Hessian coefficients h, or one Hutchinson probe."""
    if p.diagonal == "exact":
        return block.squared_rows(h) + block.lam
    u = rademacher(streams, block.d, block.bk.xp)
    return u * block.hvp_from_coefficients(h, u)


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return ServerState(None, None, {})


def client_step(p: Params, block, state, x, streams):
    loss, grad, h = block.derivatives_and_coefficients(x)
    values, index = bits_for(block.n, 2 * block.d, p.float_bits)
    return state, Uplink(loss, grad, values, index, {"D": diagonals(p, block, x, h, streams)})


def server_step(p: Params, state: ServerState, x, agg):
    g, D = agg.grad / agg.n, agg.mean("D")
    m = g * (1 - p.beta1) if state.m is None else p.beta1 * state.m + (1 - p.beta1) * g
    h = D * (1 - p.beta2) if state.h is None else p.beta2 * state.h + (1 - p.beta2) * D
    step = np.clip(m / np.maximum(p.gamma * h, EPS), -p.rho, p.rho)
    report = {"clipped": float(np.count_nonzero(np.abs(step) >= p.rho))}
    return ServerState(m, h, report), x - p.eta * step, len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Client: f_i, grad f_i and the coefficients h_ij, then D_i: exact, (1/m_i) sum_j h_ij a_ij^2 + lam
    (:func:`~mpifed.network.flops.squared_rows` and the ridge, d); Hutchinson, one Rademacher draw per entry (d),
    one Hessian-vector product from the coefficients (:func:`~mpifed.network.flops.hvp`) and u * (H u)
    (d). Server: the sums of grad f_i and D_i (2d floats each), their means (2 d), the moving averages
    m and h (3 d each), then gamma h, max(., eps), m / (.), the clip to [-rho, rho] (2 d), eta (.) and x - (.)
    (7 d)."""
    diagonal = (fl.squared_rows(s) + s.d if p.diagonal == "exact" else s.d + fl.hvp(s) + s.d)
    server = fl.aggregate(s, 2 * s.d) + 2.0 * s.d + 6.0 * s.d + 7.0 * s.d
    return fl.Work(gradient_and_coefficients(s) + diagonal, server)
