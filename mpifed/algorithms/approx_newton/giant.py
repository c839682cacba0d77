"""GIANT: globally improved approximate Newton (Wang, Roosta, Xu, Mahoney, NeurIPS 2018, arXiv:1709.03528,
Sec. 3, Algorithm "GIANT"; checked against the authors' code, SparkGiant ``logistic/Giant.scala`` and
``utils/CG.scala``, through the rules transcribed in the project's source sheet, section A3).

Iteration t, three exchanges:

1. x_t down (d floats); client i sends grad f_i(x_t) (d floats): g_t = grad P(x_t). (The code also sends the
   local loss, for the search; here the search takes changes of f_i, below, so f_i(x_t) is not sent.)
2. g_t down (d floats); client i runs q CG iterations from 0 on its local Newton system (:mod:`.cg`)

       grad^2 f_i(x_t) p_i = g_t,   grad^2 f_i = (1/m_i) sum_j phi''_ij a_ij a_ij^T + lam I,

   with Hessian-vector products from its own rows, and sends p_i (d floats); the server averages
   p_t = sum_i w_i p_i.
3. p_t down (d floats); every client returns f_i(x_t - alpha_j p_t) - f_i(x_t), alpha_j = 4^-j, j = 0..9 (10 floats), and
   x_{t+1} = x_t - alpha p_t with the largest alpha_j passing Armijo with c = 0.1 (:mod:`.linesearch`).

Weights: the paper's w_i = m_i/N make sum_i w_i f_i the loss over all samples; mpifed's objective is
P = (1/n) sum_i f_i (every client counts once, ALGORITHMS.md), so w_i = 1/n here (the same for equal m_i).

q (``cg_iterations``) is the one knob; the code's experiments use 30 and 100 (default 30). A client also stops
once its residual is 1e-12 of its right-hand side (the code's 1e-20 amounts to a fixed q). Without the line
search (``line_search`` false) the step is alpha = 1 and a round has two exchanges; the search's trial factor and
Armijo constant are ``ls_gamma`` and ``ls_c``. The trace reports ``local_iterations`` (mean CG iterations per
client) and ``step_length``.

On a quadratic with exact local solves this is x - mean_i(H_i^{-1}) grad P(x), which DANE with eta = 1, mu = 0
also takes; with one client it is Newton's step.

Large d: the local solves run in ranges of clients whose (clients x d) arrays fit a budget (:func:`.cg.chunks`;
one range, the whole block, when it fits) and the p_i are summed as they go (:func:`solve_in_chunks`); above
:data:`~mpifed.algorithms.base.DENSE_CLIENT_D` features exchange 1's gradients go up summed over the block.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...network import flops as fl
from ..base import DENSE_CLIENT_D, BlockSums, Query, Uplink, bits_for, summed_gradients
from . import cg, linesearch

DEFAULT_Q = 30


@dataclass(frozen=True)
class Params:
    """q: CG iterations per client; line_search, c, gamma: the one-exchange Armijo search; float bits."""

    q: int = DEFAULT_Q
    line_search: bool = True
    c: float = linesearch.DEFAULT_C
    gamma: float = linesearch.DEFAULT_GAMMA
    float_bits: int = 32
    uses = ("cg_iterations", "line_search", "ls_c", "ls_gamma")

    def __post_init__(self):
        check_q(self.q)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(_or(opts.cg_iterations, DEFAULT_Q), _or(opts.line_search, True), _or(opts.ls_c, linesearch.DEFAULT_C),
                   _or(opts.ls_gamma, linesearch.DEFAULT_GAMMA), opts.float_bits)


def _or(value, default):
    return default if value is None else value


def check_q(q) -> None:
    if int(q) != q or q < 1:
        raise ConfigError(f"cg_iterations q = {q!r} is out of range; valid: an integer q >= 1")


@dataclass(frozen=True)
class ClientRound:
    """What a block keeps between a round's exchanges: x_t, the clients' gradients and Hessian coefficients there,
    and whether the next broadcast is the line search's direction (DANE's too)."""

    x: object
    grad: object
    h: object
    searching: bool = False


@dataclass
class ServerState:
    report: dict


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return ServerState({})


def client_step(p: Params, block, state, x, streams):
    """Exchange 1. Above DENSE_CLIENT_D features the gradients go up summed over the block (no (clients x d)
    array; DANE's further local steps recompute a range's gradients at x_t, :func:`local_gradients`)."""
    if block.d > DENSE_CLIENT_D:
        loss, grad, h = summed_gradients(block, x)
        kept = None
    else:
        loss, grad, h = block.derivatives_and_coefficients(x)
        kept = grad
    values, index = bits_for(block.n, block.d, p.float_bits)
    return ClientRound(x, kept, h), Uplink(loss, grad, values, index)


def local_gradients(state: ClientRound, lo: int, hi: int, piece):
    """grad f_i(x_t) of the block's clients lo..hi-1 (``piece``), (hi - lo, d): kept from exchange 1, or recomputed
    from the range's rows (the same bits) when the block sent them summed."""
    if state.grad is not None:
        return state.grad[lo:hi]
    return piece.derivatives(state.x, hessian=False)[1]


