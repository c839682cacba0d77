"""Riemannian gradient descent on the sphere: x^{k+1} = R_{x^k}(-eta grad f(x^k)), grad f(x) = P_x grad_E f(x).

Every client sends its Riemannian gradient grad f_i(x^k) = P_{x^k}(-2 A_i x^k) (d floats); the server averages
and retracts (R_x(v) = (x + v)/||x + v||, :mod:`.sphere`). Default step eta = 1/L, L = 2 mean_i Lambda_i from
the setup (an upper bound of the Riemannian smoothness of f). On PCA this step is a shifted power iteration,
x^{k+1} ~ ((1 - 2 eta rho) I + 2 eta A) x^k with rho = x^T A x, and for 0 < eta <= 1/(2 (lambda_1 - lambda_d))

    tan theta_{k+1} <= (1 - 2 eta delta / (1 + 2 eta (lambda_1 - lambda_d))) tan theta_k,   delta = lambda_1 - lambda_2,

theta_k the angle between x^k and v_1 (each eigen-coordinate k >= 2 shrinks against v_1's by
(1 + 2 eta (lambda_k - rho)) / (1 + 2 eta (lambda_1 - rho)), largest at k = 2 and rho = lambda_d); near v_1
(rho -> lambda_1) the factor tends to 1 - 2 eta delta.
So 1 - <x^k, v_1>^2 = sin^2 theta_k falls linearly at a rate set by the eigengap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import sphere
from ..base import Uplink
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """eta: the step (None: 1/L at setup)."""

    problems = ("pca",)  # the unit sphere's objective, and only it

    eta: float | None = None
    float_bits: int = 32
    uses = ("step_size",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(opts.step_size, opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    eta: float
    smooth: sphere.Smoothness


client_init = sphere.client_init


def server_init(p: Params, agg, x0):
    smooth = sphere.smoothness(agg)
    return ServerState(p.eta or 1.0 / smooth.L, smooth)


def client_step(p: Params, block, state, x, streams):
    loss, grad = sphere.gradients(block, x)
    return state, Uplink(loss, grad, *sphere.dense_bits(block.n, block.d, p.float_bits))


def server_step(p: Params, state: ServerState, x, agg):
    return state, sphere.step(x, agg.grad / agg.n, state.eta), len(x) * p.float_bits


def gradient_flops(s) -> np.ndarray:
    """A client's f_i(x) and Riemannian gradient P_x(-2 A_i x) (every Riemannian round's uplink): 4 nnz + 8 d."""
    return fl.pca_loss_grad(s) + fl.tangent_projection(s.d)


def old_gradient_flops(s) -> np.ndarray:
    """grad f_i at a kept point y (x^{k-1}, or w^k), transported to x^k, and the difference grad f_i(x^k) -
    P_{x^k} grad f_i(y) (R-PAGE's and R-LSVRG's correction): P_y(-2 A_i y) (4 nnz + 6 d), P_{x^k} (4 d), d."""
    return fl.pca_grad(s) + 2.0 * fl.tangent_projection(s.d) + s.d


def step_flops(d: int) -> float:
    """x^{k+1} = R_x(-eta g): the scaling d and the retraction."""
    return d + fl.retraction(d)


def flops(p: Params, s) -> fl.Work:
    """Client: f_i and grad f_i (:func:`gradient_flops`); server: the sum of the n gradients, 1/n (d) and the
    step (:func:`step_flops`)."""
    return fl.Work(gradient_flops(s), fl.aggregate(s, s.d) + s.d + step_flops(s.d))
