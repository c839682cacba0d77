"""LocalNewton with FOOF on a neural network (Gupta et al. 2021, "LocalNewton"; FOOF preconditioner as in
FedPM's Test 2, Ishii et al., eq. 11): K local preconditioned steps per participating client, then the plain
mean of the local models on the server ("simple mixing", FedPM eq. 5).

Round t, client i in S from theta_i^{(t,0)} = theta^t, per layer l and local step k on mini-batch xi_i^k:

    theta_{i,l}^{(t,k+1)} = theta_{i,l}^{(t,k)} - eta vec((A_{i,l}^{(t,k)} + eps I)^{-1} vec^{-1}(g_{i,l}^{(t,k)}))   (eq. 11)

with A_{i,l} the uncentered covariance of the layer's inputs on the batch (conv: of the unfolded patches) and the
damping eps of the papers' experiments (FedPM Test 2 tunes it; FedRCO App. E.3: 0.03). Sends theta_i^{(t,K)}
(P floats). Server: ``theta^{t+1} = (1/|S|) sum_{i in S} theta_i^{(t,K)}``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ...problems.nn.curvature import check_eps
from ...problems.nn.factors import foof_step
from ..base import to_participants
from ..first_order.fedavg import _or, check_local
from .local import COMMON_USES, FOOF_STEP, Clock, common_fields, local_step, start, timing_report, uplink
from .local import ServerState, client_init, client_metrics, server_init  # noqa: F401  (stateless clients)
from ...network import flops as fl
from .local import foof_flops

DEFAULT_DAMPING = 0.03  # FedRCO App. E.3, "damping eps = 0.03 for all second-order methods"


@dataclass(frozen=True)
class Params:
    """eta_l, K local steps, eps FOOF damping, tau of n clients, float bits, decay c."""

    eta_l: float
    K: int
    eps: float = DEFAULT_DAMPING
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    uses = COMMON_USES + ("damping",)

    def __post_init__(self):
        check_local(self)
        check_eps(self.eps)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**common_fields(opts, fed, FOOF_STEP), eps=_or(opts.damping, DEFAULT_DAMPING))


def local_foof(p, block, x, streams, first, clock, keep_last=False):
    """The participants' K FOOF steps from x; returns (theta ``(|S|, P)``, the last step's layer stats or None)."""
    xp, on, model = block.bk.xp, first.on, block.model
    eta = local_step(p, streams)
    theta, stats = xp.broadcast_to(x, (int(on.sum()), block.d)), None
    for k in range(p.K if on.any() else 0):
        t0 = time.perf_counter()
        X, lab = block.batch(streams, k, on)
        _, g, stats = block.loss_grad(theta, X, lab, stats=True)
        t0 = clock.add("forward_backward", t0)
        step = foof_step(model, g, stats, p.eps, xp)
        clock.add("curvature", t0)
        theta = theta - eta * step
    return theta, stats


def client_step(p, block, state, x, streams):
    clock = Clock("curvature")
    first = start(block, x, streams, clock)
    theta, _ = local_foof(p, block, x, streams, first, clock)
    return state, uplink(p, block, first, {"theta": theta}, clock)


def server_step(p, state, x, agg):
    """Simple mixing: theta^{t+1} = mean_S theta_i^{(t,K)}."""
    state.report = timing_report(agg)
    return state, agg.fields["theta"] / agg.participants, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """K local FOOF steps (:func:`.local.foof_flops`); the server averages the models."""
    return fl.Work(fl.per_client(foof_flops(p.K, s) + s.d, s), fl.aggregate(s, s.d) + s.d)
