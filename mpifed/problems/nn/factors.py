"""Curvature factors of a block of clients at once: FOOF solves and K-FAC factor state (EMA, lazy inverses).

Every factor is ``C_i = U_i^T U_i`` for per-client rows ``U_i`` ``(R, D)``: a layer's inputs ``a / sqrt(b)``
(FOOF's and K-FAC's ``A``; for a convolution the unfolded patches, summed over locations as KFC's ``Omega``)
or its pre-activation gradients ``g / sqrt(b)`` (``g / sqrt(b T)`` for a convolution: KFC's ``Gamma``); see
:mod:`mpifed.problems.nn.curvature` for the single-client definitions these match.

When a mini-batch has fewer rows than the layer has inputs (FedRCO's rank deficiency, Prop. 3.1: the first
dense layer of the CNN has 3873 inputs and a batch 32 rows), a damped solve uses the Woodbury identity

    (c I + U^T U)^{-1} M = (M - U^T (c I + U U^T)^{-1} U M) / c,

an ``R x R`` system instead of ``D x D``; otherwise ``U^T U`` is formed. An EMA factor (FedRCO eq. 7,
``C_k = alpha S_k + (1 - alpha) C_{k-1}``, ``C_1 = S_1``) is kept as the rows of its last J batches with
their weights ``alpha (1-alpha)^j`` while that is smaller than the ``D x D`` matrix: the rows of batches older
than J steps, whose weight ``(1-alpha)^J <= 2^-53`` is below double precision relative to the newest batch's,
are overwritten in the ring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def rows_of(st, which: str):
    """Per-client rows ``(n, R, D)`` of a layer's ``A`` (``which='a'``) or ``G`` (``'g'``) from its LayerStats."""
    v = st.a if which == "a" else st.g
    n, b = v.shape[:2]
    scale = b if (which == "a" or st.kind != "conv") else b * v.shape[2]
    return v.reshape(n, -1, v.shape[-1]) / math.sqrt(scale)


def gram(U):
    return U.transpose(0, 2, 1) @ U


def _eye(xp, n, dtype=None):
    return xp.eye(n, dtype=dtype)[None]


def damped_solve(U, M, c, xp):
    """``(c I + U_i^T U_i)^{-1} M_i`` for every client; ``U`` ``(n, R, D)``, ``M`` ``(n, D, q)``, ``c`` > 0."""
    n, R, D = U.shape
    if R < D:
        K = U @ U.transpose(0, 2, 1) + c * _eye(xp, R, U.dtype)
        return (M - U.transpose(0, 2, 1) @ xp.linalg.solve(K, U @ M)) / c
    return xp.linalg.solve(gram(U) + c * _eye(xp, D, U.dtype), M)


def foof_step(model, grad, stats, eps, xp):
    """FOOF preconditioned gradients (FedPM eq. 11 with damping): per layer ``(A_i + eps I)^{-1} dW_i``, flat (n, P)."""
    out = [damped_solve(rows_of(st, "a"), dW, eps, xp) for dW, st in zip(model.views(grad), stats)]
    return model.flatten(out, xp)


def blocks_kept(alpha: float) -> int:
    """J: the number of past batches whose EMA weight is above double precision (1 when alpha = 1)."""
    return 1 if alpha >= 1 else max(1, math.ceil(-53 * math.log(2) / math.log1p(-alpha)))


