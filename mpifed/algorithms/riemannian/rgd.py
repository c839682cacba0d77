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

from . import sphere
from ..base import Uplink


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
