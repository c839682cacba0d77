"""DANE: distributed approximate Newton (Shamir, Srebro, Zhang, ICML 2014, arXiv:1312.7853, Algorithm "DANE";
the paper's text was not read: the rule follows two reference codes, microsoft/DistrOpt ``src/DANE/dane_mpi.cpp`` and
wangshusen/SparkGiant ``logistic/Dane.scala``, as transcribed in the project's source sheet, section A2).

Round t, two exchanges:

1. w down (d floats); client i sends grad f_i(w) (d floats): grad P(w) = (1/n) sum_i grad f_i(w).
2. grad P(w) down (d floats); client i solves, inexactly,

       w_i = argmin_z  f_i(z) - <grad f_i(w) - eta grad P(w), z> + (mu/2) ||z - w||^2            (*)

   and sends w_i (d floats); the server averages the models, w+ = (1/n) sum_i w_i.

Local solver: Newton-CG on (*) from z = w, T = ``local_steps`` Newton steps (default 1), each by CG on
Hessian-vector products of the client's own rows (:mod:`.cg`: at most q = ``cg_iterations`` iterations,
default 100, or a residual 1e-12 of the right-hand side):

    z <- z - (grad^2 f_i(z) + mu I)^{-1} (grad f_i(z) - grad f_i(w) + eta grad P(w) + mu (z - w)).

The first step's gradient is eta grad P(w) and its Hessian grad^2 f_i(w), both known from exchange 1, so one
step costs CG iterations only; each further step one more local gradient. With T = 1 the step solves the
quadratic model of (*) exactly, so on a quadratic f_i DANE solves (*) exactly:
w+ = w - eta mean_i[(H_i + mu I)^{-1}] grad P(w), GIANT's step with a unit step length (ridge regression).
On logistic regression more local steps solve (*) more exactly (the paper's DANE).

Unequal m_i: the reference codes scale f_i by c_i = n m_i / N so that the mean of the c_i f_i is the loss over all
samples; mpifed's objective is already P = (1/n) sum_i f_i (ALGORITHMS.md), so c_i = 1 and the models are averaged
with weights 1/n.

Defaults eta = 1, mu = 0 (both codes; with mu = 0 and no line search DANE can diverge on heterogeneous data, then
give ``--mu`` of the order of lam). ``line_search``: GIANT's one-exchange Armijo search along p = w - w+
(:mod:`.linesearch`; DistrOpt backtracks by 0.8 with c = 1e-4, one trial per exchange), a third exchange
(d floats down, 10 up). The trace reports ``local_iterations`` (mean CG iterations per client,
over its T steps). At large d the solves run in ranges of clients, as GIANT's do (:func:`.giant.solve_in_chunks`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...network import flops as fl
from . import cg, linesearch
from .giant import (ClientRound, _or, check_q, gradient_and_coefficients, local_gradients, solve_in_chunks, step_along,
                    with_search)
from .giant import client_init, client_step, server_init, server_step  # noqa: F401  (exchange 1 is GIANT's)

DEFAULT_T, DEFAULT_Q = 1, 100


@dataclass(frozen=True)
class Params:
    """eta, mu of (*); T local Newton steps of q CG iterations each; the optional line search (c, gamma)."""

    eta: float = 1.0
    mu: float = 0.0
    T: int = DEFAULT_T
    q: int = DEFAULT_Q
    line_search: bool = False
    c: float = linesearch.DEFAULT_C
    gamma: float = linesearch.DEFAULT_GAMMA
    float_bits: int = 32
    uses = ("eta", "mu", "local_steps", "cg_iterations", "line_search", "ls_c", "ls_gamma")

    def __post_init__(self):
        check_q(self.q)
        if int(self.T) != self.T or self.T < 1:
            raise ConfigError(f"local_steps T = {self.T!r} is out of range; valid: an integer T >= 1 (Newton steps)")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(_or(opts.eta, 1.0), _or(opts.mu, 0.0), _or(opts.local_steps, DEFAULT_T),
                   _or(opts.cg_iterations, DEFAULT_Q), _or(opts.line_search, False),
                   _or(opts.ls_c, linesearch.DEFAULT_C), _or(opts.ls_gamma, linesearch.DEFAULT_GAMMA), opts.float_bits)


def local_solve(p: Params, block, state: ClientRound, g, lo: int = 0, hi: int | None = None, piece=None, h=None):
    """(the w_i of the block's clients lo..hi-1 (``piece``, whose rows' coefficients at x_t are ``h``), (hi - lo, d),
    their CG iterations): T Newton-CG steps on (*). By default the whole block."""
    xp = block.bk.xp
    hi = block.n if hi is None else hi
    piece = block if piece is None else piece
    h = state.h if h is None else h
    z = xp.broadcast_to(state.x, (hi - lo, block.d))
    rhs = xp.broadcast_to(p.eta * g, (hi - lo, block.d))
    iterations = 0
    for step in range(p.T):
        if step:
            _, grad_z, h = piece.derivatives_and_coefficients(z)
            rhs = grad_z - local_gradients(state, lo, hi, piece) + p.eta * g + p.mu * (z - state.x)
        sol = cg.solve(lambda V: piece.hvp_from_coefficients(h, V) + p.mu * V, rhs, p.q, xp=xp)
        z, iterations = z - sol.p, iterations + sol.iterations
    return z, iterations


def client_query(p: Params, block, state: ClientRound, point, streams):
    if state.searching:  # exchange 3 (line search): the trial values along p
        return state, linesearch.client_values(block, state.x, point, p.gamma, p.float_bits)
    uplink = solve_in_chunks(block, state, lambda lo, hi, piece, h: local_solve(p, block, state, point, lo, hi, piece, h),
                             "w", p.float_bits)
    return ClientRound(state.x, None, None, True), uplink


def server_resume(p: Params, state, x, agg):
    if isinstance(state, linesearch.Search):
        return linesearch.finish(state, x, agg, p.c, p.gamma, p.float_bits)
    w = agg.mean("w")
    return step_along(p, state, x, agg, x - w, unit=w)


def flops(p: Params, s) -> fl.Work:
    """Exchange 1 (GIANT's): f_i, grad f_i and the coefficients h_ij; the server's g = sum / n. Exchange 2 (a
    query): eta g (d), then T Newton steps, each q CG iterations (q the cap, an upper bound) of the product
    (grad^2 f_i + mu I) v (:func:`~mpifed.network.flops.hvp` and mu v + the sum, 2 d) and z - p (d);
    every step after the first a gradient and coefficients at z and the right-hand side
    grad f_i(z) - grad f_i(w) + eta g + mu (z - w) (6 d). The server's mean of the w_i (sum, d) and, with the
    search, the direction x - w (d). Exchange 3 (a query, with ``line_search``): the 10 trial changes."""
    newton_step = cg.flops(p.q, fl.hvp(s) + 2.0 * s.d, s.d) + s.d
    solve = s.d + p.T * newton_step + (p.T - 1) * (gradient_and_coefficients(s) + 6.0 * s.d)
    solve_server = fl.aggregate(s, s.d) + s.d + (s.d if p.line_search else 0.0)
    return fl.Work(gradient_and_coefficients(s), fl.aggregate(s, s.d) + s.d, **with_search(p, s, solve, solve_server))