@dataclass
class Factor:
    """One K-FAC factor of every client of a block, ``dense`` ``(n, D, D)``, or as a ring of the last J batches'
    rows ``rows`` ``(n, J, R, D)`` with their EMA weights ``weight`` ``(n, J)`` (C = sum_j w_j U_j^T U_j) and
    squared Frobenius norms ``sq`` ``(n, J)``; an update writes one batch and rescales J weights."""

    D: int
    rows: object = None
    dense: object = None
    weight: np.ndarray | None = None
    sq: np.ndarray | None = None
    head: np.ndarray | None = None

    @classmethod
    def for_layer(cls, n: int, R: int, D: int, alpha: float, xp) -> "Factor":
        J = blocks_kept(alpha)
        if J * R < D:
            return cls(D, rows=xp.zeros((n, J, R, D)), weight=np.zeros((n, J)), sq=np.zeros((n, J)),
                       head=np.zeros(n, dtype=np.int64))
        return cls(D, dense=xp.zeros((n, D, D)))

    def update(self, idx, U, alpha: float, fresh, xp):
        """EMA (eq. 7) with the new batch rows ``U`` ``(|idx|, R, D)`` of clients ``idx`` (host int array);
        ``fresh`` (|idx|,) bool: no history, C = S."""
        fresh = np.asarray(fresh, dtype=bool)
        if self.rows is not None:
            slot = (self.head[idx] + 1) % self.rows.shape[1]
            # A fresh client's old rows get weight 0 (their values may be inf/NaN after a reset; they are never read).
            self.weight[idx] = np.where(fresh[:, None], 0.0, self.weight[idx] * (1 - alpha))
            self.rows[xp.asarray(idx), xp.asarray(slot)] = U
            self.weight[idx, slot] = np.where(fresh, 1.0, alpha)
            self.sq[idx, slot] = np.asarray(_host((U * U).sum(axis=(1, 2)), xp))
            self.head[idx] = slot
            return
        keep = xp.asarray(np.where(fresh, 0.0, 1 - alpha))[:, None, None]
        new = xp.asarray(np.where(fresh, 1.0, alpha))[:, None, None]
        drop, on = xp.asarray(fresh)[:, None, None], xp.asarray(idx)
        # A fresh client's old factor is dropped, not multiplied by 0: after a reset it may hold inf/NaN.
        self.dense[on] = new * gram(U) + xp.where(drop, 0.0, keep * self.dense[on])

    def trace(self, idx, xp):
        if self.rows is not None:
            return xp.asarray(np.where(self.weight[idx] > 0, self.weight[idx] * self.sq[idx], 0.0).sum(axis=1))
        return xp.trace(self.dense[xp.asarray(idx)], axis1=1, axis2=2)

    def weighted_rows(self, idx, xp):
        """``(|idx|, J R, D)``: the rows scaled by sqrt(weight), so C = U^T U (unused slots are 0)."""
        w = self.weight[idx]
        scale = xp.asarray(np.sqrt(w))[:, :, None, None]
        with np.errstate(invalid="ignore"):  # 0 * inf in an unused slot of a reset client; discarded by where
            U = xp.where(xp.asarray(w > 0)[:, :, None, None], scale * self.rows[xp.asarray(idx)], 0.0)
        return U.reshape(len(idx), -1, self.D)

    def inverse(self, idx, c, xp):
        """The damped inverse of clients ``idx`` (``c`` (|idx|,) the shifts), as an :class:`Inverse` to reuse; NaN for
        a client whose damped matrix (the D x D one, or Woodbury's R x R one) :func:`_inv` refuses."""
        c3 = c[:, None, None]
        if self.rows is not None:
            U = self.weighted_rows(idx, xp)
            K = U @ U.transpose(0, 2, 1) + c3 * _eye(xp, U.shape[1])
            return Inverse(U=U, K=_sym_inv(_inv(xp, K, c3)), c=c3, live=self.weight[idx] > 0)
        return Inverse(dense=_sym_inv(_inv(xp, self.dense[xp.asarray(idx)] + c3 * _eye(xp, self.D), c3)))


def _host(a, xp):
    return a.get() if hasattr(a, "get") else a


def _inv(xp, K, c3):
    """Batched inverse of the damped matrices ``K`` = C + c I (shifts ``c3`` (n, 1, 1)), NaN for every client whose
    matrix cannot give a usable inverse, so that its step is NaN and FedRCO resets that client's curvature (eq. 11's
    hard reset) instead of a LinAlgError that ends the run or a wrong inverse used in silence. Refused: a
    non-finite entry; a shift c not finite and > 0 (pi = inf or 0 from the other factor); a shift lost in rounding,
    c <= D u tr(K) (u the unit roundoff: K's rounding errors reach c, the damping no longer bounds the smallest
    eigenvalue; an overflowed-but-finite factor); a factor C = K - c I that is not positive semi-definite to
    within half the shift (no Cholesky factor of K - c/2 I: K singular, or a negative eigenvalue after damping,
    where a Gram matrix plus c I has every eigenvalue >= c); an inverse with a non-finite entry. The others'
    inverses are those of ``xp.linalg.inv``, bit for bit."""
    D = K.shape[1]
    ok = xp.isfinite(K).all(axis=(1, 2))[:, None, None] & xp.isfinite(c3) & (c3 > 0)
    safe = xp.where(ok, K, _eye(xp, D))
    with np.errstate(over="ignore", invalid="ignore"):  # overflows and inf shifts are refused with the rest
        tr = xp.trace(safe, axis1=1, axis2=2)[:, None, None]
        ok = ok & (c3 > D * np.finfo(np.float64).eps / 2 * tr)
        lowered = xp.where(ok, safe - c3 / 2 * _eye(xp, D), _eye(xp, D))
    ok = ok & _positive_definite(xp, lowered)[:, None, None]
    safe = xp.where(ok, safe, _eye(xp, D))
    try:
        inv = xp.linalg.inv(safe)
    except np.linalg.LinAlgError:  # numpy refuses the whole batch for one singular matrix: one at a time
        inv = xp.stack([_inv_or_nan(xp, m) for m in safe])
    ok = ok & xp.isfinite(inv).all(axis=(1, 2))[:, None, None]
    return xp.where(ok, inv, xp.nan)


