"""R-PAGE: PAGE (Li, Bao, Zhang, Richtarik, ICML 2021, Algorithm 1) lifted to the sphere, after Demidovich,
Malinovsky and Richtarik 2024 ("Streamlining in the Riemannian Realm", arXiv:2403.06677). A mini-batch is the
round's participants S^k, b = tau of the n clients drawn uniformly without replacement from (seed, round)
(``--participation``, default a tenth). Round k, with the shared coin c_k (c_0 = 1, then Bernoulli(p))::

    c_k = 1:  every client sends grad f_i(x^k) (d floats);        g^k = (1/n) sum_i grad f_i(x^k),
    c_k = 0:  the participants send grad f_i(x^k) - T_k grad f_i(x^{k-1}) (d floats);
              g^k = T_k g^{k-1} + (1/b) sum_{i in S^k} (grad f_i(x^k) - T_k grad f_i(x^{k-1})),
    x^{k+1} = R_{x^k}(-eta g^k),

T_k = P_{x^k} the vector transport from x^{k-1}, R the retraction (:mod:`.sphere`). A participant evaluates its
gradient at both points (every client keeps x^{k-1}: the broadcast reaches all of them). Defaults (the
Euclidean template's non-convex step, Li et al. 2021, as the method sheet gives it): p = b/(b + n),
eta = 1/(L_tilde (1 + sqrt((1 - p)/(p b)))), L_tilde the clients' mean-square smoothness from the setup.
Downlink: x^{k+1} to every client, d floats. With b = n the estimator is grad f(x^k) up to rounding (the
transported terms cancel), and p = 1 gives :mod:`.rgd`'s update to the last bit (at RGD's step).

What was checked: the paper's abstract and introduction (arXiv HTML v1); its algorithm boxes were not reachable,
so the lifting follows the PAGE template and the project's sheet of the method, which is reconstructed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..base import Uplink, participation
from . import rgd, sphere
from ...network import flops as fl

COIN_STREAM = "r-page-coin"


@dataclass(frozen=True)
class Params:
    """b = tau participants of n per round; p: probability of a full round; eta: the step (None: theory)."""

    problems = ("pca",)  # the unit sphere's objective, and only it

    b: int
    p: float
    eta: float | None
    n: int
    seed: int
    float_bits: int = 32
    uses = ("participation", "grad_probability", "step_size")

    @staticmethod
    def default_p(b: int, n: int) -> float:
        return b / (b + n)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        n = fed.n_clients
        b = fed.tau or n
        p = opts.grad_probability if opts.grad_probability is not None else cls.default_p(b, n)
        return cls(b, p, opts.step_size, n, opts.seed, opts.float_bits)


@dataclass(frozen=True)
class ClientState:
    x: object  # x^{k-1}, the previous broadcast point


client_init = sphere.client_init


def server_init(p: Params, agg, x0):
    s = sphere.smoothness(agg)
    eta = p.eta or 1.0 / (s.L_tilde * (1.0 + math.sqrt((1.0 - p.p) / (p.p * p.b))))
    return sphere.EstimatorState(eta, np.zeros(len(x0)), s)


def client_step(p: Params, block, state, x, streams):
    loss, grad = sphere.gradients(block, x)
    if sphere.coin(p.seed, p.n, COIN_STREAM, streams.round, p.p):
        return ClientState(x), Uplink(loss, grad, *sphere.dense_bits(block.n, block.d, p.float_bits))
    active, on = participation(block.bk.xp, streams)
    _, old = sphere.gradients(block, state.x)
    delta = block.bk.xp.where(on[:, None], grad - sphere.project(x, old), 0.0)
    return ClientState(x), Uplink(loss, grad, *sphere.dense_bits(block.n, block.d, p.float_bits, active),
                                  {"delta": delta})


def server_step(p: Params, state: sphere.EstimatorState, x, agg):
    if sphere.coin(p.seed, p.n, COIN_STREAM, state.k, p.p):
        g = agg.grad / agg.n
    else:
        g = sphere.project(x, state.g) + agg.fields["delta"] / agg.participants
    return replace(state, g=g, k=state.k + 1), sphere.step(x, g, state.eta), len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Expected over the coin (a full round with probability p; round 0's sure full round is not singled out):

    client: f_i and grad f_i(x^k), and with probability 1 - p the participant's correction grad f_i(x^k) -
    T_k grad f_i(x^{k-1}) (:func:`.rgd.old_gradient_flops`);
    server: with probability p the sum of all n gradients and 1/n (n d + d), else the b = tau participants'
    corrections (tau d), T_k g^{k-1} (4 d), 1/b and the sum (2 d); then the step."""
    full = s.n * s.d + s.d
    partial = fl.aggregate(s, s.d) + fl.tangent_projection(s.d) + 2.0 * s.d
    return fl.Work(rgd.gradient_flops(s) + (1.0 - p.p) * rgd.old_gradient_flops(s),
                   p.p * full + (1.0 - p.p) * partial + rgd.step_flops(s.d))
