"""FedNL's server solve M^{-1} g by conjugate gradients, and the elementwise solve of a diagonal H.

M is Option 2's H + l I or Option 1's projection [H]_mu (eigenvalues of H clipped below at mu).

CG (Nocedal and Wright, Numerical Optimization, 2nd ed., Alg. 5.2) runs on M with H dense, each
iteration one product H p (O(d^2), against Cholesky's O(d^3) and the eigendecomposition of Option 1),
and stops at ``||r|| <= RTOL ||g||`` or after ``iterations`` steps; short of that the step is an inexact
Newton step. It starts from 0 (FedNL's steps: warm-starting them from the previous round's saved 2-4% of
the iterations on a9a and w8a, about the one extra product it costs) or, warm, from the best multiple of a
``guess`` (FedNL-PP, which solves for x^{k+1} itself: x^k): beta* guess with beta* = <guess, g> /
<guess, M guess> minimises the quadratic q(s) = s^T M s / 2 - g^T s along it, so the start is never worse
than 0 in M's norm (one extra product).

Option 1 runs CG on H itself. The projection changes the answer only through eigenvalues below mu with
a part of g on them; CG's coefficients give the Lanczos tridiagonal matrix of H on the Krylov space for
free (Saad, Iterative Methods for Sparse Linear Systems, 2nd ed., Sec. 6.7.3), whose eigenvalues (Ritz
values) lie in H's spectrum's hull and reach the relevant eigenvalues as CG converges. When the smallest
is below mu (or a curvature p^T H p < mu ||p||^2 appears), the step falls back to the eigendecomposition
(``report["cg_fallback"] = 1``). With enough iterations both options equal the direct solves.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from ..base import SolverError, solve_projected

RTOL = 1e-12  # relative residual at which CG stops: the direct solve's accuracy for a well-conditioned M


def cg_solve(H: np.ndarray, g: np.ndarray, iterations: int, shift: float = 0.0, mu: float | None = None,
             guess: np.ndarray | None = None, report: dict | None = None) -> np.ndarray:
    """(H + shift I)^{-1} g by CG (``mu`` None: Option 2), or [H]_mu^{-1} g (``mu`` given: Option 1, with the
    eigendecomposition as fallback); ``report`` gets the iterations, the relative residual and the fallback."""
    report = {} if report is None else report
    if not (np.all(np.isfinite(H)) and np.all(np.isfinite(g))):
        raise SolverError("the server matrix H has NaN or inf entries")

    def M(v):
        return H @ v + shift * v if shift else H @ v

    s, r = np.zeros_like(g), g.copy()
    if guess is not None:
        Mg = M(guess)
        curv = float(guess @ Mg)
        if curv > 0:
            beta = float(guess @ g) / curv
            s, r = beta * guess, g - beta * Mg
    target, floor = RTOL * float(np.linalg.norm(g)), (mu or 0.0)
    p, rr = r.copy(), float(r @ r)
    alphas, betas, used = [], [], 0
    while used < iterations and np.sqrt(rr) > target:
        Mp = M(p)
        curv = float(p @ Mp)
        if curv <= floor * float(p @ p):
            if mu is not None:
                return _fallback(H, g, mu, report, used)
            raise SolverError(f"the server matrix H^k + l^k I is not positive definite (CG met the curvature "
                              f"p^T M p / ||p||^2 = {curv / float(p @ p):.3e})")
        alpha = rr / curv
        s += alpha * p
        r -= alpha * Mp
        rr_next = float(r @ r)
        alphas.append(alpha)
        betas.append(rr_next / rr)
        p, rr, used = r + betas[-1] * p, rr_next, used + 1
    if mu is not None and alphas and _smallest_ritz(alphas, betas) < mu:
        return _fallback(H, g, mu, report, used)
    report.update(cg_iterations=used, cg_residual=float(np.sqrt(rr)) / max(float(np.linalg.norm(g)), 1e-300),
                  cg_fallback=0)
    if mu is not None:
        report["clipped_eigenvalues"] = 0
    return s


def _smallest_ritz(alphas, betas) -> float:
    """The smallest eigenvalue of the Lanczos matrix T_j of CG's first j steps: diagonal 1/a_i + b_{i-1}/a_{i-1},
    off-diagonal sqrt(b_i)/a_i (Saad, eq. 6.103)."""
    a, b = np.asarray(alphas), np.asarray(betas)
    diag = 1.0 / a
    diag[1:] += b[:-1] / a[:-1]
    off = np.sqrt(b[:-1]) / a[:-1]
    return float(scipy.linalg.eigvalsh_tridiagonal(diag, off, select="i", select_range=(0, 0))[0])


def _fallback(H, g, mu, report, used):
    """Option 1 whose projection acts: the eigendecomposition (the Cholesky path's [H]_mu^{-1} g)."""
    step = solve_projected(H, g, mu, report)
    report.update(cg_iterations=used, cg_residual=0.0, cg_fallback=1)
    return step


def diagonal_solve(H: np.ndarray, g: np.ndarray, shift: float = 0.0, mu: float | None = None,
                   report: dict | None = None) -> np.ndarray:
    """M^{-1} g for a diagonal H (a d-vector): g / max(H, mu) (Option 1, ``mu`` given; the clipped count goes
    to ``report``) or g / (H + shift) (Option 2), elementwise; SolverError where M is not positive."""
    if not np.all(np.isfinite(H)):
        raise SolverError("the server's diagonal H has NaN or inf entries")
    if mu is not None:
        if report is not None:
            report["clipped_eigenvalues"] = int(np.count_nonzero(H < mu))
        return g / np.maximum(H, mu)
    M = H + shift
    if not np.all(M > 0):
        raise SolverError(f"the server's diagonal H^k + l^k I is not positive (smallest entry {float(M.min()):.3e})")
    return g / M