def _positive_definite(xp, K):
    """(n,) bool: a Cholesky factor of each matrix exists, with a finite, positive diagonal (numpy raises for the
    whole batch when one fails, so that batch is retried one matrix at a time; a failed factor left in place by
    LAPACK's potrf has a diagonal entry <= 0 or NaN where it stopped)."""
    try:
        L = xp.linalg.cholesky(K)
    except np.linalg.LinAlgError:
        return xp.asarray([_cholesky_ok(xp, m) for m in K])
    d = xp.diagonal(L, axis1=1, axis2=2)
    return xp.isfinite(L).all(axis=(1, 2)) & (d > 0).all(axis=1)


def _cholesky_ok(xp, M) -> bool:
    try:
        L = xp.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        return False
    return bool(xp.isfinite(L).all() & (xp.diagonal(L) > 0).all())


def _inv_or_nan(xp, M):
    try:
        return xp.linalg.inv(M)
    except np.linalg.LinAlgError:
        return xp.full_like(M, xp.nan)


def _sym_inv(Mi):
    return (Mi + Mi.transpose(0, 2, 1)) / 2


@dataclass
class Inverse:
    """``(c I + C)^{-1}`` of some clients: dense, or Woodbury's ``U``, ``K = (c I + U U^T)^{-1}``, ``c``, and
    ``live`` (n, J) (host): the ring slots whose rows are in ``U`` (the others are rows of zeros)."""

    dense: object = None
    U: object = None
    K: object = None
    c: object = None
    live: np.ndarray | None = None

    def left(self, M):
        """``(c I + C)^{-1} M`` for ``M`` ``(n, D, q)``.

        When every client's rows are one and the same ring slot (a factor inverted right after a start or a reset,
        then reused for T_inv steps), only that slot's rows and block of ``K`` enter the products: the rows left
        out are zeros and ``K`` is block-diagonal, so the terms dropped are exact zeros before and after that
        slot in the inner dimension, and the sums are the same (bit for bit with a BLAS that accumulates in order)."""
        if self.dense is not None:
            return self.dense @ M
        U, K = self.U, self.K
        slots = np.flatnonzero(self.live.any(axis=0)) if self.live is not None and len(self.live) else ()
        if len(slots) == 1:
            R = U.shape[1] // self.live.shape[1]
            rows = slice(int(slots[0]) * R, (int(slots[0]) + 1) * R)
            U, K = U[:, rows], K[:, rows, rows]
        return (M - U.transpose(0, 2, 1) @ (K @ (U @ M))) / self.c

    @classmethod
    def empty_like(cls, factor: Factor, n: int, xp) -> "Inverse":
        """Storage for the inverses of all n clients of a block (filled by :meth:`put`)."""
        if factor.rows is not None:
            r = factor.rows.shape[1] * factor.rows.shape[2]
            return cls(U=xp.zeros((n, r, factor.D)), K=xp.zeros((n, r, r)), c=xp.ones((n, 1, 1)),
                       live=np.zeros((n, factor.rows.shape[1]), bool))
        return cls(dense=xp.zeros((n, factor.D, factor.D)))

    def put(self, idx, inv: "Inverse") -> None:
        if self.dense is not None:
            self.dense[idx] = inv.dense
        else:
            self.U[idx], self.K[idx], self.c[idx] = inv.U, inv.K, inv.c
            if self.live is not None:  # None: restored from a checkpoint that predates it (all rows are used)
                self.live[_host(idx, None)] = inv.live

    def take(self, sel):
        """The inverses of a subset (an index array into this one's clients); this one itself, not a copy,
        when ``sel`` is every client in order (full participation)."""
        n = len(self.dense if self.dense is not None else self.U)
        if len(sel) == n and (n == 0 or (int(sel[0]) == 0 and bool((sel[1:] > sel[:-1]).all()))):
            return self  # n strictly increasing indices from 0 into n clients: all of them, in order
        if self.dense is not None:
            return Inverse(dense=self.dense[sel])
        live = None if self.live is None else self.live[_host(sel, None)]
        return Inverse(U=self.U[sel], K=self.K[sel], c=self.c[sel], live=live)
