"""FedAdam on a neural network: FedAvg's clients (K local mini-batch SGD steps, :mod:`~mpifed.algorithms.networks.fedavg`) with Adam on
the server (Reddi et al., ICLR 2021, "Adaptive federated optimization", Algorithm 2, FedAdam; as
:mod:`~mpifed.algorithms.first_order.fedadam`).

Round t, participants S, client i in S from y_i^0 = x^t, mini-batches xi_i^k (k = 0..K-1):

    y_i^{k+1} = y_i^k - eta_t grad f_i(y_i^k; xi_i^k),      eta_t = eta_l / (1 + c t)
    sends Delta_i = y_i^K - x^t                                (P floats)

Server (coordinate-wise, no bias correction, v^{-1} = tau^2 as the paper's Algorithm 2)::

    Delta^t = (1/|S|) sum_{i in S} Delta_i
    m^t = beta1 m^{t-1} + (1 - beta1) Delta^t                   m^{-1} = 0
    v^t = beta2 v^{t-1} + (1 - beta2) (Delta^t)^2               v^{-1} = tau^2
    x^{t+1} = x^t + eta m^t / (sqrt(v^t) + tau)

Defaults as :mod:`~mpifed.algorithms.first_order.fedadam`: beta1 = 0.9, beta2 = 0.99, tau = 1e-3 (``--adam-eps``; the paper's experiments),
eta = 0.1 (``--server-lr``). Early on ``|m / (sqrt(v) + tau)|`` is about 1 in every coordinate, so each weight moves
by about eta per round; Reddi et al. tune eta on a grid 10^{-3} ... 10^{1} per task, and so should a run here
(on mnist-synthetic, MLP 784-64-10, 10 clients, K = 10, eta_l = 0.1, 5 rounds: test accuracy 0.94 with
eta = 0.1, 0.86 with eta = 0.01).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..first_order import fedadam
from ..base import to_participants
from ..first_order.fedavg import _or
from .fedavg import client_step  # noqa: F401  (FedAvg's clients)
from .local import COMMON_USES, client_init, client_metrics, common_fields, timing_report  # noqa: F401
from ...network import flops as fl
from .local import sgd_flops

DEFAULT_SERVER_LR = 0.1  # as :mod:`.fedadam`


@dataclass(frozen=True)
class Params(fedadam.Params):
    """eta_l, K local steps, eta server step size, beta1, beta2, eps (the paper's tau), tau of n clients, float
    bits, decay c (the checks of :class:`mpifed.algorithms.first_order.fedadam.Params`)."""

    uses = COMMON_USES + ("server_lr", "beta1", "beta2", "adam_eps")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed), eta=_or(opts.server_lr, DEFAULT_SERVER_LR),
                   beta1=_or(opts.beta1, 0.9), beta2=_or(opts.beta2, 0.99), eps=_or(opts.adam_eps, 1e-3))


@dataclass(frozen=True)
class ServerState:
    m: np.ndarray                                # (P,) first moment of Delta^t
    v: np.ndarray                                # (P,) second moment
    report: dict = field(default_factory=dict)   # the clients' phase times, for the trace


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros_like(x0), np.full_like(x0, p.eps ** 2))


def server_step(p: Params, state: ServerState, x, agg):
    delta = agg.fields["delta"] / agg.participants
    m = p.beta1 * state.m + (1 - p.beta1) * delta
    v = p.beta2 * state.v + (1 - p.beta2) * delta ** 2
    return (ServerState(m, v, timing_report(agg)), x + p.eta * m / (np.sqrt(v) + p.eps),
            to_participants(agg, len(x), p.float_bits))


def flops(p: Params, s) -> fl.Work:
    """FedAvg's client; the server's Adam update (about 10 d)."""
    return sgd_flops(p.K, s, server=10.0 * s.d)
