"""DiSCO: the inexact damped Newton method with distributed preconditioned CG (Zhang & Xiao, "DiSCO: Distributed
Optimization for Self-Concordant Empirical Loss", ICML 2015, arXiv:1501.00263: Algorithm 1, the damped step, and
Algorithm 2, the distributed PCG).

Round k, with g_k = grad P(x^k) and H_k = grad^2 P(x^k) (lam I included)::

    exchange 0:  x^k down; grad f_i(x^k) up (d floats)
    PCG on H_k v = g_k (Alg. 2) from v = 0, r = g_k, s = M^-1 r, u = s:  each iteration one exchange, u down and
                 grad^2 f_i(x^k) u up (d floats each way); alpha = <r, s> / <u, H_k u>,  v += alpha u,
                 Hv += alpha H_k u,  r -= alpha H_k u;  s' = M^-1 r,  u = s' + (<r, s'> / <r_old, s_old>) u
                 (Fletcher-Reeves; with the exact solve below it equals Polak-Ribiere); stop when
                 ||r|| <= eps_k = beta ||g_k|| (beta = --forcing, 0.1: the authors' code default) or after
                 --cg-iterations (100) iterations
    damped step (Alg. 1):  delta_k = sqrt(v^T H_k v) from the stored H_k v (no further product),
                 x^{k+1} = x^k - v / (1 + delta_k)                                        (d floats down)

The preconditioner is client 1's Hessian, M = grad^2 f_1(x^k) + mu I (its lam I inside), on the server, which holds
client 1's rows as DiSCO's master machine holds shard 1 (handed over at setup and not counted: in the paper the
data live there). Its solve here is exact, not the paper's inexact SDCA passes: with B = diag(sqrt(h_1j / m_1)) A_1,
M = B^T B + (lam + mu) I is solved by Cholesky of the m_1 x m_1 matrix (lam + mu) I + B B^T (Woodbury) when
m_1 < d, else of M itself. mu defaults to lam (the paper's theory wants mu of the order of ||grad^2 f_1 - H_k||;
the authors' code uses 1e-6, too little for the papers' heterogeneous splits). No line search: the damping is
the method's safeguard (the paper's logistic experiments rescale the loss to make it self-concordant; here the
step is taken as Alg. 1 states it). Checked against ALGORITHMS-NEXT.md section A1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse

from ...problems.logistic import phi_second
from ..base import Aggregate, Query
from . import common
from ...network import flops as fl

QUERIES = ("hvp",)


@dataclass(frozen=True)
class Params:
    """cg_iterations: PCG's cap per round; beta: eps_k = beta ||g_k||; mu: the preconditioner's shift;
    shard: client 1's rows and labels on the server (rank 0; None elsewhere)."""

    cg_iterations: int = 100
    beta: float = 0.1
    mu: float = 1e-3
    lam: float = 1e-3
    float_bits: int = 32
    shard: object = field(default=None, repr=False, compare=False)
    uses = ("cg_iterations", "forcing", "mu")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        # client 0 (the paper's machine 1) is the first client of rank 0, where the server runs
        shard = fed.block.client_rows(0)[0] if fed.comm.is_root else None
        return cls(opts.cg_iterations or 100, 0.1 if opts.forcing is None else opts.forcing,
                   opts.lam if opts.mu is None else opts.mu, opts.lam, opts.float_bits, shard)


@dataclass(frozen=True)
class ServerState:
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PCG:
    """Alg. 2 in progress: u was sent for H_k u."""

    solve: object  # r -> M^-1 r at x^k
    tol: float
    v: np.ndarray
    Hv: np.ndarray
    r: np.ndarray
    u: np.ndarray
    rs: float
    iterations: int


def preconditioner(A1, x, lam: float, mu: float):
    """r -> (grad^2 f_1(x) + mu I)^{-1} r, exactly (Cholesky; Woodbury when client 1 has fewer rows than d)."""
    m, d = A1.shape
    B = scipy.sparse.diags(np.sqrt(phi_second(A1 @ x) / m)) @ A1
    c = lam + mu
    if m < d:
        S = scipy.linalg.cho_factor((B @ B.T).toarray() + c * np.eye(m))
        return lambda r: (r - B.T @ scipy.linalg.cho_solve(S, B @ r)) / c
    M = scipy.linalg.cho_factor((B.T @ B).toarray() + c * np.eye(d))
    return lambda r: scipy.linalg.cho_solve(M, r)


