"""Fed-Sophia on a neural network (Elbakary et al., IEEE ICC 2024, arXiv:2406.06655, Alg. 1; its local rule is
Sophia-H, Liu et al., arXiv:2305.14342, Alg. 3; the Fed-Sophia text was not read: the rule follows the project's
source sheet, section A6). :mod:`mpifed.algorithms.approx_newton.fedsophia` is the convex variant.

Round t: x down (P floats); participant i runs K local steps from theta = x on its mini-batches xi^k:

    g = grad f_i(theta; xi^k),   m = beta1 m + (1 - beta1) g,
    every tau steps (global step t K + k = 0 mod tau):  h_hat = u * (H u),  h = beta2 h + (1 - beta2) h_hat,
    theta <- theta - eta clip(m / max(gamma h, eps), rho)              (elementwise clip to [-rho, rho])

and sends Delta_i = theta - x (P floats); the server steps x + eta_g mean_S Delta_i. The curvature never leaves
the client; m and h are kept per client across rounds (a choice the source leaves open; said here).

Hessian-vector product: Sophia-H takes H u by double back-propagation, which this numpy code does not have; here
it is the forward difference of two gradients on the same mini-batch, H u ~ (grad f(theta + delta u) - grad
f(theta)) / delta with delta = 1e-3 (Rademacher u, one probe from the client's own stream ``hutchinson<k>``),
one more forward/backward pass per estimate (``time_hutchinson``). Sophia's weight decay is left out (the
problem's lam is in f_i).

Defaults: beta1 = 0.965 and beta2 = 0.99 (Sophia's code), tau = 10 (``hessian_every``), gamma = 0.01 (Sophia's
range [0.01, 0.05]), rho = 1, eps = 1e-12, eta = 0.003 (``step_size``; a clipped step moves every weight by at
most eta rho; see :data:`~mpifed.algorithms.networks.local.SOPHIA_STEP`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ...network import flops as fl
from ..approx_newton.fedsophia import EPS, rademacher
from ..first_order.fedavg import _or
from .fedavg import Params as FedAvgParams
from .fedavg import server_step  # noqa: F401  (x + eta_g mean_S Delta_i)
from .local import COMMON_USES, SOPHIA_STEP, Clock, common_fields, local_step, sgd_flops, start, uplink
from .local import ServerState, client_metrics, server_init  # noqa: F401

DELTA = 1e-3  # finite-difference step of the Hessian-vector product


@dataclass(frozen=True)
class Params(FedAvgParams):
    """FedAvg's eta_l, K, eta_g, tau of n, float bits, decay c; Sophia's beta1, beta2, gamma, rho and its estimate
    interval tau (``every``)."""

    beta1: float = 0.965
    beta2: float = 0.99
    gamma: float = 0.01
    rho: float = 1.0
    every: int = 10
    uses = COMMON_USES + ("server_lr", "beta1", "beta2", "gamma", "clip", "hessian_every")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed, default_step=SOPHIA_STEP), eta_g=_or(opts.server_lr, 1.0),
                   beta1=_or(opts.beta1, 0.965), beta2=_or(opts.beta2, 0.99), gamma=_or(opts.gamma, 0.01),
                   rho=_or(opts.clip, 1.0), every=_or(opts.hessian_every, 10))


@dataclass(frozen=True)
class ClientState:
    """m, h (n, P): each client's Sophia moving averages."""

    m: object
    h: object


def client_init(p: Params, block, x0, streams):
    xp = block.bk.xp
    return ClientState(xp.zeros((block.n, block.d)), xp.zeros((block.n, block.d))), None


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    clock = Clock("hutchinson")
    first = start(block, x, streams, clock)
    on = first.on
    idx = xp.asarray(on.nonzero()[0])
    m, h, g = state.m[idx], state.h[idx], first.grad[on]
    y = xp.broadcast_to(x, g.shape).astype(g.dtype)
    eta = local_step(p, streams)
    t0 = time.perf_counter()
    for k in range(p.K if on.any() else 0):
        X, lab = block.batch(streams, k, on)
        if k:
            _, g, _ = block.loss_grad(y, X, lab)
        m = p.beta1 * m + (1 - p.beta1) * g
        if (streams.round * p.K + k) % p.every == 0:
            t1 = time.perf_counter()
            u = rademacher(streams, block.d, xp, f"hutchinson{k}", on, g.dtype)
            _, g_shift, _ = block.loss_grad(y + DELTA * u, X, lab)
            h = p.beta2 * h + (1 - p.beta2) * u * (g_shift - g) / DELTA
            t0 += clock.add("hutchinson", t1) - t1
        y = y - eta * xp.clip(m / xp.maximum(p.gamma * h, EPS), -p.rho, p.rho)
    clock.add("forward_backward", t0)
    m_all, h_all = state.m.copy(), state.h.copy()
    m_all[idx], h_all[idx] = m, h
    return ClientState(m_all, h_all), uplink(p, block, first, {"delta": y - x}, clock)


def flops(p: Params, s) -> fl.Work:
    """K local steps, each a mini-batch gradient (:func:`~mpifed.network.flops.network_gradient`), m's moving
    average (3 P) and Sophia's update gamma h, max(., eps), m / (.), the clip (2 P), eta (.) and y - (.) (7 P);
    every tau-th global step a Hutchinson estimate: the Rademacher draw (P), y + delta u (2 P), a second gradient
    on the same batch, (g_shift - g) / delta and u * (.) (3 P), h's moving average (3 P). Estimates per round at
    their mean K / tau (the exact count, the k < K with (t K + k) mod tau = 0, averages K / tau over rounds). Then
    Delta_i (P) goes up; the server is FedAvg's (the sum and x + eta_g mean, 2 P)."""
    step = fl.network_gradient(s, ridge=False) + 10.0 * s.d
    estimate = fl.network_gradient(s, ridge=False) + 9.0 * s.d
    return fl.Work(fl.per_client(p.K * step + p.K / p.every * estimate + s.d, s), sgd_flops(p.K, s).server)
