"""FedAvgM on a neural network: FedAvg's clients (K local mini-batch SGD steps, :mod:`~mpifed.algorithms.networks.fedavg`) with
server momentum (Hsu, Qi and Brown 2019, "Measuring the effects of non-identical data distribution", Sec. 3; in
the server-step-size form of Reddi et al. 2021, as :mod:`~mpifed.algorithms.first_order.fedavgm`).

Round t, participants S, client i in S from y_i^0 = x^t, mini-batches xi_i^k (k = 0..K-1):

    y_i^{k+1} = y_i^k - eta_t grad f_i(y_i^k; xi_i^k),      eta_t = eta_l / (1 + c t)
    sends Delta_i = y_i^K - x^t                                (P floats)

Server::

    v^{t+1} = beta v^t + (1/|S|) sum_{i in S} Delta_i,   v^0 = 0,
    x^{t+1} = x^t + eta v^{t+1}.

With beta = 0 it is FedAvg with eta_g = eta. Defaults as :mod:`~mpifed.algorithms.first_order.fedavgm`: eta = 1, beta = 0.9.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..first_order import fedavgm
from ..base import to_participants
from ..first_order.fedavg import _or
from .fedavg import client_step  # noqa: F401  (FedAvg's clients)
from .local import COMMON_USES, client_init, client_metrics, common_fields, timing_report  # noqa: F401
from ...network import flops as fl
from .local import sgd_flops


@dataclass(frozen=True)
class Params(fedavgm.Params):
    """eta_l, K local steps, eta server step size, beta server momentum, tau of n clients, float bits, decay c
    (the checks of :class:`mpifed.algorithms.first_order.fedavgm.Params`)."""

    uses = COMMON_USES + ("server_lr", "momentum")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed), eta=_or(opts.server_lr, 1.0), beta=_or(opts.momentum, 0.9))


@dataclass(frozen=True)
class ServerState:
    v: np.ndarray                                # (P,) the momentum buffer
    report: dict = field(default_factory=dict)   # the clients' phase times, for the trace


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros_like(x0))


def server_step(p: Params, state: ServerState, x, agg):
    """v = beta v + mean_S Delta_i; x^{t+1} = x^t + eta v."""
    v = p.beta * state.v + agg.fields["delta"] / agg.participants
    return ServerState(v, timing_report(agg)), x + p.eta * v, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """FedAvg's client; the server's momentum (3d)."""
    return sgd_flops(p.K, s, server=3.0 * s.d)
