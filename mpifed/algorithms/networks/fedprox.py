"""FedProx on a neural network: FedAvg whose clients take K mini-batch SGD steps on a proximal local objective
(Li et al., MLSys 2020, Algorithm 2, with a fixed amount of local work in place of the paper's gamma-inexactness;
as :mod:`~mpifed.algorithms.first_order.fedprox`, with one mini-batch of b samples per local step).

Round t, participants S, client i in S from y_i^0 = x^t, on h_i(y) = f_i(y) + mu/2 ||y - x^t||^2:

    y_i^{k+1} = y_i^k - eta_t (grad f_i(y_i^k; xi_i^k) + mu (y_i^k - x^t)),   eta_t = eta_l / (1 + c t)
    sends Delta_i = y_i^K - x^t                                                 (P floats)

Server: ``x^{t+1} = (1/|S|) sum_{i in S} y_i^K = x^t + mean_S Delta_i`` (no server step size in the paper).
With mu = 0 it is FedAvg with eta_g = 1. Default mu = 0.01 as :mod:`~mpifed.algorithms.first_order.fedprox` (the paper's grid
{0.001, 0.01, 0.1, 1}).

:func:`local_sgd` is the corrected local loop that :mod:`~mpifed.algorithms.networks.scaffold` shares.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..first_order import fedprox
from ..base import to_participants
from ..first_order.fedavg import _or
from .local import COMMON_USES, Clock, common_fields, local_step, start, timing_report, uplink
from .local import ServerState, client_init, client_metrics, server_init  # noqa: F401  (stateless clients)
from ...network import flops as fl
from .local import sgd_flops


@dataclass(frozen=True)
class Params(fedprox.Params):
    """eta_l, K local steps, mu proximal weight, tau of n clients, float bits, decay c (the checks of
    :class:`mpifed.algorithms.first_order.fedprox.Params`)."""

    uses = COMMON_USES + ("prox_mu",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed), mu=_or(opts.prox_mu, fedprox.DEFAULT_MU))


def local_sgd(p, block, x, streams, first, clock: Clock, eta: float, mu: float = 0.0, correction=None, penalty=None):
    """The participants' K local steps from x, step k on mini-batch k (step 0 reuses ``first``'s gradient):

        y^{k+1} = y^k - eta (grad f_i(y^k; xi_i^k) + mu (y^k - x) + correction_i + penalty(y^k)_i)

    ``correction`` ``(|S|, P)`` or None; ``penalty``: the gradient of a penalty of the iterates (FedCurv), or None.
    Returns y^K ``(|S|, P)``."""
    on = first.on
    g = first.grad[on]
    direction = g if correction is None else g + correction  # y^0 = x: no prox term
    if penalty is not None:
        direction = direction + penalty(block.bk.xp.broadcast_to(x, g.shape))
    y = x - eta * direction
    t0 = time.perf_counter()
    for k in range(1, p.K if on.any() else 1):
        X, lab = block.batch(streams, k, on)
        _, g, _ = block.loss_grad(y, X, lab)
        direction = g if correction is None else g + correction
        if mu:
            direction = direction + mu * (y - x)
        if penalty is not None:
            direction = direction + penalty(y)
        y = y - eta * direction
    clock.add("forward_backward", t0)
    return y


def client_step(p, block, state, x, streams):
    clock = Clock()
    first = start(block, x, streams, clock)
    y = local_sgd(p, block, x, streams, first, clock, local_step(p, streams), mu=p.mu)
    return state, uplink(p, block, first, {"delta": y - x}, clock)


def server_step(p, state, x, agg):
    """x^{t+1} = mean_S y_i^K = x^t + mean_S Delta_i."""
    return (ServerState(timing_report(agg)), x + agg.fields["delta"] / agg.participants,
            to_participants(agg, len(x), p.float_bits))


def flops(p: Params, s) -> fl.Work:
    """FedAvg plus the proximal term (3d) in every local step."""
    return sgd_flops(p.K, s, per_step=3.0 * s.d)
