"""Federated extragradient (Korpelevich 1976), the deterministic baseline of the monotone-inclusion methods:

    z^{k+1/2} = z^k - gamma A(z^k),      z^{k+1} = z^k - gamma A(z^{k+1/2}),      A = (1/n) sum_i A_i.

Two exchanges per round, each with every client: z^k down and A_i(z^k) up, then z^{k+1/2} down and A_i(z^{k+1/2})
up (d floats each way, each time). gamma < 1/L with L = ||M_bar||, the Lipschitz constant of A; the default is
1/(2L). It converges linearly to z* under strong monotonicity.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...network import flops as fl
from ..base import Query
from .common import metrics_uplink, operator_flops


@dataclass(frozen=True)
class Params:
    """gamma: the step (``--step-size``)."""

    gamma: float
    float_bits: int = 32
    uses = ("step_size",)
    problems = ("saddle",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        gamma = opts.step_size if opts.step_size is not None else 0.5 / fed.block.lipschitz()
        return cls(gamma, opts.float_bits)


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return None


def client_step(p: Params, block, state, x, streams):
    return state, metrics_uplink(block, x, p.float_bits, sent=True)


def client_query(p: Params, block, state, point, streams):
    return state, metrics_uplink(block, point, p.float_bits, sent=True)


def server_step(p: Params, state, x, agg):
    """Broadcast the extrapolated point z^{k+1/2} (the round's second exchange)."""
    return Query(x - p.gamma * agg.grad / agg.n, state, len(x) * p.float_bits)


def server_resume(p: Params, state, x, agg):
    return state, x - p.gamma * agg.grad / agg.n, len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Each of the round's two exchanges: every client A_i at the broadcast point (2 d^2,
    :func:`.common.operator_flops`; the metric L_i(z^k) that rides along is not counted), the server the sum and
    z^k - (gamma/n) sum (2d)."""
    server = fl.aggregate(s, s.d) + 2.0 * s.d
    return fl.Work(fl.per_client(operator_flops(s), s), server, query=operator_flops(s), query_server=server)
