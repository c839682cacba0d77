"""BPM, the ball-proximal ("broximal") point method (Gruntkowska, Li, Rane, Richtarik, ICML 2025, arXiv:2502.02002;
non-Euclidean balls: Gruntkowska and Richtarik, arXiv:2510.00823)::

    x^{k+1} = brox_P^t(x^k) = argmin_{||z - x^k|| <= t} P(z)          (l2, linf or l1 ball; radius t fixed)

Checked against the paper's abstract and introduction (the operator and the iteration x_{k+1} in brox^{t_k}(x_k),
the one-step case t >= ||x^0 - x*||) and, for the properties the tests check, the project's sheet
(ALGORITHMS-NEXT.md, B10/B11): for convex P and the l2 ball, a step that does not reach a minimiser has length
exactly t and ||x^{k+1} - x*||^2 <= ||x^k - x*||^2 - t^2, so at most ceil(||x^0 - x*||^2 / t^2) steps.

Inner solver (the server's, one exchange per inner iteration, every one counted): projected Newton on the ball.
At an inner point z the clients send f_i(z), grad f_i(z) and their Hessians; the server minimises the quadratic
model P(z) + <g, y - z> + (y - z)^T H (y - z) / 2 over the ball around x^k (l2: the trust-region subproblem,
solved exactly by the secular equation; linf, l1: accelerated projected gradient on the server, see
:func:`.balls.quadratic_over_ball`) and queries the minimiser; a candidate that does not decrease P is halved
towards z (one float down). The inner solve stops when the projected-gradient residual
||(z - x^k) - Pi_B((z - x^k) - grad P(z))|| is at rounding level, when the Newton step no longer moves z, or
after ``max_inner`` iterations. On least squares the model is P itself: the Hessian G + lam I travels once, at
setup (d(d+1)/2 floats per client, counted), and each outer step is one exchange.

Exchanges per round: 1 (at x^k) + the inner queries. Bits per client and exchange: d + 1 floats up (grad f_i,
f_i), plus d(d+1)/2 for the Hessian (logistic); d floats down for a Newton candidate, one for a halving.
The last inner point is x^{k+1}, so the next round's exchange at x^{k+1} repeats it: that round trip is the
price of the driver's protocol (every round starts with an exchange at x^k), and it is counted.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ... import tri
from ...network import flops as fl
from ..base import Aggregate, BlockSums, Query, Uplink, bits_for, hessians_in_chunks
from . import balls

EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class Params:
    """t: the radius; norm: l2, linf or l1; exact: P is a quadratic (least squares), whose model is exact."""

    t: float = 1.0
    norm: str = "l2"
    exact: bool = False
    float_bits: int = 32
    max_inner: int = 50
    max_halvings: int = 30
    uses = ("radius", "ball_norm")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(opts.radius or 1.0, opts.ball_norm or "l2", fed.block.third_derivative_bound == 0, opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    H: np.ndarray | None  # the constant Hessian (least squares), else None
    report: dict


@dataclass(frozen=True)
class Inner:
    """The ball subproblem around x^k in progress: the accepted point z and its derivatives, the queried candidate."""

    H_const: np.ndarray | None
    z: np.ndarray
    f: float
    g: np.ndarray
    H: np.ndarray
    candidate: np.ndarray
    inner: int
    halvings: int


def _message(p: Params, block, x):
    xp = block.bk.xp
    if p.exact:
        loss, grad, _ = block.derivatives(x, hessian=False)
        values, index = bits_for(block.n, block.d + 1, p.float_bits)
        return Uplink(loss, grad, values, index)
    loss, grad, sums = xp.empty(block.n), xp.empty((block.n, block.d)), BlockSums()
    for _, _, hess in hessians_in_chunks(block, x, loss, grad):
        sums.add("hess", hess, xp)
    values, index = bits_for(block.n, block.d + 1 + block.T, p.float_bits)
    return Uplink(loss, grad, values, index, sums=sums)


def client_init(p: Params, block, x0, streams):
    """Least squares: the constant Hessians, once (counted)."""
    if not p.exact:
        return None, None
    xp, sums = block.bk.xp, BlockSums()
    loss, grad = xp.empty(block.n), xp.empty((block.n, block.d))
    for _, _, hess in hessians_in_chunks(block, x0, loss, grad):
        sums.add("hess", hess, xp)
    values, index = bits_for(block.n, block.T, p.float_bits)
    return None, Uplink(xp.zeros(block.n), xp.zeros((block.n, block.d)), values, index, sums=sums)


def server_init(p: Params, agg, x0):
    return ServerState(tri.unpack(agg.mean("hess"), len(x0)) if p.exact else None, {})


def client_step(p: Params, block, state, x, streams):
    return state, _message(p, block, x)


def client_query(p: Params, block, state, point, streams):
    return state, _message(p, block, point)


def _derivatives(H_const, x, agg: Aggregate):
    H = H_const if H_const is not None else tri.unpack(agg.mean("hess"), len(x))
    return agg.loss / agg.n, agg.grad / agg.n, H


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    f, g, H = _derivatives(state.H, x, agg)
    return _advance(p, Inner(state.H, x, f, g, H, x, 1, 0), x)


def server_resume(p: Params, inner: Inner, x, agg: Aggregate):
    f, g, H = _derivatives(inner.H_const, x, agg)
    if f > inner.f + 8 * EPS * abs(inner.f) and inner.halvings < p.max_halvings:  # no decrease: halve the step
        c = inner.z + 0.5 * (inner.candidate - inner.z)
        return Query(c, dataclasses.replace(inner, candidate=c, halvings=inner.halvings + 1), p.float_bits)
    return _advance(p, Inner(inner.H_const, inner.candidate, f, g, H, inner.candidate, inner.inner + 1,
                             inner.halvings), x)


def _advance(p: Params, inner: Inner, x):
    """One projected-Newton iteration from the accepted point z: the step (done) or a Query of the next candidate."""
    s = inner.z - x
    scale = float(np.linalg.norm(s)) + float(np.linalg.norm(inner.g)) + p.t
    residual = float(np.linalg.norm(s - balls.project(s - inner.g, p.t, p.norm)))
    if residual > 64 * EPS * scale and inner.inner <= p.max_inner:
        step = balls.quadratic_over_ball(inner.g - inner.H @ s, inner.H, p.t, p.norm, s0=s)
        c = x + step
        if p.exact:  # the model is P: its minimiser is x^{k+1}
            return _done(p, inner, x, c, len(x) * p.float_bits)
        if np.linalg.norm(c - inner.z) > 4 * EPS * scale:
            return Query(c, dataclasses.replace(inner, candidate=c), len(x) * p.float_bits)
    # the clients hold z already (x^k itself, or the last accepted query point)
    return _done(p, inner, x, inner.z, 0.0)


def _done(p: Params, inner: Inner, x, x_next, down_bits: float):
    report = {"inner_iterations": float(inner.inner), "halvings": float(inner.halvings),
              "step_length": balls.norm(x_next - x, p.norm)}
    return ServerState(inner.H_const, report), x_next, down_bits


APG_ITERATIONS = 100  # nominal iterations of the linf / l1 ball subproblem's accelerated projected gradient


def _project(norm: str, d: int) -> float:
    """The projection onto the ball: l2 the norm and a scaling (3d); linf a clip (2d); l1 the sort (d log2 d
    comparisons), the cumulative sums and the threshold test (4d), the shrinkage (3d)."""
    return {"l2": 3.0 * d, "linf": 2.0 * d}.get(norm, d * np.log2(max(d, 2)) + 7.0 * d)


def ball_quadratic_flops(norm: str, d: int) -> float:
    """:func:`.balls.quadratic_over_ball`. l2 (an active ball): eigh and the two products with V (9 d^3 + 4 d^2),
    the secular equation (:func:`~mpifed.network.flops.secular_root`, 4 per entry: w + nu, the division, the
    square and its sum), s(0) and s(nu) and the rescaling (8d). linf, l1: eigh (9 d^3), then APG_ITERATIONS
    (nominal) iterations of H y, H s and H s_next (6 d^2), the gradient step, the test, the values and the
    momentum (18d) and a projection; then the polish: a dense solve on the face (at most 2 d^3 / 3 + 2 d^2) and
    the two residuals (2 d^2 + 5d and a projection each)."""
    if norm == "l2":
        return fl.eigen_solve(d) + fl.secular_root(d, 4.0) + 8.0 * d
    proj = _project(norm, d)
    apg = APG_ITERATIONS * (6.0 * d * d + 18.0 * d + proj)
    polish = 2.0 * d**3 / 3.0 + 2.0 * d * d + proj + 2.0 * (2.0 * d * d + 5.0 * d + proj)
    return 9.0 * d**3 + proj + apg + polish


def newton_iteration_flops(p: Params, s) -> float:
    """The server's part of one exchange: the sum of the d + 1 (+ T) floats, the means (d + 1, and T for the
    Hessian), its unpacking (d^2); the stopping test, z - x, the norms of s and g, the residual
    ||s - Pi(s - g)|| (9d and a projection); q = g - H s (2 d^2 + d), the ball subproblem
    (:func:`ball_quadratic_flops`), x + step (d), and off least squares ||c - z|| (3d)."""
    d = s.d
    if p.exact:
        sums = fl.aggregate(s, d + 1) + (d + 1)
    else:
        sums = fl.aggregate(s, d + 1 + s.T) + (d + 1) + s.T + fl.unpack(d)
    test = 9.0 * d + _project(p.norm, d)
    return sums + test + 2.0 * d * d + d + ball_quadratic_flops(p.norm, d) + d + (0.0 if p.exact else 3.0 * d)


def flops(p: Params, s) -> fl.Work:
    """Each exchange (the round's at x^k and every inner query, a Newton candidate or a halving): the clients'
    f_i, grad f_i and, off least squares, their packed Hessians; the server's :func:`newton_iteration_flops`
    (a halving, z + (c - z)/2 at 3d, is charged as a Newton iteration: an upper bound). Least squares: the
    constant Hessians at setup (f_i, grad f_i and the Hessian; the server's sum, mean and unpacking), then one
    exchange per round."""
    client = fl.loss_grad(s) if p.exact else fl.loss_grad(s) + fl.hessian(s)
    server = newton_iteration_flops(p, s)
    if p.exact:
        return fl.Work(client, server, init=fl.loss_grad(s) + fl.hessian(s),
                       init_server=fl.aggregate(s, s.T) + s.T + fl.unpack(s.d))
    return fl.Work(client, server, query=client, query_server=server)
