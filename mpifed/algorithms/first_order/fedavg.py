"""FedAvg: K local gradient steps on every participating client, then the mean of the moves
(McMahan et al., AISTATS 2017, Algorithm 1 "FederatedAveraging", with full local gradients in
place of minibatches, and the server step size eta_g of Reddi et al. 2021, Algorithm 1).

Round t, participants S (``streams.active``), client i in S from y_i^0 = x^t:

    y_i^{k+1} = y_i^k - eta_l grad f_i(y_i^k),   k = 0, ..., K-1
    sends Delta_i = y_i^K - x^t                                       (d floats)

Server:  ``x^{t+1} = x^t + eta_g (1/|S|) sum_{i in S} Delta_i``.

With the L1 term (``--l1`` lam1 > 0), the server applies the prox after aggregating,
``x^{t+1} = prox_{eta_g K eta_t lam1 ||.||_1}(x^t + eta_g mean_S Delta_i)``: the threshold of the round's
effective step eta_g K eta_t, so that K = 1, eta_g = 1 is proximal GD. One prox per round, at the server, with
smooth local steps (as FedCanon, Zhou et al. 2025, arXiv:2504.11903, decouples the prox from the local updates);
Yuan, Zaheer, Reddi (ICML 2021, "Federated Composite Optimization") instead take a prox in every local step
(FedMiD) and show that averaging those sparse local models loses the sparsity.

With K = 1 and eta_g = 1 this is gradient descent with step eta_l (full participation).
Clients outside S send nothing (0 bits) and keep their state. Downlink: x^{t+1} to the next
round's ``|S|`` = tau participants, counted as the per-client mean tau/n * d floats (as FedNL-PP).

This module also holds what every local-step first-order method shares (:mod:`~mpifed.algorithms.first_order.fedavgm`,
:mod:`~mpifed.algorithms.first_order.fedprox`, :mod:`~mpifed.algorithms.first_order.scaffold`,
:mod:`~mpifed.algorithms.first_order.fedadam`): the default local step, the batched local
loop :func:`local_gd`, the participants' uplink and the server's mean over S.

Default eta_l = 1 / max_i L_i with L_i = lam + c lambda_max(A_i^T A_i / m_i), c = 1/4 (1 on least squares) (+ mu for
FedProx's prox term): the largest step for which a full-gradient step is a descent step on
*every* local objective, so K local steps never diverge on any client. It is one step for all
clients, as the papers' eta_l is (client-specific steps would move the K = 1 fixed point away
from x*), so the max runs over the whole federation (an allgather at setup).

Decaying local steps (``step_decay`` = c > 0; FedAvg, FedAvgM, FedProx, FedAdam): round t uses

    eta_t = eta_l / (1 + c t),

the schedule of Li, Huang, Yang, Wang, Zhang (ICLR 2020, "On the convergence of FedAvg on
non-IID data"), Theorem 1: eta_t = beta / (t + gamma) = eta_0 / (1 + t / gamma), c = 1/gamma,
here per round (their t counts local steps; all K local steps of round t use eta_t). With a
constant eta_l FedAvg's fixed point is not x* when the f_i differ (their Sec. 3.3: a gap
Omega(eta_l (K - 1)) remains); the decaying step drives it to zero, at a sublinear rate.
t is the driver's round number (``streams.round``), the same on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import tri
from ...errors import ConfigError
from ...problems import l1
from ..base import Uplink, participation, to_participants
from ...network import flops as fl

DEFAULT_K = 5  # local steps when --local-steps is not given (K = 1 would be plain GD)


@dataclass(frozen=True)
class Params:
    """eta_l: local step size; K: local steps; eta_g: server step size; tau of n clients per round;
    decay: c in eta_t = eta_l / (1 + c t)."""

    eta_l: float
    K: int = DEFAULT_K
    eta_g: float = 1.0
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    lam1: float = 0.0
    uses = ("step_size", "local_steps", "server_lr", "participation", "step_decay")

    def __post_init__(self):
        check_local(self)
        check_positive("server_lr eta_g", self.eta_g)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(**local_fields(opts, fed), eta_g=_or(opts.server_lr, 1.0), lam1=opts.l1)


# ------------------------------------------------------------------ shared by the local-step methods
def _or(value, default):
    return default if value is None else value


def check_positive(name: str, value) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ConfigError(f"{name} = {value!r} is out of range; valid: {name.split()[-1]} > 0")


def check_local(p) -> None:
    """One-line errors for the fields every local-step method has: eta_l, K, tau of n (and the decay)."""
    check_positive("step_size eta_l", p.eta_l)
    decay = getattr(p, "decay", 0.0)
    if not (np.isfinite(decay) and decay >= 0):
        raise ConfigError(f"step_decay c = {decay!r} is out of range; valid: c >= 0 (0: constant steps)")
    if int(p.K) != p.K or p.K < 1:
        raise ConfigError(f"local_steps K = {p.K!r} is out of range; valid: an integer K >= 1")
    if not 1 <= p.tau <= p.n:
        raise ConfigError(f"participation tau = {p.tau!r} clients per round is out of range; "
                          f"valid: 1 <= tau <= n = {p.n}")


def local_fields(opts, fed, mu: float = 0.0, decay: bool = True) -> dict:
    """eta_l, K, tau, n, float_bits (and the step decay c, for the methods that have one) from
    the options; eta_l defaults to 1/(max_i L_i + mu)."""
    eta_l = opts.step_size if opts.step_size is not None else 1.0 / (max_smoothness(fed) + mu)
    out = {"eta_l": eta_l, "K": _or(opts.local_steps, DEFAULT_K), "tau": fed.tau or fed.n_clients,
           "n": fed.n_clients, "float_bits": opts.float_bits}
    return {**out, "decay": _or(opts.step_decay, 0.0)} if decay else out


def local_step(p, streams) -> float:
    """eta_t = eta_l / (1 + c t) in round t = ``streams.round`` (Li et al. 2020, Thm 1; c = 0: eta_l)."""
    return p.eta_l / (1.0 + getattr(p, "decay", 0.0) * streams.round)


def max_smoothness(fed) -> float:
    """max over all clients of L_i = lam + c lambda_max(A_i^T A_i / m_i), c = sup l'' (1/4 logistic, 1 least squares);
    collective: every rank calls it (Params.from_options runs on every rank)."""
    block = fed.block
    gram = np.asarray(block.bk.to_host(block.gram()))
    local = float(np.linalg.eigvalsh(tri.unpack(gram, block.d))[:, -1].max()) if block.n else 0.0
    return max(fed.comm.allgather(local)) * block.curvature_bound + block.lam


@dataclass(frozen=True)
class LocalRun:
    """f_i and grad f_i at the broadcast x (for the metrics, and SCAFFOLD's option I), and the
    local iterates y_i^K (n, d)."""

    loss: object
    grad: object
    y: object


def local_gd(block, x, K: int, eta_l: float, mu: float = 0.0, correction=None, penalty=None) -> LocalRun:
    """K batched local steps of every client of the block from the broadcast x:

        y_i^{k+1} = y_i^k - eta_l (grad f_i(y_i^k) + mu (y_i^k - x) + correction_i + penalty(y^k)_i)

    (FedAvg: mu = 0, no correction; FedProx: mu; SCAFFOLD: correction_i = c - c_i; FedCurv: the gradient of its
    Fisher penalty, a function of the iterates (n, d)).
    """
    xp = block.bk.xp
    y = xp.broadcast_to(x, (block.n, block.d))
    point = x  # k = 0 evaluates at the shared x, one sparse product for the whole block
    for k in range(K):
        loss, grad, _ = block.derivatives(point, hessian=False)
        if k == 0:
            first = (loss, grad)
        direction = grad if correction is None else grad + correction
        if mu:
            direction = direction + mu * (y - x)
        if penalty is not None:
            direction = direction + penalty(y)
        y = point = y - eta_l * direction
    return LocalRun(first[0], first[1], y)


def participants_uplink(p, block, run: LocalRun, streams, fields: dict) -> Uplink:
    """The round's uplink: participants send ``fields`` (d floats each per field); the others
    send zeros in the sums and 0 bits. loss and grad at x go to the metrics only."""
    xp = block.bk.xp
    active, on = participation(xp, streams)
    mask = on[:, None]
    sent = {name: xp.where(mask, value, 0.0) for name, value in fields.items()}
    values = np.where(active, len(fields) * block.d * p.float_bits, 0.0)
    return Uplink(run.loss, run.grad, values, np.zeros(block.n), sent)


def mean_over_participants(agg, name: str) -> np.ndarray:
    """``(1/|S|) sum_{i in S}`` of a field that only the participants filled."""
    return agg.fields[name] / agg.participants


# ------------------------------------------------------------------ FedAvg
def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return 0  # the round, for the prox's threshold eta_g K eta_t (eta_t decays with t)


def client_step(p: Params, block, state, x, streams):
    run = local_gd(block, x, p.K, local_step(p, streams))
    return state, participants_uplink(p, block, run, streams, {"delta": run.y - x})


def server_step(p: Params, t, x, agg):
    """x^{t+1} = prox_{eta_g K eta_t R}(x^t + eta_g mean_S Delta_i) (no prox when lam1 = 0)."""
    eta_t = p.eta_l / (1.0 + p.decay * t)
    x_next = l1.prox(x + p.eta_g * mean_over_participants(agg, "delta"), p.eta_g * p.K * eta_t, p.lam1)
    return t + 1, x_next, to_participants(agg, len(x), p.float_bits)


def local_flops(K: int, s, per_step: float = 0.0, server: float = 0.0, floats: int = 1) -> fl.Work:
    """K local gradient steps (the gradient and y - eta g, 2d, plus ``per_step``), sending ``floats`` d-vectors;
    the server sums them and takes its step (2d, plus ``server``). Shared by the local-step methods."""
    return fl.Work(K * (fl.loss_grad(s) + 2.0 * s.d + per_step) + s.d * floats,
                   fl.aggregate(s, floats * s.d) + 2.0 * s.d + server)


def flops(p: Params, s) -> fl.Work:
    """K local gradient steps and the move Delta_i (d); the server's mean and step, and its soft-threshold (3d,
    when lam1 > 0)."""
    return local_flops(p.K, s, server=fl.soft_threshold(s.d, p.lam1))
