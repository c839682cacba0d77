"""DCGD, distributed compressed gradient descent (Khirirat, Feyzmahdavian, Johansson 2018):

    x^{k+1} = x^k - gamma (1/tau) sum_{i in S^k} C_i(grad f_i(x^k)),

each client of the round's set S^k (``streams.active``; all n clients by default) sending one
compressed gradient, C unbiased with variance omega (E C(v) = v, E||C(v)||^2 <= (omega+1)||v||^2).
Averaging over the tau participants keeps the estimator unbiased for grad P under uniform
tau-of-n sampling. Non-participants send nothing.

Default step (theory for unbiased compressors, Khirirat et al. 2018; Gorbunov, Hanzely,
Richtarik 2020, Sec. on DCGD): gamma = 1/(L + 2 L_max omega / n), where L is the smoothness
constant of P and L_max = max_i L_i that of the f_i (L_i = lam + lambda_max(A_i^T A_i/m_i)/4),
both from the clients' Gram matrices at setup as in GD. With the identity compressor
(omega = 0) this is GD's 1/L, and DCGD is GD. DCGD converges only to a neighbourhood of x*
when the grad f_i(x*) differ (the compression variance does not vanish at x*).

Decaying steps (``step_decay`` = c > 0): gamma_k = gamma / (1 + c k) in round k (a counter in the
server state, the same on every rank). This is the O(1/k) schedule, gamma_k proportional to
1/(k_0 + k), for SGD-type methods whose gradient noise persists at x* (Gorbunov, Hanzely,
Richtarik, AISTATS 2020, "A unified theory of SGD", the decreasing-stepsize result after Stich
2019; DCGD is one of their cases, its noise sigma^2 > 0 growing with omega and the
||grad f_i(x*)||^2): the neighbourhood, E||x - x*||^2 = O(gamma), shrinks with gamma_k.
The rate condition is c of the order of mu gamma_0 or less (mu = lam here).

Default compressor: Rand-K with K = d/4 (Islamov et al. 2021, Sec. 4, "random-r ... we choose r = d/4").
Biased (contractive) compressors such as Top-K have no default step: give ``step_size``.
Bits: exactly what the compressor reports, per participant; downlink: x^{k+1} to the next
round's tau clients, tau/n * d floats per client (the ledger's per-client mean, as in FedNL-PP).

With the L1 term (``--l1`` lam1 > 0) the step is proximal, x^{k+1} = prox_{gamma_k lam1 ||.||_1}(x^k - gamma_k g^k),
the prox taken at the server after aggregation: proximal SGD with the DCGD estimator (Gorbunov, Hanzely,
Richtarik, AISTATS 2020, Algorithm 1 "x^{k+1} = prox_{gamma R}(x^k - gamma g^k)", DCGD among its cases).

This module also holds the setup shared with :mod:`diana` and :mod:`adiana`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ... import compressors, tri
from ...errors import ConfigError
from ...problems import l1
from ..base import Uplink, participation, to_participants
from .gd import smoothness_of_P
from ...network import flops as fl


def make_compressor(opts, fed, method: str, biased_ok: bool = True):
    """The vector compressor (default Rand-K, K = d/4); a biased one needs an explicit step size."""
    spec = opts.compressor or f"randk:k={max(1, fed.d // 4)}"
    C = compressors.make(spec, fed.d, opts.float_bits, vector=True)
    if not is_unbiased(C):
        if not biased_ok:
            raise ConfigError(f"--compressor = {spec!r} is biased (contractive); {method} needs an unbiased one "
                              f"(identity, randk, natural, randseqk)")
        if opts.step_size is None:
            raise ConfigError(f"--compressor = {spec!r} is biased (contractive): {method}'s theoretical step needs "
                              f"an unbiased one; give --step-size > 0")
    return C


def is_unbiased(C) -> bool:
    return C.kind == "unbiased" or C.spec() == "identity"


def smoothness_init(block):
    """Setup message (not counted in bits): A_i^T A_i/m_i summed, and each lambda_max(A_i^T A_i/m_i)."""
    gram = block.gram()
    xp = block.bk.xp
    top = xp.linalg.eigvalsh(tri.unpack(gram, block.d, xp))[:, -1]
    zero = np.zeros(block.n)
    return Uplink(xp.zeros(block.n), xp.zeros((block.n, block.d)), zero, zero, {"gram": gram}, {"top": top})


def smoothness(agg, d: int, lam: float, curvature: float = 0.25) -> tuple[float, float]:
    """(L of P, L_max = max_i L_i), with l'' <= curvature (1/4 logistic, 1 least squares)."""
    return smoothness_of_P(agg, d, lam, curvature), float(np.max(agg.gathered["top"]) * curvature + lam)


def message_bits(message, active):
    """Per-client bits of a compressed message: what the compressor reports, zero for non-participants."""
    return (np.where(active, np.asarray(message.value_bits, dtype=np.float64), 0.0),
            np.where(active, np.asarray(message.index_bits, dtype=np.float64), 0.0))


@dataclass(frozen=True)
class Params:
    """C: the gradient compressor; gamma: the step (None: theory, at setup); lam; tau of n clients per round."""

    C: object
    gamma: float | None
    lam: float
    tau: int
    n: int
    float_bits: int = 32
    decay: float = 0.0
    curvature: float = 0.25  # sup l'', for L and L_max
    lam1: float = 0.0
    uses = ("compressor", "step_size", "participation", "step_decay")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        C = make_compressor(opts, fed, "dcgd")
        return cls(C, opts.step_size, opts.lam, fed.tau or fed.n_clients, fed.n_clients, opts.float_bits,
                   opts.step_decay or 0.0, fed.block.curvature_bound, opts.l1)


@dataclass(frozen=True)
class ServerState:
    gamma: float
    L: float
    L_max: float
    k: int = 0  # the round, for gamma_k = gamma / (1 + c k)


def client_init(p: Params, block, x0, streams):
    return None, smoothness_init(block)


def server_init(p: Params, agg, x0):
    L, L_max = smoothness(agg, len(x0), p.lam, p.curvature)
    gamma = p.gamma or 1.0 / (L + 2.0 * L_max * p.C.omega / p.n)
    return ServerState(gamma, L, L_max)


def client_step(p: Params, block, state, x, streams):
    xp = block.bk.xp
    loss, grad, _ = block.derivatives(x, hessian=False)
    active, on = participation(xp, streams)
    # Every client draws from its own stream, so compressing the whole block and masking
    # gives each participant the same draw as compressing it alone.
    message = p.C.compress(grad, streams)
    values, index = message_bits(message, active)
    return state, Uplink(loss, grad, values, index, {"g": xp.where(on[:, None], message.values, 0.0)})


def server_step(p: Params, state: ServerState, x, agg):
    g = agg.fields["g"] / agg.participants
    gamma_k = state.gamma / (1.0 + p.decay * state.k)
    x_next = l1.prox(x - gamma_k * g, gamma_k, p.lam1)
    return replace(state, k=state.k + 1), x_next, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """Client: the gradient and C on it; server: the sum of the compressed gradients, the step (2d) and the
    soft-threshold (3d, when lam1 > 0)."""
    return fl.Work(fl.loss_grad(s) + fl.compression(p.C),
                   fl.aggregate(s, fl.payload(p.C)) + 2.0 * s.d + fl.soft_threshold(s.d, p.lam1))
