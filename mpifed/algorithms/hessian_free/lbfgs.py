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

One exchange a round (``--lbfgs-exchanges 1``). Exchange A exists only because exchange B's gradient is taken at
the point exchange A accepts; evaluating f and grad f together at each trial point, as a serial L-BFGS does
(Liu & Nocedal 1989, Sec. 6; Nocedal & Wright Alg. 7.5 with the backtracking of Alg. 3.1), merges them. The
broadcast x^k of round k is the trial point z = x_a + t p_a along the direction of the last accepted point x_a
(P(x_a) = f_a, g_a = grad P(x_a))::

    exchange:    z down (d floats); f_i(z), grad f_i(z) up (d + 1 floats)
    test:        z is accepted if  P(z) <= f_a + c_1 t <g_a, p_a>   (Armijo, c_1 = 1e-4; untested, as above, when
                 the decrease it asks for is below P's resolution); round 0 accepts x^0 untested;
    accepted:    the pair s = z - x_a, y = grad P(z) - g_a is stored under the same rule, p = -H g by the two-loop
                 recursion, and the next round broadcasts z + p (t = 1): one exchange for the round;
    rejected:    t <- gamma t (gamma = 1/2) and an in-round query sends x_a + t p_a (d floats) for f_i and grad f_i
                 there (d + 1 floats up), tested the same way: one more exchange per backtrack.

So the returned gradient is the next round's gradient: a round costs 1 + (backtracks) exchanges, against 2 (the
glossary's "two-round protocol", papers/001: the round that computes the gradient difference before the
curvature-corrected step; ALGORITHMS-NEXT.md section A4 notes the cut to one exchange with J gradients up, here
with one). The pairs are differences of full gradients at accepted points, as in the two-exchange mode; row k of
the trace holds the metrics of the broadcast trial x^k (a rejected trial's row shows it; ``step_length`` and
``backtracks`` say what round k accepted, ``wolfe`` whether it also met the curvature condition).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..base import Aggregate, Query, Uplink, bits_for
from . import common
from .common import Backtracking, ClientState
from ...network import flops as fl

QUERIES = ("trials",)
STEPS = 4.0 ** -np.arange(10)  # a_j = 4^-j, j < J = 10


@dataclass(frozen=True)
class Params:
    """M: pairs kept; c_1, c_2: the Wolfe constants; steps: the trial step lengths a_j (two exchanges a round);
    exchanges: 2, or 1 (the trial point's gradient, Armijo backtracking by gamma, at most max_backtracks)."""

    M: int = 10
    c1: float = 1e-4
    c2: float = 0.9
    steps: tuple = tuple(STEPS)
    float_bits: int = 32
    exchanges: int = 2
    gamma: float = 0.5
    max_backtracks: int = 50
    uses = ("memory", "lbfgs_exchanges")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(M=10 if opts.memory is None else opts.memory, float_bits=opts.float_bits,
                   exchanges=opts.lbfgs_exchanges or 2)


@dataclass(frozen=True)
class ServerState:
    pairs: tuple = ()  # (s_j, y_j), oldest first
    x_prev: np.ndarray | None = None
    g_prev: np.ndarray | None = None
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    """One exchange a round: the memory, the last accepted point x_a with grad P(x_a) and P(x_a), and the trial
    x_a + t p_a in flight (None before round 0's x^0 is accepted)."""

    pairs: tuple = ()
    x: np.ndarray | None = None
    g: np.ndarray | None = None
    trial: Backtracking | None = None
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
    return ServerState() if p.exchanges == 2 else Accepted()


def client_trials(p: Params, block, state: ClientState, direction, streams):
    if p.exchanges == 1:  # ``direction`` is the trial point: its loss and gradient
        return common.gradient_uplink(block, direction, block.d + 1, p.float_bits)
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


def remember(p: Params, pairs: tuple, x, g, x_prev, g_prev) -> tuple:
    """The memory with the pair (x - x_prev, g - g_prev) if s^T y > 1e-10 ||s|| ||y||, the last M kept."""
    if x_prev is not None and p.M:
        s, y = x - x_prev, g - g_prev
        if s @ y > 1e-10 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs = (pairs + ((s, y),))[-p.M:]
    return pairs


