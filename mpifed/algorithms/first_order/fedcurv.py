"""FedCurv on logistic regression: FedAvg whose clients add a diagonal-Fisher penalty that keeps them near what
the other clients learned (Shoham, Avidor, Keren, Israel, Benditkis, Mor-Yosef, Zeitak, "Overcoming forgetting
in federated learning on non-IID data", arXiv:1910.07796, Sec. 3-4; the paper's text was not read: the rule
follows OpenFL's implementation, ``openfl/utilities/fedcurv/torch/fedcurv.py``, as transcribed in the project's
source sheet, section A5). :mod:`mpifed.algorithms.networks.fedcurv` is the network version.

Round t, participants S, client s in S from y^0 = x^t, K local gradient steps (as
:mod:`~mpifed.algorithms.first_order.fedavg`) on

    f_s(y) + lambda sum_{j != s} (y - theta_j)^T diag(u_j) (y - theta_j)
      = f_s(y) + lambda [y^T diag(U - u_s) y - 2 y^T (V - v_s)] + const,

whose penalty gradient is 2 lambda [(U - u_s) * y - (V - v_s)]. Here u_j is the diagonal empirical Fisher of
client j at its own end-of-round model theta_j (:meth:`~mpifed.problems.logistic.LogisticBlock.fisher_diagonals`:
(1/m_j) sum of the squared per-row gradients of its data term, the full-batch counterpart of OpenFL's mean of
squared mini-batch gradients), v_j = u_j * theta_j, and U = sum_j u_j, V = sum_j v_j (plain sums).

After its K steps client s computes u_s, v_s at theta_s = y^K and sends Delta_s = theta_s - x^t and the changes of
u_s and v_s (3d floats); the server steps x^{t+1} = x^t + eta_g mean_S Delta_s (FedAvg's) and adds the changes to
U and V, so the terms of absent clients stay as they last sent them (partial participation keeps stale u_j, v_j).
Downlink: x^{t+1}, U and V (3d floats). The driver broadcasts one d-vector at a time, so U and V go down in two
broadcasts after the round's reduce whose replies are empty: the bits are the paper's one 3d message, and the
trace's ``exchanges`` column counts three round-trips per round.

lambda (``curv_lambda``, the paper's "importance") = 0 is FedAvg, bit for bit (the penalty is not evaluated);
round 0 has U = V = 0, so it is FedAvg too. Default 0.01 (the paper's grid is not known; U sums n Fisher
diagonals, so the penalty's curvature 2 lambda U grows with n: on a9a's 80 clients lambda = 0.01 keeps it below the
local step's 1/eta_l).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...errors import ConfigError
from ...network import flops as fl
from ..base import Query, Uplink, participation, to_participants
from . import fedavg
from .fedavg import _or, local_fields, local_gd, local_step, mean_over_participants, participants_uplink

DEFAULT_LAMBDA = 0.01


@dataclass(frozen=True)
class Params(fedavg.Params):
    """FedAvg's eta_l, K, eta_g, tau of n, decay c; lam_c: the penalty's importance lambda."""

    lam_c: float = DEFAULT_LAMBDA
    uses = fedavg.Params.uses + ("curv_lambda",)

    def __post_init__(self):
        super().__post_init__()
        check_lambda(self.lam_c)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**local_fields(opts, fed), eta_g=_or(opts.server_lr, 1.0), lam_c=_or(opts.curv_lambda, DEFAULT_LAMBDA))


def check_lambda(lam_c) -> None:
    if not (np.isfinite(lam_c) and lam_c >= 0):
        raise ConfigError(f"curv_lambda = {lam_c!r} is out of range; valid: lambda >= 0 (0: FedAvg)")


# ------------------------------------------------------------------ shared with the network version
@dataclass(frozen=True)
class ClientState:
    """u, v (n, d): each client's last Fisher diagonal and u * theta; U, V (d,): the sums the server sent last;
    ``expecting``: which of U, V the next broadcast of the round carries (None between rounds)."""

    u: object
    v: object
    U: object
    V: object
    expecting: str | None = None


@dataclass
class ServerState:
    U: np.ndarray
    V: np.ndarray
    report: dict


def init_state(block) -> ClientState:
    xp = block.bk.xp
    zero = xp.zeros((block.n, block.d))
    return ClientState(zero, zero.copy(), xp.zeros(block.d), xp.zeros(block.d))


def penalty(lam_c: float, state: ClientState, on=slice(None)):
    """y -> 2 lambda [(U - u_s) * y - (V - v_s)] of the clients ``on``; None when lambda = 0 (FedAvg's loop)."""
    if not lam_c:
        return None
    A, B = state.U - state.u[on], state.V - state.v[on]
    return lambda y: 2.0 * lam_c * (A * y - B)


def new_terms(block, state: ClientState, idx, theta, u_new):
    """(the Fisher-term changes {du, dv} of the participants ``idx`` ``(|S|, d)``, the clients' state after the round):
    u_s, v_s of the participants become u_new, u_new * theta (both ``(|S|, d)``); the others keep theirs."""
    u, v = state.u.copy(), state.v.copy()
    u[idx], v[idx] = u_new, u_new * theta
    return {"du": u[idx] - state.u[idx], "dv": v[idx] - state.v[idx]}, replace(state, u=u, v=v, expecting="U")


def down_queries(state: ServerState, x_next, agg, float_bits: int):
    """After the round's reduce: U += sum du, V += sum dv, then the broadcasts of U and of V."""
    U, V = state.U + agg.fields["du"], state.V + agg.fields["dv"]
    bits = to_participants(agg, len(x_next), float_bits)
    return Query(U, ("V", ServerState(U, V, state.report), x_next, bits), bits)


def client_query(p, block, state: ClientState, point, streams):
    """Store the broadcast U or V; nothing goes up."""
    state = replace(state, U=point, expecting="V") if state.expecting == "U" else replace(state, V=point, expecting=None)
    zero = np.zeros(block.n)
    return state, Uplink(block.bk.xp.zeros(block.n), None, zero, zero)


def server_resume(p, pending, x, agg):
    what, state, x_next, bits = pending
    if what == "V":
        return Query(state.V, ("x", state, x_next, bits), bits)
    return state, x_next, bits


# ------------------------------------------------------------------ logistic regression
def client_init(p: Params, block, x0, streams):
    return init_state(block), None


def server_init(p: Params, agg, x0):
    return ServerState(np.zeros(len(x0)), np.zeros(len(x0)), {})


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    run = local_gd(block, x, p.K, local_step(p, streams), penalty=penalty(p.lam_c, state))
    on = participation(xp, streams)[1]
    idx = xp.flatnonzero(on)
    terms, state = new_terms(block, state, idx, run.y[idx], block.fisher_diagonals(run.y)[idx])
    full = {}
    for name, rows in terms.items():  # back to (n, d) rows, zeros for the absent clients (participants_uplink's layout)
        full[name] = xp.zeros((block.n, block.d))
        full[name][idx] = rows
    return state, participants_uplink(p, block, run, streams, {"delta": run.y - x, **full})


def server_step(p: Params, state: ServerState, x, agg):
    """x^{t+1} = x^t + eta_g mean_S Delta_s; U, V updated and broadcast."""
    return down_queries(state, x + p.eta_g * mean_over_participants(agg, "delta"), agg, p.float_bits)


def penalty_flops(p, s) -> tuple[float, float]:
    """(once per round, per local step) of the penalty gradient 2 lambda [(U - u_s) * y - (V - v_s)]: U - u_s and
    V - v_s once (2 d); per step the product, the difference, the factor 2 lambda and the sum into the step's
    direction (4 d). None of it when lambda = 0 (FedAvg's loop)."""
    return (2.0 * s.d, 4.0 * s.d) if p.lam_c else (0.0, 0.0)


def server_flops(s) -> float:
    """The server's sums of Delta_s, du, dv (3d floats each), FedAvg's step (2 d), U += sum du and V += sum dv
    (2 d). The U and V broadcasts' empty replies cost the clients nothing (storing a vector is no arithmetic)."""
    return fl.aggregate(s, 3 * s.d) + 2.0 * s.d + 2.0 * s.d


def flops(p: Params, s) -> fl.Work:
    """FedAvg's K local gradient steps (:func:`.fedavg.local_flops`) with the penalty gradient in each
    (:func:`penalty_flops`); then the Fisher diagonal at theta_s: the margins (2 nnz), l' per row (E m), its
    square (m) and the squared rows (:func:`~mpifed.network.flops.squared_rows`); v_s = u_s * theta_s (d) and the
    changes du, dv (2 d); Delta_s, du, dv go up (``local_flops``' d per sent vector counts Delta_s's move)."""
    once, per_step = penalty_flops(p, s)
    fisher = 2.0 * s.nnz + fl.ELEMENTARY * s.m + s.m + fl.squared_rows(s)
    work = fedavg.local_flops(p.K, s, per_step=per_step)
    return fl.Work(work.step + once + fisher + 3.0 * s.d, server_flops(s))
