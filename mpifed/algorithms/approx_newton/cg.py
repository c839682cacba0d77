"""Conjugate gradients for all clients of a block at once: each client i solves its own system
H_i p_i = b_i with its own alpha_i and beta_i (Nocedal & Wright, Algorithm 5.2, from p_i = 0), in one batch of
Hessian-vector products per iteration (:meth:`mpifed.problems.logistic.LogisticBlock.hvp_each`).

A client stops after ``q`` iterations or once ||r_i|| <= tol ||b_i||; a stopped client's numbers are frozen
(its alpha and beta are 0), so what it gets never depends on which other clients share its block, and results
do not depend on the number of ranks.

The solves hold some ten (clients x d) arrays; :func:`chunks` cuts a block into ranges of clients whose arrays
take about LOCAL_CHUNK_BYTES (at d = 10^6, one client at a time), and the callers sum each range's solutions
into the block's double-double sum as they go (:class:`~mpifed.algorithms.base.BlockSums`), in client order.
Each client's solve is its own, so the solutions are those of one batch; below LOCAL_CHUNK_BYTES the block is one
range and the sums are those of the whole block's (n, d) array, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TOL = 1e-12  # relative residual at which a client's CG stops early (a few ulps above exact)
LOCAL_CHUNK_BYTES = 1 << 26  # a range of clients' solves holds about this much (64 MB) of (clients x d) arrays
SOLVE_ARRAYS = 10  # (clients x d) arrays a batch of solves holds: P, R, D, H D, the right-hand side, temporaries


@dataclass(frozen=True)
class Solution:
    """p (n, d): the approximate solutions; iterations (n,): CG iterations each client took."""

    p: object
    iterations: object


def solve(hvp, B, q: int, tol: float = DEFAULT_TOL, xp=None) -> Solution:
    """Solve ``hvp(P) = B`` row by row by at most ``q`` CG iterations (``hvp``: (n, d) -> (n, d), row i applies
    client i's symmetric positive definite H_i)."""
    import numpy as np

    xp = xp or np
    P, R = xp.zeros_like(B), B.copy()
    D = R.copy()
    rs = (R * R).sum(axis=1)
    stop = tol * tol * rs
    active = rs > stop
    iterations = xp.zeros(B.shape[0], dtype=np.int64)
    for _ in range(q):
        if not bool(active.any()):
            break
        HD = hvp(D)
        curvature = (D * HD).sum(axis=1)
        active = active & (curvature > 0)  # d^T H d <= 0: H_i is not positive definite along d; keep p_i
        alpha = xp.where(active, rs / xp.where(active, curvature, 1.0), 0.0)
        P = P + alpha[:, None] * D
        R = R - alpha[:, None] * HD
        rs_next = (R * R).sum(axis=1)
        beta = xp.where(active, rs_next / xp.where(active, rs, 1.0), 0.0)
        D = R + beta[:, None] * D
        iterations = iterations + active
        rs = xp.where(active, rs_next, rs)
        active = active & (rs_next > stop)
    return Solution(P, iterations)


def chunks(block):
    """(lo, hi, the clients lo..hi-1 as a block) for ranges of the block's clients whose SOLVE_ARRAYS (clients x d)
    arrays take about LOCAL_CHUNK_BYTES (the whole block when it fits). A range is a piece of its own, not kept:
    kept pieces of every range would together hold the block's (n d)-row gradient scatter matrix."""
    step = max(1, LOCAL_CHUNK_BYTES // (8 * SOLVE_ARRAYS * max(block.d, 1)))
    if step >= block.n:
        yield 0, block.n, block
        return
    for lo in range(0, block.n, step):
        hi = min(lo + step, block.n)
        yield lo, hi, block.clients(lo, hi, keep=False)


def flops(q: int, product, d: int):
    """At most ``q`` CG iterations from p = 0 (an upper bound: a client that reaches the residual stops earlier;
    the trace's ``local_iterations`` holds the mean it took): ||r||^2 once (2 d), then per iteration one product
    (``product``: a Hessian-vector product's FLOPs, per client) and the vector updates d^T H d, p += alpha d,
    r -= alpha H d, ||r||^2 and d = r + beta d (2 d each, 10 d)."""
    return 2.0 * d + q * (product + 10.0 * d)
