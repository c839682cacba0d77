"""Distributed gradient descent: x^{k+1} = x^k - gamma grad P(x^k).

The default step is gamma = 1/L with L = lam + c lambda_max((1/n) sum_i A_i^T A_i / m_i), a smoothness
constant of P, where c bounds the row loss's curvature (the block's ``curvature_bound``: phi'' <= 1/4 on the
logistic problem, exactly 1 on least squares); clients send their gradients (d floats).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import tri
from ..base import Uplink, bits_for


@dataclass(frozen=True)
class Params:
    """gamma: the step size (None: 1/L, computed at setup); lam, curvature (sup l''): for L."""

    gamma: float | None = None
    lam: float = 0.0
    float_bits: int = 32
    curvature: float = 0.25
    uses = ("step_size",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(gamma=opts.step_size, lam=opts.lam, float_bits=opts.float_bits,
                   curvature=fed.block.curvature_bound)


@dataclass(frozen=True)
class ServerState:
    gamma: float
    L: float


def client_init(p: Params, block, x0, streams):
    """Setup message: each client's A_i^T A_i / m_i, for the smoothness constant (not counted in bits)."""
    zero = np.zeros(block.n)
    return None, Uplink(zero, np.zeros((block.n, block.d)), zero, zero, {"gram": block.gram()})


def smoothness_of_P(agg, d: int, lam: float, curvature: float = 0.25) -> float:
    """L = lam + c lambda_max(mean_i A_i^T A_i / m_i) from the summed setup Gram matrices, c = sup l''
    (1/4 logistic, 1 least squares)."""
    return float(np.linalg.eigvalsh(tri.unpack(agg.mean("gram"), d))[-1] * curvature + lam)


def server_init(p: Params, agg, x0):
    L = smoothness_of_P(agg, len(x0), p.lam, p.curvature)
    return ServerState(p.gamma or 1.0 / L, L)


def client_step(p: Params, block, state, x, streams):
    loss, grad, _ = block.derivatives(x, hessian=False)
    values, index = bits_for(block.n, block.d, p.float_bits)
    return state, Uplink(loss, grad, values, index)


def server_step(p: Params, state: ServerState, x, agg):
    return state, x - state.gamma * agg.grad / agg.n, len(x) * p.float_bits