def solve_in_chunks(block, state: ClientRound, solve, name: str, float_bits: int):
    """Exchange 2's Uplink: ``solve(lo, hi, piece, h)`` -> (the range's (hi - lo, d) vectors, CG iterations) for each
    range of :func:`.cg.chunks`, summed into the field ``name`` in client order (:class:`BlockSums`); the
    iterations go up as the field ``cg``."""
    xp, sums, iterations = block.bk.xp, BlockSums(), []
    for lo, hi, piece in cg.chunks(block):
        vectors, its = solve(lo, hi, piece, state.h if piece is block else block.coefficients_of(state.h, lo, hi))
        sums.add(name, vectors, xp)
        iterations.append(xp.asarray(its, dtype=float).reshape(-1))
        vectors = None
    values, index = bits_for(block.n, block.d, float_bits)
    cg_field = xp.concatenate(iterations)[:, None] if len(iterations) > 1 else iterations[0][:, None]
    return Uplink(xp.zeros(block.n), None, values, index, {"cg": cg_field}, sums=sums)


def server_step(p: Params, state: ServerState, x, agg):
    g = agg.grad / agg.n
    return Query(g, g, len(x) * p.float_bits)


def client_query(p: Params, block, state: ClientRound, point, streams):
    if state.searching:  # exchange 3: the line search's trial values along the direction
        return state, linesearch.client_values(block, state.x, point, p.gamma, p.float_bits)
    xp = block.bk.xp

    def solve(lo, hi, piece, h):
        sol = cg.solve(lambda V: piece.hvp_from_coefficients(h, V), xp.broadcast_to(point, (hi - lo, block.d)),
                       p.q, xp=xp)
        return sol.p, sol.iterations

    return ClientRound(state.x, None, None, True), solve_in_chunks(block, state, solve, "p", p.float_bits)


def server_resume(p: Params, state, x, agg):
    if isinstance(state, linesearch.Search):
        return linesearch.finish(state, x, agg, p.c, p.gamma, p.float_bits)
    return step_along(p, state, x, agg, agg.mean("p"))


def step_along(p, pending, x, agg, direction, unit=None):
    """After the clients' solves: x - direction (``unit`` when given: the same point as the clients' mean), or the
    line search along the direction; the round reports the mean CG iterations per client."""
    g = pending
    report = {"local_iterations": float(agg.fields["cg"][0]) / agg.n}
    if not p.line_search:
        report["step_length"] = 1.0
        return ServerState(report), x - direction if unit is None else unit, len(x) * p.float_bits
    return linesearch.start(direction, g, report, ServerState(report), p.float_bits)


def gradient_and_coefficients(s):
    """f_i, grad f_i and the Hessian coefficients h_ij = phi''(t_ij) from the same margins (E per row)."""
    return fl.loss_grad(s) + fl.ELEMENTARY * s.m


def with_search(p, s, solve, solve_server) -> dict:
    """The Work's query fields for a round whose extra exchanges are the local solve and, with ``line_search``,
    the search (:func:`.linesearch.client_flops`, :func:`.linesearch.server_flops`). A Work has one count for
    every query exchange, so with the search each of the two is charged their mean: the round's total is exact,
    its split between the two exchanges is not."""
    if not p.line_search:
        return {"query": solve, "query_server": solve_server}
    return {"query": (solve + linesearch.client_flops(s)) / 2.0,
            "query_server": (solve_server + linesearch.server_flops(s)) / 2.0}


def flops(p: Params, s) -> fl.Work:
    """Exchange 1: f_i, grad f_i and the coefficients h_ij; the server sums the gradients, g = sum / n (d).
    Exchange 2 (a query): q CG iterations on grad^2 f_i p = g, each one Hessian-vector product from the
    coefficients (:func:`~mpifed.network.flops.hvp`), q the cap (an upper bound); the server's mean of
    the p_i (sum, d) and, without the search, x - p (d). Exchange 3 (a query, with ``line_search``): the 10 trial
    changes from one pass over the rows."""
    solve = cg.flops(p.q, fl.hvp(s), s.d)
    solve_server = fl.aggregate(s, s.d) + s.d + (0.0 if p.line_search else s.d)
    return fl.Work(gradient_and_coefficients(s), fl.aggregate(s, s.d) + s.d, **with_search(p, s, solve, solve_server))
