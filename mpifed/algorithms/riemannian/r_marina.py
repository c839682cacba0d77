"""R-MARINA: MARINA (Gorbunov, Burlachenko, Li, Richtarik, ICML 2021, Algorithm 1) lifted to the sphere, after
Demidovich, Malinovsky and Richtarik 2024 ("Streamlining in the Riemannian Realm", arXiv:2403.06677), who
derive it from R-PAGE. Round k, with the shared coin c_k (c_0 = 1, then Bernoulli(p))::

    c_k = 1:  every client sends grad f_i(x^k) (d floats);       g^k = (1/n) sum_i grad f_i(x^k),
    c_k = 0:  every client sends Q_i(grad f_i(x^k) - T_k grad f_i(x^{k-1}))  (the compressor's bits);
              g^k = P_{x^k}(T_k g^{k-1} + (1/n) sum_i Q_i(...)),
    x^{k+1} = R_{x^k}(-eta g^k),

with T_k = P_{x^k} the vector transport from x^{k-1} (the *old* estimator and gradients are transported before
the differences are added) and R the retraction of :mod:`.sphere`. Projecting the mean of the decompressed
differences keeps g^k tangent and unbiased (P is linear and the difference is tangent at x^k). Each client keeps
its Riemannian gradient of the previous round. With p = 1 every round is a c = 1 round and R-MARINA is
:mod:`.rgd` to the last bit (same messages, same sum, same step); with the identity compressor g^k =
grad f(x^k) up to rounding.

The coin is drawn from (seed, round) alone (a pseudo-client stream, :func:`.sphere.coin`), so the server and
every rank agree without a message. Q: an unbiased vector compressor (``--compressor``, default Rand-K with
K = d/4, as DCGD), each client from its own stream. Defaults (the Euclidean template's non-convex step, Gorbunov
et al. 2021, as the method sheet gives it; the Riemannian theory adds curvature constants): p = the cost of one
compressed message over a dense one (K/d for Rand-K up to the index bits: MARINA's p = zeta_Q/d), and
eta = 1/(L + L_tilde sqrt((1 - p) omega / (p n))) with L, L_tilde from the setup (:mod:`.sphere`).
Downlink: x^{k+1} to every client, d floats (the coin costs nothing).

What was checked: the paper's abstract and introduction (arXiv HTML v1); its algorithm boxes were not reachable,
so the lifting (transport by projection, the projected compressed mean) follows the MARINA template and
the project's sheet of the method, which is reconstructed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ... import compressors
from ...errors import ConfigError
from ...rng import ClientStreams
from ..base import Uplink
from . import rgd, sphere
from ...network import flops as fl

COIN_STREAM = "r-marina-coin"


def make_compressor(opts, fed, method: str):
    """The unbiased vector compressor of ``--compressor`` (default Rand-K, K = d/4)."""
    spec = opts.compressor or f"randk:k={max(1, fed.d // 4)}"
    C = compressors.make(spec, fed.d, opts.float_bits, vector=True)
    if C.kind != "unbiased" and C.spec() != "identity":
        raise ConfigError(f"--compressor = {spec!r} is biased; {method} needs an unbiased one (identity, randk, "
                          f"natural, randseqk)")
    return C


def cost_ratio(C, d: int, float_bits: int) -> float:
    """Bits of one compressed d-vector over d dense floats (every vector compressor's count is fixed)."""
    message = C.compress(np.ones((1, d)), ClientStreams(0, [0], 0))
    return min(1.0, float(message.value_bits[0] + message.index_bits[0]) / (d * float_bits))


@dataclass(frozen=True)
class Params:
    """Q: the compressor (omega its variance); p: probability of a dense round; eta: the step (None: theory)."""

    problems = ("pca",)  # the unit sphere's objective, and only it

    Q: object
    p: float
    eta: float | None
    n: int
    seed: int
    float_bits: int = 32
    uses = ("compressor", "grad_probability", "step_size")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        Q = make_compressor(opts, fed, "r-marina")
        p = opts.grad_probability if opts.grad_probability is not None else cost_ratio(Q, fed.d, opts.float_bits)
        return cls(Q, p, opts.step_size, fed.n_clients, opts.seed, opts.float_bits)


@dataclass(frozen=True)
class ClientState:
    grad: object  # (n, d) grad f_i(x^{k-1}), Riemannian


client_init = sphere.client_init


def server_init(p: Params, agg, x0):
    s = sphere.smoothness(agg)
    eta = p.eta or 1.0 / (s.L + s.L_tilde * math.sqrt((1.0 - p.p) * p.Q.omega / (p.p * p.n)))
    return sphere.EstimatorState(eta, np.zeros(len(x0)), s)


def client_step(p: Params, block, state, x, streams):
    loss, grad = sphere.gradients(block, x)
    if sphere.coin(p.seed, p.n, COIN_STREAM, streams.round, p.p):
        return ClientState(grad), Uplink(loss, grad, *sphere.dense_bits(block.n, block.d, p.float_bits))
    message = p.Q.compress(grad - sphere.project(x, state.grad), streams)
    bits = (np.asarray(message.value_bits, dtype=np.float64), np.asarray(message.index_bits, dtype=np.float64))
    return ClientState(grad), Uplink(loss, grad, *bits, {"q": message.values})


def server_step(p: Params, state: sphere.EstimatorState, x, agg):
    if sphere.coin(p.seed, p.n, COIN_STREAM, state.k, p.p):
        g = agg.grad / agg.n
    else:
        g = sphere.project(x, state.g + agg.fields["q"] / agg.n)
    return replace(state, g=g, k=state.k + 1), sphere.step(x, g, state.eta), len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Expected over the coin (a dense round with probability p; round 0's sure one is not singled out):

    client: f_i and grad f_i(x^k), and with probability 1 - p the difference grad f_i(x^k) - T_k grad f_i(x^{k-1})
    from the kept gradient (transport 4 d, difference d) and Q on it (:func:`~mpifed.network.flops.compression`);
    server: with probability p the sum of the n gradients and 1/n (n d + d), else the sum of the n compressed
    messages (n payload(Q)), 1/n and + g^{k-1} (2 d) and P_{x^k} (4 d); then the step."""
    dense = s.n * s.d + s.d
    compressed = fl.aggregate(s, fl.payload(p.Q)) + 2.0 * s.d + fl.tangent_projection(s.d)
    client = rgd.gradient_flops(s) + (1.0 - p.p) * (fl.tangent_projection(s.d) + s.d + fl.compression(p.Q))
    return fl.Work(client, p.p * dense + (1.0 - p.p) * compressed + rgd.step_flops(s.d))
