"""FedNL-LS: FedNL with a backtracking line search (Safaryan, Islamov, Qian, Richtarik, ICML
2022, Algorithm 3 "FedNL-LS"; the rules follow FedNL_LS in the authors' public numpy code, FedNL-Public,
which is the reference here rather than the paper's text; where the two could differ the choice is said).

Clients learn their Hessians exactly as in FedNL (:func:`mpifed.algorithms.second_order.fednl.client_step`:
S_i = C(grad^2 f_i(x^k) - H_i^k), H_i^{k+1} = H_i^k + alpha S_i) and send f_i(x^k),
grad f_i(x^k) and S_i (and l_i under Option 2). The server takes the direction

    d^k = -[H^k]_mu^{-1} grad f(x^k)                 (the paper's; Option 1, the default)
    d^k = -(H^k + l^k I)^{-1} grad f(x^k)            (Option 2, offered as in FedNL)

with H^k the mean *before* this round's update, finds the smallest s >= 0 with

    f(x^k + gamma^s d^k) <= f(x^k) + c gamma^s <grad f(x^k), d^k>,   c in (0, 1/2], gamma in (0, 1),

and steps x^{k+1} = x^k + gamma^s d^k; then H^{k+1} = H^k + alpha mean(S_i).
c = gamma = 1/2 by default, as in the authors' code. At most ``max_backtracks`` reductions
(gamma^s would otherwise underflow into a step that changes nothing); past that the run fails
with a message instead of looping.

Numerical safeguard (not in the paper): when the required decrease ``c |<grad f(x^k), d^k>|`` is
below ``RESOLUTION |f(x^k)|`` (2^-40, about 1e-12 relative), the computed f cannot resolve the
Armijo test (f is known to ~1e-16 relative, and its rounding would decide the test), so the unit
step is taken without trial values. ``|<g, d>| >= ||g||^2 / lambda_max(M)`` makes this happen only
close to x*, in the regime of the paper's local (unit-step) theory; without the safeguard,
rounding decides the test there and stalls the search (a plain numpy loop on 7 clients rejects
t = 1 at ||grad f|| ~ 3e-10). The trace's ``armijo_tested`` column says which rounds tested.

Trial values cost extra exchanges within the round (driver Queries). Bits, per client:
uplink d + 1 floats (gradient and f_i(x^k)) + S_i (+ 1 float l_i under Option 2), then one
float f_i(x^k + t d^k) per trial; downlink d floats for the first trial (the direction d^k,
from which a client forms x^k + d^k), one float (the step length t) for each further trial,
and nothing for the accepted point, which the clients already hold (the next round's start
tells them the last trial was accepted). The authors' code counts 32 bits per backtracking
step and nothing for the function values.

FedNL's ``hessian`` (diagonal) and ``solver`` (cg) options apply to the direction as in FedNL
(:mod:`mpifed.algorithms.second_order.fednl`).

Deviation from the authors' code: its unbiased-compressor branch uses alpha = 0.5/(omega + 1);
here alpha defaults to FedNL's theory (1/(omega + 1)), as the paper's Algorithm 3 takes FedNL's
Hessian learning unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ...errors import MpifedError
from . import fednl
from ..base import Aggregate, Query, Uplink, bits_for
from ...network import flops as fl


RESOLUTION = 2.0**-40


class LineSearchError(MpifedError):
    """No step length gamma^s, s <= max_backtracks, satisfied the Armijo condition."""


@dataclass(frozen=True)
class Params:
    """fednl: C, alpha, option, mu (FedNL's Hessian learning); Armijo constant c and factor gamma."""

    fednl: fednl.Params
    c: float = 0.5
    gamma: float = 0.5
    max_backtracks: int = 50
    uses = ("compressor", "alpha", "option", "mu", "ls_c", "ls_gamma", "hessian", "solver", "cg_iterations")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        # The paper's direction is Option 1's [H^k]_mu; ranges of c and gamma are checked by the configuration.
        # the line search is its safeguard: no LM shift, also with the diagonal under Option 2
        base = fednl.Params.from_options(dataclasses.replace(opts, option=opts.option or 1,
                                                             adaptive_regularization=False), fed)
        return cls(base, 0.5 if opts.ls_c is None else opts.ls_c,
                   0.5 if opts.ls_gamma is None else opts.ls_gamma)


@dataclass(frozen=True)
class Trial:
    """The server's line search in progress: step length t = gamma^s of direction d^k."""

    H_next: np.ndarray
    direction: np.ndarray
    t: float
    f0: float
    slope: float  # <grad f(x^k), d^k> < 0
    backtracks: int
    report: dict


def client_init(p: Params, block, x0, streams):
    return fednl.client_init(p.fednl, block, x0, streams)


def server_init(p: Params, agg: Aggregate, x0):
    return fednl.server_init(p.fednl, agg, x0)


def client_step(p: Params, block, state, x, streams):
    state, uplink = fednl.client_step(p.fednl, block, state, x, streams)
    # f_i(x^k) goes up too: the Armijo test needs f(x^k).
    return state, dataclasses.replace(uplink, value_bits=uplink.value_bits + p.fednl.float_bits)


def server_step(p: Params, state: fednl.ServerState, x, agg: Aggregate):
    H, g = fednl.server_matrix(p.fednl, state.H, len(x)), agg.grad / agg.n
    report = {}
    direction = -fednl.newton_step(p.fednl, H, g, agg, report)
    H_next, f0, slope = state.H + p.fednl.alpha * agg.mean("S"), agg.loss / agg.n, float(g @ direction)
    if -p.c * slope <= RESOLUTION * abs(f0):  # below f's resolution: the unit step, untested
        report.update(step_length=1.0, backtracks=0, armijo_tested=0.0)
        return fednl.ServerState(H_next, report), x + direction, len(x) * p.fednl.float_bits
    trial = Trial(H_next, direction, 1.0, f0, slope, 0, report)
    return Query(x + direction, trial, len(x) * p.fednl.float_bits)


def client_query(p: Params, block, state, point, streams):
    values, index = bits_for(block.n, 1, p.fednl.float_bits)
    return state, Uplink(block.loss(point), None, values, index)


def server_resume(p: Params, trial: Trial, x, agg: Aggregate):
    t = trial.t
    if agg.loss / agg.n <= trial.f0 + p.c * t * trial.slope:
        report = {**trial.report, "step_length": t, "backtracks": trial.backtracks, "armijo_tested": 1.0}
        return fednl.ServerState(trial.H_next, report), x + t * trial.direction, 0.0
    if trial.backtracks >= p.max_backtracks:
        raise LineSearchError(f"the line search found no step satisfying the Armijo condition (c = {p.c:g}) "
                              f"after {p.max_backtracks} reductions by gamma = {p.gamma:g} (step {t:.3e}, "
                              f"<grad f, d> = {trial.slope:.3e}); f cannot decrease along d^k at this precision")
    t *= p.gamma
    return Query(x + t * trial.direction, dataclasses.replace(trial, t=t, backtracks=trial.backtracks + 1),
                 p.fednl.float_bits)


def flops(p: Params, s) -> fl.Work:
    """FedNL's round under its options (:func:`.fednl.client_work`, :func:`.fednl.server_work`: full or diagonal
    Hessian, Cholesky / eigendecomposition or CG; never the LM shift) plus <g, d> (2d) on the server; each trial
    (a query): f_i at the trial point on every client, the trial point (2d), the sum and the Armijo test on the
    server."""
    f = p.fednl
    return fl.Work(fednl.client_work(f, s), fednl.server_work(f, s) + 2.0 * s.d,
                   query=fl.loss_only(s) + 2.0 * s.d, query_server=fl.aggregate(s, 1) + 4.0,
                   init=fednl.init_work(f, s), init_server=fl.aggregate(s, s.d if f.hessian == "diagonal" else s.T))
