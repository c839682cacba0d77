"""FedCurv on a neural network (Shoham et al., arXiv:1910.07796, Sec. 3-4, as OpenFL implements it; the rule,
its bits and the handling of U and V are those of :mod:`mpifed.algorithms.first_order.fedcurv`): FedAvg's K local
mini-batch SGD steps (:mod:`~mpifed.algorithms.networks.fedavg`) on

    f_s(y) + lambda [y^T diag(U - u_s) y - 2 y^T (V - v_s)],   penalty gradient 2 lambda [(U - u_s) * y - (V - v_s)],

then the client's diagonal empirical Fisher at its end-of-round model theta_s, as OpenFL computes it: the mean over
the round's K mini-batches (batches 0..K-1 of its stream, re-evaluated at theta_s) of the squared mini-batch
gradient, u_s = mean_k (grad f_s(theta_s; xi^k))^2, v_s = u_s * theta_s. Sends Delta_s and the changes of u_s,
v_s (3P floats); the server keeps U = sum_j u_j, V = sum_j v_j (absent clients' terms stale) and sends x, U, V
(3P floats; U and V in two extra broadcasts with empty replies). The Fisher costs K more forward/backward passes
(reported as ``time_fisher``).

lambda (``curv_lambda``) = 0 is FedAvg bit for bit. Default 1 (the paper's grid is not known here; squared
mini-batch gradients are small, so a penalty the size of the loss needs lambda of order 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...network import flops as fl
from ..first_order import fedcurv
from ..first_order.fedcurv import ServerState, client_query, server_resume  # noqa: F401  (U, V broadcasts)
from .fedavg import Params as FedAvgParams
from .fedprox import local_sgd
from .local import COMMON_USES, Clock, common_fields, local_step, sgd_flops, start, timing_report, uplink
from .local import client_metrics  # noqa: F401
from ..first_order.fedavg import _or

DEFAULT_LAMBDA = 1.0


@dataclass(frozen=True)
class Params(FedAvgParams):
    """FedAvg's eta_l, K, eta_g, tau of n, decay c; lam_c: the penalty's importance lambda."""

    lam_c: float = DEFAULT_LAMBDA
    uses = COMMON_USES + ("server_lr", "curv_lambda")

    def __post_init__(self):
        super().__post_init__()
        fedcurv.check_lambda(self.lam_c)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed), eta_g=_or(opts.server_lr, 1.0), lam_c=_or(opts.curv_lambda, DEFAULT_LAMBDA))


def client_init(p: Params, block, x0, streams):
    return fedcurv.init_state(block), None


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros(len(x0)), np.zeros(len(x0)), {})


def fisher(p: Params, block, theta, streams, on):
    """mean_k (grad f_s(theta_s; xi_s^k))^2 over the round's K mini-batches, for the participants ``(|S|, P)``."""
    total = 0.0
    for k in range(p.K):
        X, lab = block.batch(streams, k, on)
        _, g, _ = block.loss_grad(theta, X, lab)
        total = total + g * g
    return total / p.K


def client_step(p: Params, block, state, x, streams):
    xp = block.bk.xp
    clock = Clock("fisher")
    first = start(block, x, streams, clock)
    idx = xp.asarray(first.on.nonzero()[0])
    y = local_sgd(p, block, x, streams, first, clock, local_step(p, streams), penalty=fedcurv.penalty(p.lam_c, state, idx))
    t0 = time.perf_counter()
    u = fisher(p, block, y, streams, first.on) if first.on.any() else xp.zeros_like(y)
    clock.add("fisher", t0)
    terms, state = fedcurv.new_terms(block, state, idx, y, u)
    return state, uplink(p, block, first, {"delta": y - x, **terms}, clock)


def server_step(p: Params, state: ServerState, x, agg):
    """x^{t+1} = x^t + eta_g mean_S Delta_s (FedAvg's); U, V updated and broadcast."""
    state.report = timing_report(agg)
    return fedcurv.down_queries(state, x + p.eta_g * agg.fields["delta"] / agg.participants, agg, p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """FedAvg's K local SGD steps (:func:`~mpifed.algorithms.networks.local.sgd_flops`) with the penalty gradient
    in each (:func:`~mpifed.algorithms.first_order.fedcurv.penalty_flops`); then the Fisher at theta_s, K more
    mini-batch gradients (:func:`~mpifed.network.flops.network_gradient`), each squared and summed (2 P), the mean
    (P); v_s = u_s * theta_s (P) and the changes du, dv (2 P). The server as on logistic regression
    (:func:`~mpifed.algorithms.first_order.fedcurv.server_flops`)."""
    once, per_step = fedcurv.penalty_flops(p, s)
    work = sgd_flops(p.K, s, per_step=per_step)
    fisher = p.K * (fl.network_gradient(s, ridge=False) + 2.0 * s.d) + s.d
    return fl.Work(work.step + once + fisher + 3.0 * s.d, fedcurv.server_flops(s))
