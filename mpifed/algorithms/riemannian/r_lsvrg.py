"""R-LSVRG: loopless SVRG (Kovalev, Horvath, Richtarik, ALT 2020, Algorithm 1) lifted to the sphere, after
Demidovich, Malinovsky and Richtarik 2024 ("Streamlining in the Riemannian Realm", arXiv:2403.06677). The
reference point w^k and mu^k = grad f(w^k) are kept by the server (w^k by every client too); a mini-batch is
the round's participants S^k, b = tau of the n clients (``--participation``, default a tenth). Round k::

    g^k = T_k mu^k + (1/b) sum_{i in S^k} (grad f_i(x^k) - T_k grad f_i(w^k))   (participants: d floats),
    x^{k+1} = R_{x^k}(-eta g^k),
    w^{k+1} = x^k and mu^{k+1} = grad f(x^k) with probability p (every client sends grad f_i(x^k), d floats,
              in the same exchange), else w^{k+1} = w^k,

T_k = P_{x^k} the vector transport from w^k (T_k(grad f_i(w) - mu) = T_k grad f_i(w) - T_k mu: the clients
transport their own term, the server mu), R the retraction (:mod:`.sphere`). Round 0 sets w^0 = x^0 with a full
exchange, so g^0 = grad f(x^0). The coin is drawn from (seed, round) alone (:func:`.sphere.coin`). Defaults:
p = b/n (L-SVRG's p = 1/n for b = 1), eta = 1/(6 L_max) (L-SVRG's 1/(6 L) with the expected smoothness of
client sampling, at most L_max = 2 max_i Lambda_i from the setup). Downlink: x^{k+1} to every client, d floats.
With b = n the estimator is grad f(x^k) up to rounding.

What was checked: the paper's abstract and introduction (arXiv HTML v1); its algorithm boxes were not reachable,
so the lifting follows the L-SVRG template and the project's sheet of the method, which is reconstructed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..base import Uplink, participation
from . import r_page, rgd, sphere
from ...network import flops as fl

COIN_STREAM = "r-lsvrg-coin"


@dataclass(frozen=True)
class Params(r_page.Params):
    """As R-PAGE's: b = tau participants of n per round; p: probability that w moves to x^k; eta (None: theory)."""

    @staticmethod
    def default_p(b: int, n: int) -> float:
        return b / n


@dataclass(frozen=True)
class ClientState:
    w: object  # w^k (None before round 0)


@dataclass(frozen=True)
class ServerState:
    eta: float
    w: np.ndarray
    mu: np.ndarray  # grad f(w^k)
    smooth: sphere.Smoothness
    k: int = 0


def client_init(p: Params, block, x0, streams):
    return ClientState(None), sphere.smoothness_uplink(block, x0)


def server_init(p: Params, agg, x0):
    s = sphere.smoothness(agg)
    return ServerState(p.eta or 1.0 / (6.0 * s.L_max), np.array(x0), np.zeros(len(x0)), s)


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    loss, grad = sphere.gradients(block, x)
    refresh = sphere.coin(p.seed, p.n, COIN_STREAM, streams.round, p.p)
    dense, index = sphere.dense_bits(block.n, block.d, p.float_bits)
    values, fields = (dense if refresh else np.zeros(block.n)), {}
    if streams.round > 0:  # the participants' corrections (round 0 has w^0 = x^0: nothing to correct)
        active, on = participation(xp, streams)
        _, at_w = sphere.gradients(block, state.w)
        fields["delta"] = xp.where(on[:, None], grad - sphere.project(x, at_w), 0.0)
        values = values + np.where(active, dense, 0.0)
    return ClientState(x if refresh else state.w), Uplink(loss, grad, values, index, fields)


def server_step(p: Params, state: ServerState, x, agg):
    full = agg.grad / agg.n
    g = full if state.k == 0 else sphere.project(x, state.mu) + agg.fields["delta"] / agg.participants
    w, mu = (x, full) if sphere.coin(p.seed, p.n, COIN_STREAM, state.k, p.p) else (state.w, state.mu)
    return replace(state, w=w, mu=mu, k=state.k + 1), sphere.step(x, g, state.eta), len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """A round k > 0 (round 0, w^0 = x^0, skips the correction), the refresh at its expected value (probability p):

    client: f_i and grad f_i(x^k) (sent when w moves: no extra arithmetic; w^{k+1} = x^k is a copy), and the
    participant's correction grad f_i(x^k) - T_k grad f_i(w^k) (:func:`.rgd.old_gradient_flops`);
    server: the b = tau corrections (tau d), T_k mu^k (4 d), 1/b and the sum (2 d); with probability p the sum
    of all n gradients and 1/n for mu^{k+1} (n d + d); then the step."""
    full = s.n * s.d + s.d
    corrections = fl.aggregate(s, s.d) + fl.tangent_projection(s.d) + 2.0 * s.d
    return fl.Work(rgd.gradient_flops(s) + rgd.old_gradient_flops(s),
                   corrections + p.p * full + rgd.step_flops(s.d))
