"""L-BFGS with the memory on the server (Liu & Nocedal, Math. Programming 45, 1989; the two-loop recursion of
Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4; the distributed use of Agarwal, Chapelle, Dudik &
Langford, JMLR 2014, where only gradients and line-search values cross the network).

The server keeps g_k and the last M pairs (s_j, y_j) (M = --memory, 10). Round k, two exchanges::

    exchange B:  x^k down; f_i(x^k), grad f_i(x^k) up (d + 1 floats): g_k = grad P(x^k); then the pair
                 s = x^k - x^{k-1}, y = g_k - g_{k-1} is stored if s^T y > 1e-10 ||s|| ||y|| (the oldest beyond M
                 dropped);
    direction:   p_k = -H_k g_k by the two-loop recursion, H_k^0 = (s^T y / y^T y) I from the newest pair
                 (p_k = -g_k while no pair is stored; M = 0 is steepest descent);
    exchange A:  p_k down (d floats: the clients hold x^k); each client returns f_i(x^k + a_j p_k) and
                 <grad f_i(x^k + a_j p_k), p_k> for a_j = 4^-j, j = 0..J-1, J = 10 (2J floats up);
                 the server takes the largest a_j meeting the weak Wolfe conditions
                     P(x^k + a p_k) <= P(x^k) + c_1 a <g_k, p_k>,   <grad P(x^k + a p_k), p_k> >= c_2 <g_k, p_k>
                 (c_1 = 1e-4, c_2 = 0.9), else the largest meeting the first; x^{k+1} = x^k + a p_k
                 (a goes down as one float: the clients hold p_k).

Both pair vectors are differences of full gradients (lam x included) at accepted points, as ALGORITHMS-NEXT.md
section A4 asks (the SparkGiant code's ascent-direction convention is not copied). When the required decrease is
below P's floating-point resolution (abs(P) 2^-40) the unit step is taken without exchange A (FedNL-LS's safeguard).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..base import Aggregate, Query, Uplink, bits_for
from . import common
from .common import ClientState
from ...network import flops as fl

QUERIES = ("trials",)
STEPS = 4.0 ** -np.arange(10)  # a_j = 4^-j, j < J = 10


@dataclass(frozen=True)
class Params:
    """M: pairs kept; c_1, c_2: the Wolfe constants; steps: the trial step lengths a_j."""

    M: int = 10
    c1: float = 1e-4
    c2: float = 0.9
    steps: tuple = tuple(STEPS)
    float_bits: int = 32
    uses = ("memory",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(M=10 if opts.memory is None else opts.memory, float_bits=opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    pairs: tuple = ()  # (s_j, y_j), oldest first
    x_prev: np.ndarray | None = None
    g_prev: np.ndarray | None = None
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Search:
    """Exchange A in flight: the direction p_k and what the Wolfe test compares with."""

    state: ServerState
    direction: np.ndarray
    f0: float
    slope: float


client_init = common.client_init
client_step = common.gradient_and_loss_step


def server_init(p: Params, agg, x0):
    return ServerState()


def client_trials(p: Params, block, state: ClientState, direction, streams):
    f, slope = block.along(state.x, direction, p.steps)
    values, index = bits_for(block.n, 2 * len(p.steps), p.float_bits)
    return state, Uplink(f[:, 0], None, values, index, {"f": f, "slope": slope})


def two_loop(g, pairs) -> np.ndarray:
    """-H g by the two-loop recursion (Nocedal & Wright Alg. 7.4), H^0 = (s^T y / y^T y) I of the newest pair."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        q -= a * y
        alphas.append(a)
    if pairs:
        s, y = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas)):
        q += (a - (y @ q) / (y @ s)) * s
    return -q


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    g, f0 = agg.grad / agg.n, agg.loss / agg.n
    pairs = state.pairs
    if state.x_prev is not None and p.M:
        s, y = x - state.x_prev, g - state.g_prev
        if s @ y > 1e-10 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs = (pairs + ((s, y),))[-p.M:]
    state = ServerState(pairs, x, g)
    direction = two_loop(g, pairs)
    slope = float(g @ direction)
    if slope == 0.0 or common.unresolvable(p.c1, f0, slope):
        report = {"step_length": 1.0, "wolfe": 0.0, "pairs": float(len(pairs)), "armijo_tested": 0.0}
        return ServerState(pairs, x, g, report), x + direction, len(x) * p.float_bits
    return Query(direction, Search(state, direction, f0, slope), len(x) * p.float_bits, kind="trials")


def server_resume(p: Params, search: Search, x, agg: Aggregate):
    f, slope = agg.mean("f"), agg.mean("slope")
    armijo = f <= search.f0 + p.c1 * np.asarray(p.steps) * search.slope
    wolfe = armijo & (slope >= p.c2 * search.slope)
    ok = wolfe if wolfe.any() else armijo
    if not ok.any():
        raise common.LineSearchError(f"no trial step 4^-j, j < {len(p.steps)}, satisfied the Armijo condition "
                                     f"(c_1 = {p.c1:g}, <grad P, p> = {search.slope:.3e})")
    j = int(np.argmax(ok))  # the largest step: steps decrease with j
    s = search.state
    report = {"step_length": p.steps[j], "wolfe": float(wolfe.any()), "pairs": float(len(s.pairs)),
              "armijo_tested": 1.0}
    return ServerState(s.pairs, s.x_prev, s.g_prev, report), x + p.steps[j] * search.direction, p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Exchange B: f_i, grad f_i (and the rows' h_ij, :func:`~mpifed.network.flops.gradient_and_coefficients`);
    the server sums d + 1 floats, g = grad / n (d), the pair s, y (2 d) and its test s^T y, ||s||, ||y|| (6 d),
    the two-loop recursion with all M pairs stored (its steady state, an upper bound for the first M rounds):
    per pair two dot products and two axpys, 8 M d FLOPs (Nocedal and Wright's 4 M d multiplications), the
    scaling H^0 = s^T y / y^T y (5 d), <g, p> (2 d). Exchange A (the ``trials`` query): f_i and its slope at the
    J trial points in one pass (:func:`~mpifed.network.flops.loss_along`); the server sums 2 J floats, takes
    the means (2 J), the Wolfe tests (6 J) and x + a p (2 d)."""
    d, J = s.d, len(p.steps)
    server = fl.aggregate(s, d + 1) + d + 2.0 * d + 6.0 * d + 8.0 * p.M * d + 5.0 * d + 2.0 * d
    return fl.Work(fl.gradient_and_coefficients(s), server, query=fl.loss_along(s, J),
                   query_server=fl.aggregate(s, 2 * J) + 8.0 * J + 2.0 * d)
