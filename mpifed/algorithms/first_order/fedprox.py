"""FedProx: FedAvg whose clients minimise a proximal local objective (Li et al., MLSys 2020,
Algorithm 2), here with K full-gradient steps as the local solver (a fixed amount of local
work rather than the paper's gamma-inexactness).

Round t, client i in S from y_i^0 = x^t, on h_i(y) = f_i(y) + mu/2 ||y - x^t||^2:

    y_i^{k+1} = y_i^k - eta_l (grad f_i(y_i^k) + mu (y_i^k - x^t)),   k = 0, ..., K-1
    sends Delta_i = y_i^K - x^t                                        (d floats)

Server: ``x^{t+1} = (1/|S|) sum_{i in S} y_i^K``, computed as x^t + mean_S Delta_i (no server step
size in the paper). With mu = 0 it is FedAvg with eta_g = 1. Default eta_l = 1/(max_i L_i + mu),
the smoothness of the local objectives h_i; default mu = 0.01 (one of the paper's grid
{0.001, 0.01, 0.1, 1}).

Decaying local steps: ``step_decay`` = c gives eta_t = eta_l / (1 + c t) in round t (Li, Huang,
Yang, Wang, Zhang, ICLR 2020, Theorem 1's eta_t = beta/(t + gamma); see :mod:`~mpifed.algorithms.first_order.fedavg`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from . import fedavg
from ..base import to_participants
from .fedavg import _or, check_local, local_gd, local_step, mean_over_participants, participants_uplink
from ...network import flops as fl

DEFAULT_MU = 0.01


@dataclass(frozen=True)
class Params:
    """eta_l, K: local step size and steps; mu: the proximal weight."""

    eta_l: float
    K: int = fedavg.DEFAULT_K
    mu: float = DEFAULT_MU
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    uses = ("step_size", "local_steps", "prox_mu", "participation", "step_decay")

    def __post_init__(self):
        check_local(self)
        if not self.mu >= 0:
            raise ConfigError(f"prox_mu mu = {self.mu!r} is out of range; valid: mu >= 0")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        mu = _or(opts.prox_mu, DEFAULT_MU)
        if not mu >= 0:  # before the default step reads it
            raise ConfigError(f"prox_mu mu = {mu!r} is out of range; valid: mu >= 0")
        return cls(**fedavg.local_fields(opts, fed, mu), mu=mu)


client_init = fedavg.client_init
server_init = fedavg.server_init


def client_step(p: Params, block, state, x, streams):
    run = local_gd(block, x, p.K, local_step(p, streams), mu=p.mu)
    return state, participants_uplink(p, block, run, streams, {"delta": run.y - x})


def server_step(p: Params, state, x, agg):
    """x^{t+1} = mean_S y_i^K = x^t + mean_S Delta_i."""
    return state, x + mean_over_participants(agg, "delta"), to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """FedAvg's client plus the proximal term mu (y - x) in every local step (3d)."""
    return fedavg.local_flops(p.K, s, per_step=3.0 * s.d)
