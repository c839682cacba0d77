"""FedNL-BC: FedNL with bidirectional compression (Safaryan, Islamov, Qian, Richtarik, ICML 2022,
Algorithm 5 "FedNL-BC"; the rules follow FedNL_BC in the authors' public numpy code, FedNL-Public,
which is the reference here rather than the paper's text).

The devices hold a learned model w^k (the point the driver broadcasts, so the trace's metrics
are at w^k); the server also keeps z^k, the last point where gradients were sent, and grad f(z^k).
Round k, with a coin xi^k (xi^0 = 1, then Bernoulli(p), shared by server and devices):

    devices: S_i = C(grad^2 f_i(w^k) - H_i^k), H_i^{k+1} = H_i^k + alpha S_i, l_i = ||H_i^k - grad^2 f_i(w^k)||_F,
             and grad f_i(w^k) only if xi^k = 1 (then z^k = w^k, else z^k = z^{k-1})
    server:  M = [H^k]_mu (Option 1) or H^k + l^k I (Option 2)
             g^k = grad f(z^k) + M (w^k - z^k)                  (the gradient, learned to first order)
             x^{k+1} = w^k - M^{-1} g^k
             s^k = Q(x^{k+1} - w^k),  w^{k+1} = w^k + eta s^k  (downlink model compression)
             H^{k+1} = H^k + alpha mean(S_i)

The Hessian learning is FedNL's client step (:func:`mpifed.algorithms.second_order.fednl.client_step`) at
w^k. Q is a compressor of the d-vector (``down_compressor``: identity, topk:k=K, randk:k=K, with
K <= d, or any other entrywise compressor of :mod:`mpifed.compressors`); its randomness and the
coins come from a pseudo-client stream (seed, id n, round k), the same on every rank.
eta defaults to Q's class theory as in the authors' code: 1 - sqrt(1 - delta) for contractive Q
(1 for the identity), 1/(omega + 1) for unbiased Q. p defaults to 1/2, the authors' default; Q
defaults to the identity (their default, biased rounding, is not in mpifed). With Q the identity
and p = 1, w^{k+1} = x^{k+1} and FedNL-BC is FedNL.

Bits per client: up, S_i (+ 1 float l_i under Option 2) + d floats when xi^k = 1; down, Q's
payload of s^k (values and indices) + 1 bit for the next coin (when p < 1).
Difference from the authors' code: their l_i is measured at the server's x^k, which the devices
never receive; here at w^k, where S_i is taken. Their trace plots f(x^k) at the server's point;
mpifed's metrics are at w^k, the model the devices hold (the driver evaluates the broadcast point).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ... import compressors, tri
from ...errors import ConfigError
from ...rng import ClientStreams
from . import fednl
from ..base import Aggregate
from ...network import flops as fl

COIN_STREAM = "fednl-bc:xi"


@dataclass(frozen=True)
class Params:
    """fednl: C, alpha, option, mu; Q (down compressor), eta (model learning rate), p; seed, n for the server streams."""

    fednl: fednl.Params
    Q: compressors.Compressor
    eta: float
    p: float
    seed: int
    n: int
    uses = ("compressor", "alpha", "option", "mu", "down_compressor", "eta", "grad_probability")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        base = fednl.Params.from_options(opts, fed)
        Q = model_compressor(opts.down_compressor or "identity", fed.d, opts.float_bits)
        if opts.eta is not None:
            eta = opts.eta
        elif Q.kind == "unbiased":
            eta = 1.0 / (Q.omega + 1.0)
        else:
            eta = 1.0 - math.sqrt(1.0 - Q.delta)
        p = 0.5 if opts.grad_probability is None else opts.grad_probability
        return cls(base, Q, eta, p, opts.seed, fed.n_clients)


@functools.lru_cache(maxsize=None)
def model_compressor(spec: str, d: int, float_bits: int = 32) -> compressors.Compressor:
    """Q: a compressor of d-vectors from a spec of :func:`mpifed.compressors.make` (K at most d)."""
    try:
        return compressors.make(spec, d, float_bits, vector=True)
    except ConfigError as err:
        raise ConfigError(f"--down-compressor: {err}") from None


def coin(p: Params, k: int) -> bool:
    """xi^k: are gradients sent in round k? xi^0 = 1, then Bernoulli(p) from the server's stream."""
    if k == 0 or p.p >= 1.0:
        return True
    return bool(ClientStreams(p.seed, [p.n], k).uniform(COIN_STREAM, 1)[0, 0] < p.p)


@dataclass(frozen=True)
class ServerState:
    H: np.ndarray        # (T,) H^k
    z: np.ndarray        # z^k, where the gradients were last sent
    grad_z: np.ndarray   # grad f(z^k)
    k: int = 0
    report: dict = field(default_factory=dict)


def client_init(p: Params, block, x0, streams):
    return fednl.client_init(p.fednl, block, x0, streams)


def server_init(p: Params, agg: Aggregate, x0):
    return ServerState(agg.mean("hess"), np.array(x0, dtype=np.float64), np.zeros(len(x0)))


def client_step(p: Params, block, state, x, streams):
    state, uplink = fednl.client_step(p.fednl, block, state, x, streams)
    if not coin(p, streams.round):  # FedNL's step counts the gradient; it goes up only when xi^k = 1
        uplink = dataclasses.replace(uplink, value_bits=uplink.value_bits - block.d * p.fednl.float_bits)
    return state, uplink


def server_step(p: Params, state: ServerState, w, agg: Aggregate):
    d = len(w)
    H = tri.unpack(state.H, d)
    fresh = coin(p, state.k)
    z, grad_z = (w.copy(), agg.grad / agg.n) if fresh else (state.z, state.grad_z)
    report = {"gradient_sent": float(fresh)}
    # x^{k+1} = w^k - M^{-1} g^k with g^k = grad f(z^k) + M (w^k - z^k) is z^k - M^{-1} grad f(z^k):
    # one solve, no M (w^k - z^k) to form (and under Option 1 no second eigendecomposition)
    x_next = z - fednl.newton_step(p.fednl, H, grad_z, agg, report)
    message = p.Q.compress((x_next - w)[None, :], ClientStreams(p.seed, [p.n], state.k))
    w_next = w + p.eta * message.values[0]
    down = float(message.value_bits[0] + message.index_bits[0]) + (1.0 if p.p < 1.0 else 0.0)
    H_next = state.H + p.fednl.alpha * agg.mean("S")
    return ServerState(H_next, z, grad_z, state.k + 1, report), w_next, down


def flops(p: Params, s) -> fl.Work:
    """FedNL's client round at w^k (the gradient is computed every round, sent when the coin says so); the
    server's FedNL solve plus the model's compression Q on the d-vector and w += eta s (2d)."""
    f = p.fednl
    return fl.Work(fednl.client_round(f.compressor, f.option, s) + s.d,
                   fednl.server_round(f.compressor, f.option, s) + fl.compression(p.Q) + 2.0 * s.d,
                   init=fl.loss_grad(s) + fl.hessian(s), init_server=fl.aggregate(s, s.T))
