"""DIANA: compressed gradient differences (Mishchenko, Gorbunov, Takac, Richtarik 2019,
Algorithm 1; Horvath et al. 2019). Each client keeps a shift h_i (h_i^0 = 0) and
the server keeps h = (1/n) sum_i h_i. Round k, for the participants i in S^k:

    Delta_i = C_i(grad f_i(x^k) - h_i),      h_i <- h_i + alpha Delta_i,

and the server steps with

    g^k = h^k + (1/tau) sum_{i in S^k} Delta_i,   x^{k+1} = prox_{gamma R}(x^k - gamma g^k),
    h^{k+1} = h^k + (alpha/n) sum_{i in S^k} Delta_i   (= the mean of the new h_i).

R = lam1 ||.||_1 (``--l1``; the prox is soft-thresholding, taken at the server, Algorithm 1's line
"x^{k+1} = prox_{gamma R}(x^k - gamma g^k)"); with lam1 = 0 the prox is the identity.
With full participation (tau = n) this is the paper's g^k = h^k + (1/n) sum_i Delta_i. Partial
participation (an extension; the estimator of Artemis, Philippenko and Dieuleveut 2020):
non-participants send nothing and keep h_i; g^k is unbiased for grad P(x^k) under uniform
tau-of-n sampling, as E (1/tau) sum_{S} v_i = (1/n) sum_i v_i.

Theoretical parameters: alpha = 1/(omega + 1) and, with mu = lam the strong convexity and
L_max = max_i L_i the clients' smoothness (from their Gram matrices at setup, as GD),

    gamma = min(alpha / (2 mu), 2 / ((L_max + mu)(1 + 6 omega / n))),

the strongly convex step used for DIANA in the experiments of Islamov et al. 2021 (its authors' FedNL-Public
code). The identity compressor gives alpha = 1, h^{k+1} = grad P(x^k), g^k = grad P(x^k): DIANA
is GD with the same step. Default compressor: Rand-K, K = d/4 (Islamov et al. 2021, Sec. 4). A biased
compressor (Top-K) needs explicit ``step_size`` and ``alpha``. Bits: what the compressor
reports per participant; downlink as :mod:`dcgd`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ...problems import l1
from ..base import Uplink, participation, to_participants
from .dcgd import is_unbiased, make_compressor, message_bits, smoothness, smoothness_init
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """C: compressor; alpha: shift learning rate; gamma: step (None: theory, at setup); tau of n per round."""

    C: object
    alpha: float
    gamma: float | None
    lam: float
    tau: int
    n: int
    float_bits: int = 32
    curvature: float = 0.25  # sup l'', for L and L_max
    lam1: float = 0.0
    uses = ("compressor", "alpha", "step_size", "participation")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        C = make_compressor(opts, fed, "diana")
        alpha = opts.alpha
        if alpha is None:
            if not is_unbiased(C):
                raise ConfigError(f"--compressor = {C.spec()!r} is biased: DIANA's alpha = 1/(omega+1) needs an "
                                  f"unbiased one; give --alpha in (0, 1]")
            alpha = 1.0 / (C.omega + 1.0)
        if not 0 < alpha <= 1:
            raise ConfigError(f"--alpha = {alpha!r} is out of range; valid: 0 < alpha <= 1 "
                              f"(theory: alpha <= 1/(omega+1) = {1 / (C.omega + 1):.4g})")
        return cls(C, alpha, opts.step_size, opts.lam, fed.tau or fed.n_clients, fed.n_clients, opts.float_bits,
                   fed.block.curvature_bound, opts.l1)


@dataclass(frozen=True)
class ClientState:
    h: object  # (n, d) the shifts h_i


@dataclass(frozen=True)
class ServerState:
    gamma: float
    h: np.ndarray  # (d,) mean of the h_i
    L: float
    L_max: float


def theoretical_gamma(alpha: float, omega: float, mu: float, L_max: float, n: int) -> float:
    bound = 2.0 / ((L_max + mu) * (1.0 + 6.0 * omega / n))
    return min(alpha / (2.0 * mu), bound) if mu > 0 else bound


def client_init(p: Params, block, x0, streams):
    return ClientState(block.bk.xp.zeros((block.n, block.d))), smoothness_init(block)


def server_init(p: Params, agg, x0):
    L, L_max = smoothness(agg, len(x0), p.lam, p.curvature)
    gamma = p.gamma or theoretical_gamma(p.alpha, p.C.omega, p.lam, L_max, p.n)
    return ServerState(gamma, np.zeros(len(x0)), L, L_max)


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    loss, grad, _ = block.derivatives(x, hessian=False)
    active, on = participation(xp, streams)
    message = p.C.compress(grad - state.h, streams)
    delta = xp.where(on[:, None], message.values, 0.0)  # non-participants: nothing sent, h_i kept
    values, index = message_bits(message, active)
    return ClientState(state.h + p.alpha * delta), Uplink(loss, grad, values, index, {"delta": delta})


def server_step(p: Params, state: ServerState, x, agg):
    total = agg.fields["delta"]
    g = state.h + total / agg.participants
    h = state.h + p.alpha * total / agg.n
    x_next = l1.prox(x - state.gamma * g, state.gamma, p.lam1)
    return ServerState(state.gamma, h, state.L, state.L_max), x_next, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """Client: the gradient, grad - h_i (d), C, h_i += alpha C(...) (2d); server: the sum, g = h + mean (2d),
    the step (2d) and its soft-threshold (3d, when lam1 > 0), h += alpha mean (2d)."""
    return fl.Work(fl.loss_grad(s) + 3.0 * s.d + fl.compression(p.C),
                   fl.aggregate(s, fl.payload(p.C)) + 6.0 * s.d + fl.soft_threshold(s.d, p.lam1))