client_init = common.client_init


def server_init(p: Params, agg, x0):
    return ServerState()


def client_step(p: Params, block, state, x, streams):
    return common.gradient_uplink(block, x, block.d, p.float_bits)


def client_hvp(p: Params, block, state, u, streams):
    return state, common.hvp_uplink(block, state, u, p.float_bits)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    g = agg.grad / agg.n
    solve = preconditioner(p.shard, x, p.lam, p.mu)
    s = solve(g)
    zero = np.zeros_like(g)
    return Query(s, PCG(solve, p.beta * float(np.linalg.norm(g)), zero, zero, g, s, float(g @ s), 0),
                 len(x) * p.float_bits, kind="hvp")


def server_resume(p: Params, s: PCG, x, agg: Aggregate):
    Hu = agg.fields["hv"] / agg.n
    alpha = s.rs / float(s.u @ Hu)
    v, Hv, r = s.v + alpha * s.u, s.Hv + alpha * Hu, s.r - alpha * Hu
    done = s.iterations + 1
    if np.linalg.norm(r) <= s.tol or done >= p.cg_iterations:
        delta = float(np.sqrt(max(v @ Hv, 0.0)))
        report = {"cg_iterations": float(done), "delta": delta}
        return ServerState(report), x - v / (1.0 + delta), len(x) * p.float_bits
    z = s.solve(r)
    rs = float(r @ z)
    u = z + (rs / s.rs) * s.u
    return Query(u, PCG(s.solve, s.tol, v, Hv, r, u, rs, done), len(x) * p.float_bits, kind="hvp")


def preconditioner_flops(s, first: bool) -> float:
    """The server's work on client 1's rows (m_1, nnz_1, pairs_1): with ``first`` building M at x^k, then one
    solve M^{-1} r.

    Build: margins A_1 x (2 nnz_1), phi'' (E m_1), sqrt(h / m_1) (E + 1 per row), B = diag(.) A_1 (nnz_1); then
    when m_1 < d the Woodbury matrix (lam + mu) I + B B^T (m_1 sparse row products per row, 2 nnz_1 each row
    at most: 2 m_1 nnz_1; m_1 for the shift) and its Cholesky m_1^3 / 3; else B^T B (3 pairs_1, as
    :func:`~mpifed.network.flops.hessian` counts a packed Gram), the shift (d) and the Cholesky d^3 / 3.
    Solve: Woodbury B r (2 nnz_1), two triangular solves (2 m_1^2), B^T (2 nnz_1), r - . and / c (2 d); or the
    two triangular solves of M (2 d^2)."""
    m1, nnz1, pairs1, d = float(s.m[0]), float(s.nnz[0]), float(s.pairs[0]), s.d
    woodbury = m1 < d
    if woodbury:
        build = 2.0 * m1 * nnz1 + m1 + m1**3 / 3.0
        solve = 4.0 * nnz1 + 2.0 * m1 * m1 + 2.0 * d
    else:
        build = 3.0 * pairs1 + d + d**3 / 3.0
        solve = 2.0 * d * d
    rows = 2.0 * nnz1 + (2.0 * fl.ELEMENTARY + 1.0) * m1 + nnz1
    return (rows + build if first else 0.0) + solve


def flops(p: Params, s) -> fl.Work:
    """Exchange 0: f_i, grad f_i and the rows' h_ij (:func:`~mpifed.network.flops.gradient_and_coefficients`);
    the server sums d floats, g = grad / n (d), ||g|| (2 d), builds the preconditioner on client 1's rows and
    applies it to g (:func:`preconditioner_flops`), <g, s> (2 d), and once per round the damped step: v^T H v
    (2 d), x - v / (1 + delta) (2 d). Each PCG iteration (an ``hvp`` query): grad^2 f_i(x^k) u on every client
    (:func:`~mpifed.network.flops.hvp`); the server sums d floats, H u / n (d), u^T H u (2 d), v, Hv and r
    updates (6 d), ||r|| (2 d), the preconditioner solve, <r, s'> (2 d), u = s' + beta u (2 d)."""
    d = s.d
    server = fl.aggregate(s, d) + 3.0 * d + preconditioner_flops(s, True) + 2.0 * d + 4.0 * d
    return fl.Work(fl.gradient_and_coefficients(s), server, query=fl.hvp(s),
                   query_server=fl.aggregate(s, d) + 15.0 * d + preconditioner_flops(s, False))
