"""FedAdam: FedAvg's clients with Adam on the server (Reddi et al., ICLR 2021, "Adaptive
federated optimization", Algorithm 2, FedAdam variant).

Clients run FedAvg's K local gradient steps (:func:`.fedavg.local_gd`) and send
Delta_i = y_i^K - x^t (d floats); -Delta_i is the pseudo-gradient. Server, over S::

    Delta^t = (1/|S|) sum_{i in S} Delta_i
    m^t = beta1 m^{t-1} + (1 - beta1) Delta^t                   m^{-1} = 0
    v^t = beta2 v^{t-1} + (1 - beta2) (Delta^t)^2               v^{-1} = tau^2
    x^{t+1} = x^t + eta m^t / (sqrt(v^t) + tau)                 (coordinate-wise)

As in the paper's Algorithm 2 there is no bias correction, and v^{-1} = tau^2 is the smallest
start it allows (v^{-1} >= tau^2). Defaults: beta1 = 0.9, beta2 = 0.99, tau = 1e-3 (the
paper's experiments); eta = 0.1 (its grid is 10^{-3} ... 10^{1}; tuned on a9a, see the tests).

Decaying local steps: ``step_decay`` = c gives eta_t = eta_l / (1 + c t) in round t (Li, Huang,
Yang, Wang, Zhang, ICLR 2020, Theorem 1's eta_t = beta/(t + gamma); see :mod:`~mpifed.algorithms.first_order.fedavg`).
Only the clients' step decays (the server's eta is kept): the client drift's share of Delta^t
is O(eta_t), so the fixed point of the server's update moves to x* as eta_t -> 0.
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
    """eta_l, K: local step size and steps; eta: server step size; beta1, beta2, tau: Adam's."""

    eta_l: float
    K: int = fedavg.DEFAULT_K
    eta: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3  # the paper's tau (the adaptivity), renamed: tau counts participants here
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    uses = ("step_size", "local_steps", "server_lr", "beta1", "beta2", "adam_eps", "participation", "step_decay")

    def __post_init__(self):
        check_local(self)
        check_positive("server_lr eta", self.eta)
        check_positive("adam_eps tau", self.eps)
        for name, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= beta < 1:
                raise ConfigError(f"{name} = {beta!r} is out of range; valid: 0 <= {name} < 1")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**fedavg.local_fields(opts, fed), eta=_or(opts.server_lr, 0.1),
                   beta1=_or(opts.beta1, 0.9), beta2=_or(opts.beta2, 0.99), eps=_or(opts.adam_eps, 1e-3))


@dataclass(frozen=True)
class ServerState:
    m: np.ndarray  # (d,) first moment of the server update Delta^t
    v: np.ndarray  # (d,) second moment


client_init = fedavg.client_init
client_step = fedavg.client_step


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros_like(x0), np.full_like(x0, p.eps ** 2))


def server_step(p: Params, state: ServerState, x, agg):
    delta = mean_over_participants(agg, "delta")
    m = p.beta1 * state.m + (1 - p.beta1) * delta
    v = p.beta2 * state.v + (1 - p.beta2) * delta ** 2
    return ServerState(m, v), x + p.eta * m / (np.sqrt(v) + p.eps), to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """FedAvg's client; the server's Adam moments, square root and division (about 10 d)."""
    return fedavg.local_flops(p.K, s, server=10.0 * s.d)
