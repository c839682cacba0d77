"""LocalNewton: K local Newton steps on every client, then simple mixing (Gupta et al. 2021,
in the form the FedPM paper (Ishii et al., AAAI 2026) gives it, eq. (5); the SOPM baseline of its Test 1).

Client i at round t, from theta_i^{(t,0)} = theta^{(t)}, for k = 0, ..., K-1:

    P_i^{(t,k)}       = grad^2 f_i(theta_i^{(t,k)})
    theta_i^{(t,k+1)} = theta_i^{(t,k)} - s_i^{(t,k)} (P_i^{(t,k)})^{-1} grad f_i(theta_i^{(t,k)})
    sends theta_i^{(t,K)}                                   (d floats)

Server, simple mixing:  theta^{(t+1)} = (1/N) sum_i theta_i^{(t,K)}.

The step length is s = eta (eq. (5)), or with ``local_line_search`` (LocalNewton's local
backtracking) the first of eta, gamma eta, gamma^2 eta, ... (at most ``MAX_BACKTRACKS``)
that satisfies Armijo on the client's own objective,
f_i(theta - s p) <= f_i(theta) - c s grad f_i(theta)^T p with p = P^{-1} grad f_i; a client
that finds none keeps its iterate for that local step. No extra communication.

With K = 1 the round is theta^{(t+1)} = theta^{(t)} - (eta/N) sum_i P_i^{-1} g_i (eq. (7)):
an average of locally preconditioned local gradients, not Newton's step (eq. (6)), so the
fixed point is not x* under heterogeneous clients. FedPM (:mod:`~mpifed.algorithms.second_order.fedpm`) runs the same
client loop (eq. (10)) and differs only in the server's mixing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ... import tri
from ...errors import ConfigError
from ..base import SolverError, Uplink, bits_for, client_chunks, to_participants
from ...network import flops as fl

MAX_BACKTRACKS = 30  # steps down to eta gamma^29 (about 2e-9 eta for gamma = 1/2)


@dataclass(frozen=True)
class Params:
    """eta: local step size; K: local steps per round; line_search with Armijo c and factor gamma."""

    eta: float = 1.0
    K: int = 1
    line_search: bool = False
    c: float = 1e-4
    gamma: float = 0.5
    float_bits: int = 32
    uses = ("eta", "local_steps", "local_line_search", "ls_c", "ls_gamma", "participation")

    def __post_init__(self):
        check_local(self.eta, self.K)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        search = bool(opts.local_line_search)
        if not search and (opts.ls_c is not None or opts.ls_gamma is not None):
            raise ConfigError("--ls-c and --ls-gamma set LocalNewton's local line search; add --local-line-search")
        return cls(opts.eta if opts.eta is not None else 1.0, opts.local_steps or 1, search,
                   opts.ls_c if opts.ls_c is not None else 1e-4,
                   opts.ls_gamma if opts.ls_gamma is not None else 0.5, opts.float_bits)


def check_local(eta, K) -> None:
    """One-line errors for the local step size eta and the number K of local steps."""
    if not eta > 0:
        raise ConfigError(f"eta = {eta!r} is out of range; valid: eta > 0")
    if int(K) != K or K < 1:
        raise ConfigError(f"local_steps K = {K!r} is out of range; valid: an integer K >= 1")


@dataclass(frozen=True)
class LocalRun:
    """A block's K local steps: f_i and grad f_i at theta^{(t)}, theta_i^{(t,K)}, and the last
    local Hessian P_i^{(t,K-1)} packed (n, T) and full (n, d, d)."""

    loss: object
    grad: object
    theta: object
    hess: object
    P: object


def local_newton(block, x, K: int, eta: float, client_ids, search: Params | None = None) -> LocalRun:
    """K batched local Newton steps of every client of the block from the broadcast x (eq. (5), (10))."""
    xp = block.bk.xp
    theta, point = xp.broadcast_to(x, (block.n, block.d)), x  # k = 0 evaluates at the shared x, as Newton does
    for k in range(K):
        loss, grad, hess = block.derivatives(point)
        if k == 0:
            first = (loss, grad)
        P = tri.unpack(hess, block.d, xp)
        step = solve_spd_batched(P, grad, xp, client_ids, f"grad^2 f_i(theta_i^(t,{k}))")
        s = xp.full(block.n, eta) if search is None else armijo(block, theta, step, loss, grad, search)
        theta = point = theta - s[:, None] * step
    return LocalRun(first[0], first[1], theta, hess, P)


def armijo(block, theta, step, f0, grad, p: Params):
    """Per-client backtracking from s = eta for the whole block: the first s = eta gamma^j with
    f_i(theta_i - s p_i) <= f_i(theta_i) - c s grad_i^T p_i; 0 for a client with none."""
    xp = block.bk.xp
    slope = (grad * step).sum(axis=1)
    s, done = xp.full(block.n, p.eta), xp.zeros(block.n, dtype=bool)
    for _ in range(MAX_BACKTRACKS):
        done = done | (block.loss(theta - s[:, None] * step) <= f0 - p.c * s * slope)
        if bool(done.all()):
            break
        s = xp.where(done, s, p.gamma * s)
    return xp.where(done, s, 0.0)


def solve_spd_batched(P, g, xp, client_ids, what: str):
    """P_i^{-1} g_i for a stack P (n, d, d), g (n, d) by Cholesky; SolverError naming the
    clients whose P_i is not numerically positive definite (never NaN)."""
    d = g.shape[1]
    try:
        L = xp.linalg.cholesky(P)
    except np.linalg.LinAlgError:  # numpy fails the whole stack at the first bad matrix
        _not_pd(P, xp, client_ids, what)
    pivots = xp.diagonal(L, axis1=1, axis2=2) ** 2
    # A pivot below d eps max(diag P) is rounding noise: P_i is singular to working precision.
    floor = d * np.finfo(float).eps * xp.diagonal(P, axis1=1, axis2=2).max(axis=1)
    if not bool((xp.isfinite(pivots).all(axis=1) & (pivots.min(axis=1) > floor)).all()):
        _not_pd(P, xp, client_ids, what)
    if xp is np:
        y = scipy.linalg.cho_solve((L, True), g[..., None], check_finite=False)[..., 0]
    else:
        y = xp.linalg.solve(P, g[..., None])[..., 0]
    if not bool(xp.isfinite(y).all()):
        _not_pd(P, xp, client_ids, what)
    return y


def _not_pd(P, xp, client_ids, what):
    """Raise the one-line SolverError: which clients, and the smallest eigenvalue among them."""
    if not bool(xp.isfinite(P).all()):
        raise SolverError(f"the local Hessian {what} has NaN or inf entries (the local iterates diverged)")
    w = np.asarray(xp.asnumpy(xp.linalg.eigvalsh(P)) if hasattr(xp, "asnumpy") else xp.linalg.eigvalsh(P))
    d = P.shape[-1]
    bad = np.flatnonzero(~(w[:, 0] > d * np.finfo(float).eps * np.abs(w).max(axis=1)))
    if bad.size == 0:  # NaN/inf or a borderline pivot: name the worst-conditioned client
        bad = np.array([int(np.nanargmin(w[:, 0] / np.abs(w).max(axis=1)))])
    ids = ", ".join(str(int(client_ids[i])) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
    raise SolverError(f"the local Hessian {what} of client(s) {ids} is not positive definite "
                      f"(smallest eigenvalue {w[bad, 0].min():.3e}); use lam > 0")


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return None


def local_newton_in_chunks(block, x, K: int, eta: float, client_ids, search: Params | None = None):
    """:func:`local_newton` a chunk of clients at a time (:func:`~mpifed.algorithms.base.client_chunks`):
    yields (lo, hi, the chunk's :class:`LocalRun`), so the (clients x d x d) local Hessians and their
    factors are never held for the whole block. A client's run depends on its own rows only."""
    for lo, hi in client_chunks(block):
        yield lo, hi, local_newton(block.clients(lo, hi), x, K, eta, client_ids[lo:hi], search)


def client_step(p: Params, block, state, x, streams):
    xp, n = block.bk.xp, block.n
    loss, grad, theta = xp.empty(n), xp.empty((n, block.d)), xp.empty((n, block.d))
    for lo, hi, run in local_newton_in_chunks(block, x, p.K, p.eta, streams.client_ids, p if p.line_search else None):
        loss[lo:hi], grad[lo:hi], theta[lo:hi] = run.loss, run.grad, run.theta
    active = taking_part(block, streams)
    values, index = bits_for(n, block.d, p.float_bits)
    return state, Uplink(loss, grad, values * streams.active, index, {"theta": theta * active[:, None]})


def server_step(p: Params, state, x, agg):
    """Simple mixing over the round's participants S: ``theta^{(t+1)} = (1/|S|) sum_{i in S} theta_i^{(t,K)}``."""
    return state, agg.fields["theta"] / agg.participants, to_participants(agg, len(x), p.float_bits)


def taking_part(block, streams):
    """1.0 for the round's participants, 0.0 for the others (who send nothing), on the block's backend."""
    return block.bk.xp.asarray(streams.active, dtype=block.bk.xp.float64)


def local_newton_flops(K: int, s, line_search: bool = False) -> "np.ndarray":
    """K local Newton steps: gradient, Hessian, unpack, Cholesky solve and the step (2d) each; with the local
    line search one trial f_i per step (the first trial is usually accepted near x*)."""
    step = fl.loss_grad(s) + fl.hessian(s) + fl.unpack(s.d) + fl.cholesky_solve(s.d) + 2.0 * s.d
    return K * (step + (fl.loss_only(s) if line_search else 0.0))


def flops(p: Params, s) -> fl.Work:
    """K local Newton steps per participant; the server averages the models."""
    return fl.Work(local_newton_flops(p.K, s, p.line_search), fl.aggregate(s, s.d) + s.d)
