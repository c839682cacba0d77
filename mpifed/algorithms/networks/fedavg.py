"""FedAvg on a neural network: K local mini-batch SGD steps on every participating client, then the mean
of the moves (McMahan et al., AISTATS 2017, Algorithm 1 "FederatedAveraging", one mini-batch of b samples per
local step as in FedRCO's setup; server step eta_g of Reddi et al. 2021, Algorithm 1).

Round t, participants S, client i in S from y_i^0 = x^t, mini-batches xi_i^k (k = 0..K-1):

    y_i^{k+1} = y_i^k - eta_t grad f_i(y_i^k; xi_i^k),      eta_t = eta_l / (1 + c t)
    sends Delta_i = y_i^K - x^t                                (P floats)

Server:  ``x^{t+1} = x^t + eta_g (1/|S|) sum_{i in S} Delta_i``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .local import COMMON_USES, Clock, common_fields, local_step, start, timing_report, uplink
from .local import ServerState, client_init, client_metrics, server_init  # noqa: F401  (stateless clients)
from ..base import to_participants
from ..first_order.fedavg import _or, check_local, check_positive
from ...network import flops as fl
from .local import sgd_flops


@dataclass(frozen=True)
class Params:
    """eta_l, K local steps, eta_g, tau of n clients, float bits, decay c."""

    eta_l: float
    K: int
    eta_g: float = 1.0
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    uses = COMMON_USES + ("server_lr",)

    def __post_init__(self):
        check_local(self)
        check_positive("server_lr eta_g", self.eta_g)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed), eta_g=_or(opts.server_lr, 1.0))


def client_step(p, block, state, x, streams):
    clock = Clock()
    first = start(block, x, streams, clock)
    on = first.on
    eta = local_step(p, streams)
    y = x - eta * first.grad[on]
    t0 = time.perf_counter()
    for k in range(1, p.K if on.any() else 1):
        X, lab = block.batch(streams, k, on)
        _, g, _ = block.loss_grad(y, X, lab)
        y = y - eta * g
    clock.add("forward_backward", t0)
    return state, uplink(p, block, first, {"delta": y - x}, clock)


def server_step(p, state, x, agg):
    """x^{t+1} = x^t + eta_g mean_S Delta_i."""
    state.report = timing_report(agg)
    return state, x + p.eta_g * agg.fields["delta"] / agg.participants, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """K local SGD steps; the server averages."""
    return sgd_flops(p.K, s)
