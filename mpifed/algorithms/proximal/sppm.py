"""SPPM-AS: stochastic proximal point with arbitrary cohort sampling, the cohort's prox solved by K exchanges
(Richtarik, Sadiev, Demidovich 2024, arXiv:2405.15941, SPPM; Yi, Kharisov, Sokolov, Richtarik 2024, "Cohort
Squeeze", arXiv:2406.01115, Alg. SPPM-AS with K local communication rounds per cohort).

Round t: a cohort S_t ~ D (:mod:`~mpifed.algorithms.proximal.sampling`, weights w_i = 1/(n p_i)), then

    x_{t+1} ~= prox_{gamma (f_S + R)}(x_t) = argmin_y  f_S(y) + ||y - x_t||^2 / (2 gamma) + lam1 ||y||_1,
    f_S = sum_{i in S_t} w_i f_i,   R = lam1 ||.||_1 (``--l1``; B7's "put lam1 ||y||_1 inside the prox").

The inner problem phi is solved inexactly, warm-started at x_t, by K iterations of accelerated proximal gradient
for a strongly convex objective (Nesterov 2004, constant-momentum scheme (2.2.22); Beck 2017, Sec. 10.7.7 with
the prox): from y_0 = v_0 = x_t,

    y_{j+1} = prox_{eta R}(v_j - eta (grad f_S(v_j) + (v_j - x_t)/gamma)),
    v_{j+1} = y_{j+1} + beta (y_{j+1} - y_j),          x_{t+1} = y_K,

eta = 1/(L_max + 1/gamma) and beta = (1 - sqrt(q))/(1 + sqrt(q)), q = (mu + 1/gamma)/(L_max + 1/gamma), with
mu = lam and L_max = max_i L_i bounding the smoothness of f_S (sum_{i in S} w_i = 1 for every sampling here).
Each inner iteration is one exchange: the server broadcasts v_j to the cohort, each member i sends
w_i grad f_i(v_j) (d floats); the round's first exchange (v_0 = x_t) is the driver's round exchange, the other
K - 1 are in-round queries, so ``exchanges`` grows by K per round. Downlink: each broadcast (v_1..v_{K-1} and
x_{t+1}) counted for the cohort, card(S_t)/n d floats per client. Clients outside S_t send nothing; all clients'
f_i(x_t), grad f_i(x_t) feed the trace's metrics only.

Full sampling with an exact inner solve is the proximal point method, ||x_{t+1} - x*|| <= ||x_t - x*|| / (1 + gamma mu)
(B7's fidelity check). Theory (Richtarik et al. 2024, Thm. for SPPM-AS, exact prox): any gamma > 0 converges
linearly to a neighbourhood of size O(gamma sigma^2), sigma^2 = E||grad f_S(x*)||^2 (zero for full sampling).
Defaults: gamma = 1/mu (a contraction of at least 1/2 per exact step) and K = 10; ``--step-size`` sets gamma,
``--inner-rounds`` K. SPPM-AS's adaptive step is not implemented (its rule was not read here). Checked against
ALGORITHMS-NEXT B7 ([R]: definitions from the abstracts); the papers' bodies were not read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...errors import ConfigError
from ...network import flops as fl
from ...problems import l1
from ..base import Query, Uplink
from ..first_order.fedavg import max_smoothness
from . import sampling

DEFAULT_K = 10


@dataclass(frozen=True)
class Params:
    """gamma: the prox step; K: inner exchanges per cohort; kind, count: the sampling; L_max, mu: the inner step."""

    gamma: float
    K: int
    kind: str
    count: int | None
    n: int
    L_max: float
    mu: float
    lam1: float = 0.0
    seed: int = 0
    float_bits: int = 32
    uses = ("step_size", "inner_rounds", "sampling")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        kind, count = sampling.parse(opts.sampling or "full")
        sampling.check(kind, count, fed.n_clients)
        if opts.step_size is None and opts.lam <= 0:
            raise ConfigError("--step-size has no default for sppm when --lam = 0 (gamma = 1/mu, mu = lam); "
                              "give --step-size > 0")
        gamma = opts.step_size or 1.0 / opts.lam
        L_max = max_smoothness(fed)  # collective: every rank calls from_options
        return cls(gamma, opts.inner_rounds or DEFAULT_K, kind, count, fed.n_clients, L_max, opts.lam, opts.l1,
                   opts.seed, opts.float_bits)

    @property
    def eta(self) -> float:
        return 1.0 / (self.L_max + 1.0 / self.gamma)

    @property
    def beta(self) -> float:
        root = math.sqrt((self.mu + 1.0 / self.gamma) * self.eta)
        return (1.0 - root) / (1.0 + root)


@dataclass(frozen=True)
class Inner:
    """The server between inner exchanges: x_t, the last y_j, the point v_j whose gradient comes next, and j."""

    x: np.ndarray
    y: np.ndarray
    v: np.ndarray
    j: int = 0


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return None


def _weights(p: Params, block, streams):
    """(w_i of the block's clients on the backend, the members as a host bool mask)."""
    w = sampling.cohort(p.kind, p.count, p.n, p.seed, streams.round)[np.asarray(streams.client_ids, dtype=np.int64)]
    return block.bk.xp.asarray(w), w > 0


def _uplink(p: Params, block, streams, loss, grad):
    w, member = _weights(p, block, streams)
    values = np.where(member, block.d * p.float_bits, 0.0)
    fields = {"g": w[:, None] * grad, "member": block.bk.xp.asarray(member, dtype=np.float64)}
    return Uplink(loss, grad, values, np.zeros(block.n), fields)


def client_step(p: Params, block, state, x, streams):
    loss, grad, _ = block.derivatives(x, hessian=False)  # at x_t = v_0: the metrics, and the first inner gradient
    return state, _uplink(p, block, streams, loss, grad)


def client_query(p: Params, block, state, point, streams):
    _, grad, _ = block.derivatives(point, hessian=False)
    up = _uplink(p, block, streams, block.bk.xp.zeros(block.n), grad)
    return state, replace(up, grad=None)


def server_step(p: Params, state, x, agg):
    return _inner(p, Inner(x, x, x), x, agg)


def server_resume(p: Params, inner: Inner, x, agg):
    return _inner(p, inner, x, agg)


def _inner(p: Params, inner: Inner, x, agg):
    """One accelerated proximal gradient step on phi from v_j, with grad f_S(v_j) summed in ``agg``."""
    v = inner.v
    grad_phi = agg.fields["g"] + (v - inner.x) / p.gamma
    y = l1.prox(v - p.eta * grad_phi, p.eta, p.lam1)
    down = float(agg.fields["member"]) / agg.n * len(x) * p.float_bits  # to the cohort
    if inner.j + 1 == p.K:
        return None, y, down
    v_next = y + p.beta * (y - inner.y)
    return Query(v_next, Inner(inner.x, y, v_next, inner.j + 1), down)


def flops(p: Params, s) -> fl.Work:
    """K inner iterations per round, the first on the round's exchange at x_t, the other K - 1 as queries. Each:
    a cohort member's f_i and grad f_i at v_j and w_i grad (d) (every client is charged a member's work: the
    clock's slowest participant is a member; this implementation also derives the others, for the metrics at x_t);
    the server's sum (d floats each), grad phi = g + (v - x_t)/gamma (3d), y = prox(v - eta grad phi) (2d, the
    soft-threshold 3d when lam1 > 0) and, on every iteration but the last, v = y + beta (y - y_prev) (3d): the
    round's exchange pays it when K > 1, each query (K - 2)/(K - 1) of it (the K - 2 momenta of the K - 1 queries)."""
    inner = fl.aggregate(s, s.d) + 5.0 * s.d + fl.soft_threshold(s.d, p.lam1)
    client = fl.loss_grad(s) + s.d
    momentum = 3.0 * s.d
    queries = p.K - 1
    return fl.Work(client, inner + (momentum if queries else 0.0), query=client,
                   query_server=inner + (momentum * (queries - 1) / queries if queries else 0.0))