def server_step(p: Params, state, x, agg: Aggregate):
    g, f0 = agg.grad / agg.n, agg.loss / agg.n
    if p.exchanges == 1:
        if state.trial is None:  # round 0: x^0 is accepted untested
            return _accept(p, state, x, g, f0, {"step_length": 0.0, "backtracks": 0.0, "armijo_tested": 0.0,
                                                  "wolfe": 0.0})
        return _test(p, state, x, g, f0)
    pairs = remember(p, state.pairs, x, g, state.x_prev, state.g_prev)
    state = ServerState(pairs, x, g)
    direction = two_loop(g, pairs)
    slope = float(g @ direction)
    if slope == 0.0 or common.unresolvable(p.c1, f0, slope):
        report = {"step_length": 1.0, "wolfe": 0.0, "pairs": float(len(pairs)), "armijo_tested": 0.0}
        return ServerState(pairs, x, g, report), x + direction, len(x) * p.float_bits
    return Query(direction, Search(state, direction, f0, slope), len(x) * p.float_bits, kind="trials")


def server_resume(p: Params, search, x, agg: Aggregate):
    if isinstance(search, Accepted):  # one exchange a round: a backtracked trial's loss and gradient
        return _test(p, search, search.x + search.trial.t * search.trial.direction, agg.grad / agg.n,
                     agg.loss / agg.n)
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


def _test(p: Params, state: Accepted, z, g, f):
    """The Armijo test of the trial z = x_a + t p_a with P(z) = f, grad P(z) = g: accept it, or query a shorter one."""
    trial = state.trial
    untested = common.unresolvable(p.c1, trial.f0, trial.slope)
    if untested or common.armijo_accepts(p.c1, trial, f):
        report = {"step_length": trial.t, "backtracks": float(trial.backtracks), "armijo_tested": float(not untested),
                  "wolfe": float(g @ trial.direction >= p.c2 * trial.slope)}
        return _accept(p, state, z, g, f, report)
    trial = common.backtrack(trial, p.gamma, p.max_backtracks, p.c1)
    return Query(state.x + trial.t * trial.direction, dataclasses.replace(state, trial=trial),
                 len(z) * p.float_bits, kind="trials")


def _accept(p: Params, state: Accepted, z, g, f, report: dict):
    """z becomes x_a: the pair, p = -H g, and the next round's broadcast z + p (d floats)."""
    pairs = remember(p, state.pairs, z, g, state.x, state.g)
    direction = two_loop(g, pairs)
    trial = Backtracking(direction, 1.0, f, float(g @ direction), 0, {})
    report = {**report, "pairs": float(len(pairs))}
    return Accepted(pairs, z, g, trial, report), z + direction, len(z) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Exchange B: f_i, grad f_i (and the rows' h_ij, :func:`~mpifed.network.flops.gradient_and_coefficients`);
    the server sums d + 1 floats, g = grad / n (d), the pair s, y (2 d) and its test s^T y, ||s||, ||y|| (6 d),
    the two-loop recursion with all M pairs stored (its steady state, an upper bound for the first M rounds):
    per pair two dot products and two axpys, 8 M d FLOPs (Nocedal and Wright's 4 M d multiplications), the
    scaling H^0 = s^T y / y^T y (5 d), <g, p> (2 d). Exchange A (the ``trials`` query): f_i and its slope at the
    J trial points in one pass (:func:`~mpifed.network.flops.loss_along`); the server sums 2 J floats, takes
    the means (2 J), the Wolfe tests (6 J) and x + a p (2 d).

    One exchange a round: the same client step at the trial point; the server adds to exchange B's count the
    Armijo test (4), the curvature report <grad P(z), p_a> (2 d) and the next trial point z + p (d). A backtrack
    (the ``trials`` query) is a gradient at x_a + t p_a on every client; the server sums d + 1 floats, g (d), the
    test (4) and <g, p_a> (2 d), t gamma (1) and x_a + t p_a (2 d). Each round's acceptance (pair, two-loop) is
    charged to its main step, also when a query's point was the one accepted."""
    d, J = s.d, len(p.steps)
    server = fl.aggregate(s, d + 1) + d + 2.0 * d + 6.0 * d + 8.0 * p.M * d + 5.0 * d + 2.0 * d
    if p.exchanges == 1:
        return fl.Work(fl.gradient_and_coefficients(s), server + 4.0 + 2.0 * d + d,
                       query=fl.gradient_and_coefficients(s),
                       query_server=fl.aggregate(s, d + 1) + d + 4.0 + 2.0 * d + 1.0 + 2.0 * d)
    return fl.Work(fl.gradient_and_coefficients(s), server, query=fl.loss_along(s, J),
                   query_server=fl.aggregate(s, 2 * J) + 8.0 * J + 2.0 * d)
