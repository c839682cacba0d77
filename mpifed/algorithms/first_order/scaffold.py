"""SCAFFOLD: local steps corrected by control variates (Karimireddy et al., ICML 2020,
Algorithm 1, with full local gradients g_i = grad f_i).

Server state x, c; client state c_i (c^0 = c_i^0 = 0, so round 0 is a FedAvg round).
Round t, client i in S from y_i^0 = x^t, with the c it last received::

    y_i^{k+1} = y_i^k - eta_l (grad f_i(y_i^k) - c_i + c),     k = 0, ..., K-1
    c_i^+ = grad f_i(x^t)                                      option I   (eq. (4))
          = c_i - c + (x^t - y_i^K) / (K eta_l)                option II
    sends (Delta y_i, Delta c_i) = (y_i^K - x^t, c_i^+ - c_i), then c_i <- c_i^+   (2d floats)

Server::

    x^{t+1} = x^t + eta_g (1/|S|) sum_S Delta y_i,
    c^{t+1} = c^t + (|S|/N) (1/|S|) sum_S Delta c_i   (so c = (1/N) sum_i c_i throughout).

The server sends (x, c) to the round's clients. The driver broadcasts only x, so c^{t+1} goes
out in an extra exchange at the end of round t (a :class:`~.base.Query` whose point is c^{t+1};
the clients store it and answer with an empty uplink). Downlink: 2d floats to the next round's
tau participants, counted as the per-client mean tau/n * 2d.

One client (N = 1): c = c_1 after every round, the correction c - c_1 vanishes and a round is
K steps of gradient descent with step eta_l on f_1, scaled by eta_g: for eta_g = 1, x^t is
GD's iterate tK (both options; up to rounding in c - c_1).

No ``step_decay``: the control variates remove the client drift, so SCAFFOLD converges
linearly to x* at a constant step (Karimireddy et al. 2020, Theorem III).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from . import fedavg
from ..base import Query, Uplink, participation, to_participants
from .fedavg import _or, check_local, check_positive, local_gd, mean_over_participants, participants_uplink
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """eta_l, K: local step size and steps; eta_g: global step size; option: I or II for c_i^+."""

    eta_l: float
    K: int = fedavg.DEFAULT_K
    eta_g: float = 1.0
    option: int = 2
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    uses = ("step_size", "local_steps", "server_lr", "scaffold_option", "participation")

    def __post_init__(self):
        check_local(self)
        check_positive("server_lr eta_g", self.eta_g)
        if self.option not in (1, 2):
            raise ConfigError(f"scaffold_option = {self.option!r} is out of range; valid: 1 (grad f_i(x)) "
                              "or 2 (c_i - c + (x - y_i)/(K eta_l))")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        # Option II by default: the paper's cheaper choice (no extra gradient pass), used in its experiments.
        return cls(**fedavg.local_fields(opts, fed, decay=False), eta_g=_or(opts.server_lr, 1.0),
                   option=_or(opts.scaffold_option, 2))


@dataclass(frozen=True)
class ClientState:
    c_i: object  # (n, d) the clients' control variates
    c: object    # (d,) the server's control variate, as last received


@dataclass(frozen=True)
class ServerState:
    c: np.ndarray  # (d,)


def client_init(p: Params, block, x0, streams):
    xp = block.bk.xp
    return ClientState(xp.zeros((block.n, block.d)), xp.zeros(block.d)), None


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros_like(x0))


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    run = local_gd(block, x, p.K, p.eta_l, correction=state.c - state.c_i)
    if p.option == 1:
        c_new = run.grad
    else:
        c_new = state.c_i - state.c + (x - run.y) / (p.K * p.eta_l)
    active = participation(xp, streams)[1][:, None]
    c_i = xp.where(active, c_new, state.c_i)  # non-participants keep theirs
    uplink = participants_uplink(p, block, run, streams, {"dy": run.y - x, "dc": c_new - state.c_i})
    return ClientState(c_i, state.c), uplink


def server_step(p: Params, state: ServerState, x, agg):
    """x += eta_g mean_S Delta y_i; c += (1/N) sum_S Delta c_i; then send c^{t+1} (a Query)."""
    x_next = x + p.eta_g * mean_over_participants(agg, "dy")
    c = state.c + agg.mean("dc")
    return Query(c, (ServerState(c), x_next), to_participants(agg, len(x), p.float_bits))


def client_query(p: Params, block, state: ClientState, point, streams):
    """Store the new server control variate; nothing goes up."""
    zero = np.zeros(block.n)
    return ClientState(state.c_i, point), Uplink(block.bk.xp.zeros(block.n), None, zero, zero)


def server_resume(p: Params, state, x, agg):
    server, x_next = state
    return server, x_next, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """Local steps with the correction c - c_i (d each), two d-vectors sent; the server updates x and
    c (4d). The query that sends c^{t+1} costs the clients nothing but storing it."""
    return fedavg.local_flops(p.K, s, per_step=s.d, server=2.0 * s.d, floats=2)
