"""A symmetric positive definite matrix kept factorized under rank-one updates (NEWTON-LEARN's server).

The server of NL1 (Islamov et al. 2021, Algorithm 1) adds a few rank-one terms to its Hessian estimate
every round, H^{k+1} = H^k + sum_l w_l u_l u_l^T (w_l of either sign), and solves with
H^k + lam I. Instead of a fresh Cholesky per round it keeps

    M = B + U^T W U,    B = L L^T  (Cholesky of M at the last refactorization),

with the p rank-one terms U (p, d), W = diag(w) accumulated since then, and solves by the
Woodbury identity

    M^{-1} g = L^{-T} (y - V^T C^{-1} V y),   y = L^{-1} g,  V = U L^{-T},  C = W^{-1} + V V^T,

so a round costs the triangular solves of its new vectors (d^2 per vector), the new border
of the capacitance C (p d per vector) and an LU solve with C (p^3; C is symmetric but
indefinite, as w may be negative). When p would pass ``limit`` (default d: beyond that the
capacitance costs more than a fresh factorization) the explicit M, kept up to date
alongside, is factorized again. Terms with ``|w|`` below the smallest normal float are dropped
(1/w would overflow; they cannot change M at double precision).

Cost, measured on NL1's server step (one BLAS thread): w8a (d = 300, q = 142 terms per
round) 3.6 ms per round, against 3.5 ms when refactorizing every round (limit = 0); a9a
(d = 123, q = 80) 1.5 ms either way. With q ~ d/2 the triangular solve of the new vectors
alone costs about one factorization; the maintained form pays off when q << d.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse

from ..base import SolverError


@dataclass(frozen=True)
class LowRankSPD:
    """M = L L^T + U^T diag(w) U, with the explicit M for the next refactorization."""

    M: np.ndarray   # (d, d) the current matrix
    L: np.ndarray   # (d, d) lower Cholesky factor of the base B
    U: np.ndarray   # (p, d) rank-one vectors added since B was factorized
    w: np.ndarray   # (p,) their weights
    V: np.ndarray   # (p, d) rows of U L^{-T}, i.e. V^T = L^{-1} U^T
    C: np.ndarray   # (p, p) the capacitance W^{-1} + V V^T
    limit: int      # refactorize when p would exceed this

    @classmethod
    def factor(cls, M, limit: int | None = None, what: str = "H") -> "LowRankSPD":
        M = np.array(M, dtype=np.float64)
        d = len(M)
        if not np.all(np.isfinite(M)):
            raise SolverError(f"the server matrix {what} has NaN or inf entries")
        try:
            L = scipy.linalg.cholesky(M, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise SolverError(f"the server matrix {what} is not positive definite (smallest eigenvalue "
                              f"{np.linalg.eigvalsh(M)[0]:.3e})") from None
        empty = np.zeros((0, d))
        return cls(M, L, empty, np.zeros(0), empty, np.zeros((0, 0)), d if limit is None else int(limit))

    @property
    def rank(self) -> int:
        """p, the number of rank-one terms accumulated since the last factorization."""
        return len(self.w)

    def update(self, U_new, w_new) -> "LowRankSPD":
        """M + sum_l w_l u_l u_l^T for the rows u_l of ``U_new`` (q, d); a new object."""
        U_new, w_new = np.asarray(U_new, dtype=np.float64), np.asarray(w_new, dtype=np.float64)
        keep = np.abs(w_new) >= np.finfo(np.float64).tiny
        U_new, w_new = U_new[keep], w_new[keep]
        if len(w_new) == 0:
            return self
        M = self.M + weighted_gram(U_new, w_new)
        if self.rank + len(w_new) > self.limit:
            return LowRankSPD.factor(M, self.limit)
        V_new = scipy.linalg.solve_triangular(self.L, U_new.T, lower=True, check_finite=False).T
        border = self.V @ V_new.T
        C = np.block([[self.C, border], [border.T, np.diag(1.0 / w_new) + V_new @ V_new.T]])
        return LowRankSPD(M, self.L, np.vstack([self.U, U_new]), np.concatenate([self.w, w_new]),
                          np.vstack([self.V, V_new]), C, self.limit)

    def solve(self, g) -> np.ndarray:
        """M^{-1} g by the Woodbury identity on the base factorization."""
        y = scipy.linalg.solve_triangular(self.L, g, lower=True, check_finite=False)
        if self.rank:
            with np.errstate(all="ignore"):
                c = scipy.linalg.lu_solve(scipy.linalg.lu_factor(self.C, check_finite=False), self.V @ y,
                                          check_finite=False)
            y = y - self.V.T @ c
        s = scipy.linalg.solve_triangular(self.L, y, lower=True, trans="T", check_finite=False)
        if not np.all(np.isfinite(s)):
            raise SolverError("the learned-Hessian solve produced NaN or inf")
        return s


def weighted_gram(U, w) -> np.ndarray:
    """sum_l w_l u_l u_l^T, exactly symmetric; sparse rows (LIBSVM data) by a sparse product."""
    if np.count_nonzero(U) < 0.25 * U.size:
        S = scipy.sparse.csr_matrix(U)
        G = (S.T @ scipy.sparse.diags(w) @ S).toarray()
    else:
        G = (U.T * w) @ U
    return 0.5 * (G + G.T)
