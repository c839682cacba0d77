"""SCAFFOLD on a neural network: local mini-batch SGD steps corrected by control variates (Karimireddy et al.,
ICML 2020, Algorithm 1, with stochastic gradients g_i on one mini-batch of b samples per local step; as
:mod:`~mpifed.algorithms.first_order.scaffold`).

Server state x, c; client state c_i (c^0 = c_i^0 = 0, so round 0 is a FedAvg round). Round t, participants S,
client i in S from y_i^0 = x^t, mini-batches xi_i^k (k = 0..K-1), with the c it last received::

    y_i^{k+1} = y_i^k - eta_l (grad f_i(y_i^k; xi_i^k) - c_i + c)
    c_i^+ = grad f_i(x^t; xi_i^c)                                option I   (eq. (4))
          = c_i - c + (x^t - y_i^K) / (K eta_l)                 option II  (default, as in first_order.scaffold)
    sends (Delta y_i, Delta c_i) = (y_i^K - x^t, c_i^+ - c_i), then c_i <- c_i^+       (2P floats)

Option I's xi_i^c is a fresh mini-batch of b samples at x^t (the paper: "an additional pass over the local
data"), drawn from the client's own stream (seed, ``batchcontrol``, client, t) (``block.batch(streams,
"control", S)``), independent of the K local batches ``batch0`` ... ``batch<K-1>``.

Server::

    x^{t+1} = x^t + eta_g (1/|S|) sum_S Delta y_i,
    c^{t+1} = c^t + (1/N) sum_S Delta c_i          (so c = (1/N) sum_i c_i throughout).

c^{t+1} goes to the clients in an extra exchange at the end of the round (a :class:`~mpifed.algorithms.base.Query`, as
:mod:`~mpifed.algorithms.first_order.scaffold`). Downlink: 2P floats to the next round's participants. No
``step_decay`` (as the logistic version).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..first_order import scaffold
from ..base import Query, to_participants
from ..first_order.fedavg import _or
from .fedprox import local_sgd
from .local import Clock, client_metrics, common_fields, start, timing_report, uplink  # noqa: F401
from ..first_order.scaffold import ClientState, client_init, client_query  # noqa: F401  (c_i (n, P) and c (P,))
from ...network import flops as fl
from .local import sgd_flops


@dataclass(frozen=True)
class Params(scaffold.Params):
    """eta_l, K local steps, eta_g server step size, option I or II for c_i^+, tau of n clients, float bits
    (the checks of :class:`mpifed.algorithms.first_order.scaffold.Params`)."""

    uses = ("step_size", "local_steps", "participation", "batch_size", "server_lr", "scaffold_option")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        fields = common_fields(opts, fed)
        fields.pop("decay")
        return cls(**fields, eta_g=_or(opts.server_lr, 1.0), option=_or(opts.scaffold_option, 2))


@dataclass(frozen=True)
class ServerState:
    c: np.ndarray                                # (P,)
    report: dict = field(default_factory=dict)   # the clients' phase times, for the trace


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros_like(x0))


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    clock = Clock()
    first = start(block, x, streams, clock)
    on = first.on
    idx = xp.asarray(np.flatnonzero(on))
    c_i = state.c_i[idx]
    # c and c_i are kept in float64 (the server's c comes as a query point); the steps run in x's dtype
    y = local_sgd(p, block, x, streams, first, clock, p.eta_l, correction=(state.c - c_i).astype(x.dtype, copy=False))
    if p.option == 2:
        c_new = c_i - state.c + (x - y) / (p.K * p.eta_l)
    elif on.any():  # option I: a fresh mini-batch gradient at x
        t0 = time.perf_counter()
        X, lab = block.batch(streams, "control", on)
        c_new = block.loss_grad(xp.broadcast_to(x, y.shape), X, lab)[1]
        clock.add("forward_backward", t0)
    else:
        c_new = c_i  # (0, P): nobody takes part
    c_all = state.c_i.copy()
    c_all[idx] = c_new  # non-participants keep theirs
    return ClientState(c_all, state.c), uplink(p, block, first, {"dy": y - x, "dc": c_new - c_i}, clock)


def server_step(p: Params, state: ServerState, x, agg):
    """x += eta_g mean_S Delta y_i; c += (1/N) sum_S Delta c_i; then send c^{t+1} (a Query)."""
    x_next = x + p.eta_g * agg.fields["dy"] / agg.participants
    c = state.c + agg.mean("dc")
    return Query(c, (ServerState(c, timing_report(agg)), x_next), to_participants(agg, len(x), p.float_bits))


def server_resume(p: Params, state, x, agg):
    server, x_next = state
    return server, x_next, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """Local steps with the correction (d each), two parameter vectors sent; the server updates x and c."""
    return sgd_flops(p.K, s, per_step=s.d, server=2.0 * s.d, floats=2)
