"""ProxSkip for federated learning, i.e. Scaffnew (Mishchenko, Malinovsky, Stich, Richtarik, ICML 2022,
Algorithm 2; Algorithm 1 is ProxSkip with psi = the consensus constraint), with the L1 term in the prox.

Every client i keeps a local model x_i and a control variate h_i (h_i^0 = 0). One iteration t:

    xhat_i = x_i - gamma (grad f_i(x_i) - h_i)                          (local step)
    flip a coin theta_t ~ Bernoulli(p), shared by all clients
    theta_t = 1:  x_i <- prox_{(gamma/p) lam1 ||.||_1}((1/n) sum_j (xhat_j - (gamma/p) h_j))   (communicate)
    theta_t = 0:  x_i <- xhat_i                                          (skip)
    h_i <- h_i + (p/gamma) (x_i - xhat_i)                                (changes only when theta_t = 1)

(Alg. 2 lines 3-9; with R = lam1 ||.||_1, the prox of psi = consensus + R on the average, as ProxSkip's
Alg. 1 line 5 with the lifted psi). Each round of the driver is one communication: the clients run the
t_k >= 1 local steps up to and including the one whose coin is 1, then the average is taken; x^k in the trace
is the consensus model after the k-th communication (Alg. 2 reports it; between communications there is no
common model to measure), ``exchanges`` = rounds, and the trace column ``local_steps`` holds t_k (row k: the
local steps taken from x^k). The coins come from (seed, round): t_k ~ Geometric(p), the number of Bernoulli(p)
trials up to the first success, drawn by inversion from one uniform u_k of the round,
t_k = max(1, ceil(log(1 - u_k) / log(1 - p))), the same on every rank.

Arithmetic: the message is written so that p = 1 is proximal GD bit for bit. After a communication every
x_i = x^k; with G_i = sum of the t_k local gradients, xhat_i = x^k - gamma (G_i - t_k h_i), so

    xhat_i - (gamma/p) h_i = x^k - gamma w_i,   w_i = G_i + (1/p - t_k) h_i,

and the client sends w_i (d floats); the server takes x^{k+1} = prox_{(gamma/p) R}(x^k - gamma mean_i w_i)
and broadcasts it (d floats). At p = 1, t_k = 1 and w_i = grad f_i(x^k) + 0 h_i exactly. The client applies
h_i <- h_i + (p/gamma)(x^{k+1} - xhat_i) when x^{k+1} arrives. Invariant: the mean of the h_i is
-(p/gamma)(z - x^{k+1}) for z the prox's argument, an element of -lam1 d||x^{k+1}||_1 (0 when lam1 = 0:
sum_i h_i = 0, up to rounding).

Defaults (paper, Sec. 3: its linear-rate theorem and the choice of p after it, as recalled in B8): gamma = 1/L_max, L_max = max_i L_i (each
local step is on one f_i), and p = sqrt(gamma mu) with mu = lam, the choice giving O(sqrt(kappa) log 1/eps)
communications; the Lyapunov function sum_i ||x_i - x*||^2 + (gamma/p)^2 sum_i ||h_i - grad f_i(x*)||^2
contracts by 1 - min(gamma mu, p^2) per iteration. Checked against the rule in ALGORITHMS-NEXT B8 (recalled
Alg. 2, two public reproductions) and the paper's abstract; the paper's text was not read here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import ConfigError
from ...network import flops as fl
from ...problems import l1
from ...rng import ClientStreams
from ..base import Uplink, bits_for
from ..first_order.fedavg import max_smoothness


@dataclass(frozen=True)
class Params:
    """gamma: the local step; p: the probability of communicating after a local step; lam1: the L1 weight."""

    gamma: float
    p: float
    lam1: float = 0.0
    seed: int = 0
    float_bits: int = 32
    uses = ("step_size", "skip_probability")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        gamma = opts.step_size or 1.0 / max_smoothness(fed)  # collective: every rank calls from_options
        p = opts.skip_probability
        if p is None:
            if opts.lam <= 0:
                raise ConfigError("--skip-probability has no default when --lam = 0 (p = sqrt(gamma mu), mu = lam); "
                                  "give --skip-probability in (0, 1]")
            p = min(1.0, math.sqrt(gamma * opts.lam))
        return cls(gamma, p, opts.l1, opts.seed, opts.float_bits)


def local_steps(p: Params, round: int) -> int:
    """t_k: local steps in round k, Geometric(p) from the round's shared uniform (1 when p = 1)."""
    if p.p >= 1.0:
        return 1
    u = ClientStreams(p.seed, np.zeros(1, dtype=np.int64), round).uniform("proxskip-coin", 1)[0, 0]
    return max(1, math.ceil(math.log1p(-u) / math.log1p(-p.p)))


@dataclass(frozen=True)
class ClientState:
    h: object           # (n, d) control variates h_i
    xhat: object = None  # (n, d) the last local iterates before the previous communication (None before round 0)


@dataclass(frozen=True)
class ServerState:
    k: int = 0                                   # the round of the next server step
    report: dict = field(default_factory=dict)   # trace columns of the last step: its local_steps t_k


def client_init(p: Params, block, x0, streams):
    return ClientState(block.bk.xp.zeros((block.n, block.d))), None


def server_init(p: Params, agg, x0):
    return ServerState()


def client_step(p: Params, block, state: ClientState, x, streams):
    h = state.h if state.xhat is None else state.h + (p.p / p.gamma) * (x - state.xhat)  # Alg. 2 line 9
    t = local_steps(p, streams.round)
    y, G = x, 0.0
    for s in range(t):
        loss_s, grad_s, _ = block.derivatives(y, hessian=False)
        if s == 0:
            loss, grad = loss_s, grad_s  # f_i, grad f_i at the consensus x^k: the round's metrics
        G = G + grad_s
        y = y - p.gamma * (grad_s - h)
    w = G + (1.0 / p.p - t) * h
    values, index = bits_for(block.n, block.d, p.float_bits)
    return ClientState(h, y), Uplink(loss, grad, values, index, {"w": w})


def server_step(p: Params, state: ServerState, x, agg):
    """x^{k+1} = prox_{(gamma/p) R}(x^k - gamma mean_i w_i), to every client (d floats)."""
    step = p.gamma / p.p
    x_next = l1.prox(x - p.gamma * agg.fields["w"] / agg.n, step, p.lam1)
    report = {"local_steps": float(local_steps(p, state.k))}
    return ServerState(state.k + 1, report), x_next, len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Client, at the expected t_k = 1/p local steps (t_k ~ Geometric(p) on {1, 2, ...}; E t_k = 1/p): the
    h_i update h + (p/gamma)(x - xhat) (3d), then per local step f_i and grad f_i, G += grad (d) and
    y - gamma (grad - h) (3d), and w = G + (1/p - t) h (2d); server: the sum, x - gamma mean w (2d) and the
    soft-threshold (3d, when lam1 > 0)."""
    steps = 1.0 / p.p
    step = 3.0 * s.d + steps * (fl.loss_grad(s) + 4.0 * s.d) + 2.0 * s.d
    return fl.Work(step, fl.aggregate(s, s.d) + 2.0 * s.d + fl.soft_threshold(s.d, p.lam1))
