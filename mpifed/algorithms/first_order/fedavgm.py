"""FedAvgM: FedAvg with server momentum (Hsu, Qi and Brown 2019, "Measuring the effects of
non-identical data distribution", Sec. 3; in the server-step-size form of Reddi et al. 2021).

Clients run FedAvg's K local gradient steps (:func:`.fedavg.local_gd`) and send
Delta_i = y_i^K - x^t (d floats); the server, over the round's participants S::

    v^{t+1} = beta v^t + (1/|S|) sum_{i in S} Delta_i,      v^0 = 0,
    x^{t+1} = x^t + eta v^{t+1}.

Hsu et al. write v <- beta v + Delta w, w <- w - v with Delta w = x - mean(y_i) and no server
step size (eta = 1, the default here). With beta = 0 this is FedAvg with eta_g = eta.

Decaying local steps: ``step_decay`` = c gives eta_t = eta_l / (1 + c t) in round t (Li, Huang,
Yang, Wang, Zhang, ICLR 2020, Theorem 1's eta_t = beta/(t + gamma); see :mod:`~mpifed.algorithms.first_order.fedavg`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from . import fedavg
from ..base import to_participants
from .fedavg import _or, check_local, check_positive, mean_over_participants
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """eta_l, K: local step size and steps; eta: server step size; beta: server momentum."""

    eta_l: float
    K: int = fedavg.DEFAULT_K
    eta: float = 1.0
    beta: float = 0.9
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    uses = ("step_size", "local_steps", "server_lr", "momentum", "participation", "step_decay")

    def __post_init__(self):
        check_local(self)
        check_positive("server_lr eta", self.eta)
        if not 0 <= self.beta < 1:
            raise ConfigError(f"momentum beta = {self.beta!r} is out of range; valid: 0 <= beta < 1")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**fedavg.local_fields(opts, fed), eta=_or(opts.server_lr, 1.0), beta=_or(opts.momentum, 0.9))


@dataclass(frozen=True)
class ServerState:
    v: np.ndarray  # (d,) the momentum buffer


client_init = fedavg.client_init
client_step = fedavg.client_step


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros_like(x0))


def server_step(p: Params, state: ServerState, x, agg):
    v = p.beta * state.v + mean_over_participants(agg, "delta")
    return ServerState(v), x + p.eta * v, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """FedAvg's client; the server's momentum buffer adds 3d."""
    return fedavg.local_flops(p.K, s, server=3.0 * s.d)
