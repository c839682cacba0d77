"""Distributed gradient descent: x^{k+1} = x^k - gamma grad P(x^k).

The default step is gamma = 1/L with L = lam + c lambda_max((1/n) sum_i A_i^T A_i / m_i), a smoothness
constant of P, where c bounds the row loss's curvature (the block's ``curvature_bound``: phi'' <= 1/4 on the
logistic problem, exactly 1 on least squares); clients send their gradients (d floats).

L at setup: up to GRAM_MAX_D features every client sends its packed Gram matrix A_i^T A_i / m_i once and the server
takes the largest eigenvalue of their mean; above, no d x d matrix is formed: the driver runs a Lanczos iteration
(ARPACK, relative tolerance 1e-12) on rank 0 whose products (1/n) sum_i A_i^T A_i v / m_i are exchanges of the
clients' block-summed products (:func:`mpifed.driver.smoothness_matrix_free`), and hands L in ``Params.L``. Either
setup is a simulator's convenience: its messages are not counted as exchanges or bits. Above :data:`~mpifed.algorithms.base.DENSE_CLIENT_D` the gradients go up summed over the block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import tri
from ..base import DENSE_CLIENT_D, Uplink, bits_for, summed_gradients
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """gamma: the step size (None: 1/L, computed at setup); lam, curvature (sup l''): for L."""

    gamma: float | None = None
    lam: float = 0.0
    float_bits: int = 32
    curvature: float = 0.25
    L: float | None = None  # above GRAM_MAX_D: computed matrix-free by the driver before round 0
    uses = ("step_size",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(gamma=opts.step_size, lam=opts.lam, float_bits=opts.float_bits,
                   curvature=fed.block.curvature_bound)


@dataclass(frozen=True)
class ServerState:
    gamma: float
    L: float


GRAM_MAX_D = 2048  # above this d, L comes from matrix-free products (a packed Gram matrix: 16.8 MB per client)
MATRIX_FREE_L = True  # the driver fills Params.L above GRAM_MAX_D


def client_init(p: Params, block, x0, streams):
    """Setup message: each client's A_i^T A_i / m_i, for the smoothness constant (not counted in bits); none
    above GRAM_MAX_D (L is given)."""
    if p.L is not None:
        return None, None
    zero = np.zeros(block.n)
    return None, Uplink(zero, np.zeros((block.n, block.d)), zero, zero, {"gram": block.gram()})


def smoothness_of_P(agg, d: int, lam: float, curvature: float = 0.25) -> float:
    """L = lam + c lambda_max(mean_i A_i^T A_i / m_i) from the summed setup Gram matrices, c = sup l''
    (1/4 logistic, 1 least squares)."""
    return float(np.linalg.eigvalsh(tri.unpack(agg.mean("gram"), d))[-1] * curvature + lam)


def server_init(p: Params, agg, x0):
    L = p.L if p.L is not None else smoothness_of_P(agg, len(x0), p.lam, p.curvature)
    return ServerState(p.gamma or 1.0 / L, L)


def client_step(p: Params, block, state, x, streams):
    if block.d > DENSE_CLIENT_D:
        loss, grad, _ = summed_gradients(block, x)
    else:
        loss, grad, _ = block.derivatives(x, hessian=False)
    values, index = bits_for(block.n, block.d, p.float_bits)
    return state, Uplink(loss, grad, values, index)


def server_step(p: Params, state: ServerState, x, agg):
    return state, x - state.gamma * agg.grad / agg.n, len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Client: f_i and grad f_i; server: the sum and x - gamma g (2d). (The setup's Gram matrices for L are a
    simulator's convenience, not an exchange, and cost no simulated time.)"""
    return fl.Work(fl.loss_grad(s), fl.aggregate(s, s.d) + 2.0 * s.d)
