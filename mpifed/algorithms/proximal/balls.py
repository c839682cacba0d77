"""Balls of the l2, linf and l1 norms: the norm, the Euclidean projection onto the ball, the linear minimisation
oracle, and the minimiser of a convex quadratic over the ball (the broximal point method's server subproblem).

The ball is B = {y : ||y - c|| <= t}; everything works on the offset s = y - c.
"""
from __future__ import annotations

import numpy as np

from ..base import SolverError

BALL_NORMS = ("l2", "linf", "l1")
_ORD = {"l2": 2, "linf": np.inf, "l1": 1}


def norm(s, kind: str) -> float:
    return float(np.linalg.norm(s, _ORD[kind]))


def project(s, t: float, kind: str):
    """The Euclidean projection of s onto {||s|| <= t} (l1: Duchi et al. 2008, sort-based)."""
    if kind == "l2":
        r = np.linalg.norm(s)
        return s if r <= t else s * (t / r)
    if kind == "linf":
        return np.clip(s, -t, t)
    a = np.abs(s)
    if a.sum() <= t:
        return s
    u = np.sort(a)[::-1]
    cumulative = np.cumsum(u) - t
    k = np.nonzero(u > cumulative / np.arange(1, len(u) + 1))[0][-1]
    return np.sign(s) * np.maximum(a - cumulative[k] / (k + 1), 0.0)


def lmo(g, kind: str):
    """argmin_{||d|| <= 1} <g, d>: -g/||g||_2 (l2), -sign(g) (linf), -sign(g_i) e_i at i = argmax abs(g_i) (l1)."""
    if kind == "l2":
        r = np.linalg.norm(g)
        return -g / r if r > 0 else np.zeros_like(g)
    if kind == "linf":
        return -np.sign(g)
    d = np.zeros_like(g)
    i = int(np.argmax(np.abs(g)))
    d[i] = -np.sign(g[i])
    return d


def quadratic_over_ball(q, H, t: float, kind: str, s0=None, tol: float = 1e-12, max_iter: int = 20_000):
    """argmin_{||s|| <= t} <q, s> + s^T H s / 2 for H positive definite.

    l2: the trust-region subproblem, solved exactly (eigenvalues of H and the secular equation ||s(nu)|| = t,
    s(nu) = -(H + nu I)^{-1} q, by Brent's method; an active ball gets ||s|| = t up to rounding).
    linf, l1: accelerated projected gradient with adaptive restart (step 1/lambda_max(H)) from s0, until the
    projected-gradient step moves s by at most ``tol`` times max(1, ||s||), then one exact solve on the face it
    found (:func:`_polish`), kept when its projected-gradient residual is smaller.
    """
    w, V = np.linalg.eigh(H)
    if not w[0] > 0:
        raise SolverError(f"the ball subproblem's Hessian is not positive definite (smallest eigenvalue {w[0]:.3e})")
    if kind == "l2":
        qh = V.T @ q
        size = lambda nu: float(np.linalg.norm(qh / (w + nu)))  # noqa: E731
        if size(0.0) <= t:
            return V @ (-qh / w)
        hi = float(np.linalg.norm(q)) / t
        import scipy.optimize  # here, not at the top: the run configuration imports BALL_NORMS (16 MB of scipy)

        nu = scipy.optimize.brentq(lambda nu: size(nu) - t, 0.0, hi, xtol=1e-300, rtol=1e-15, maxiter=500)
        s = V @ (-qh / (w + nu))
        return s * (t / np.linalg.norm(s))
    step = 1.0 / w[-1]
    s = project(np.zeros_like(q) if s0 is None else np.asarray(s0, dtype=np.float64), t, kind)
    y, a = s.copy(), 1.0
    for _ in range(max_iter):
        s_next = project(y - step * (q + H @ y), t, kind)
        moved = np.linalg.norm(s_next - s) <= tol * max(1.0, float(np.linalg.norm(s_next)))
        a_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * a * a))
        value_up = (q + 0.5 * H @ s_next) @ s_next > (q + 0.5 * H @ s) @ s
        y = s_next if value_up else s_next + ((a - 1.0) / a_next) * (s_next - s)
        a = 1.0 if value_up else a_next
        s = s_next
        if moved:
            break
    return _polish(q, H, t, kind, s)


def _residual(q, H, t, kind, s) -> float:
    return float(np.linalg.norm(s - project(s - (q + H @ s), t, kind)))


def _polish(q, H, t, kind, s):
    """The exact minimiser on the face of the ball that s lies on (linf: the clipped coordinates fixed at +-t;
    l1: the support with its signs, sum sign_i s_i = t when the ball is active), if it has a smaller
    projected-gradient residual than s."""
    n = len(q)
    if kind == "linf":
        fixed = np.abs(s) >= t * (1 - 1e-12)
        free = ~fixed
        cand = np.where(fixed, np.sign(s) * t, 0.0)
        if free.any():
            cand[free] = np.linalg.solve(H[np.ix_(free, free)], -(q[free] + H[np.ix_(free, fixed)] @ cand[fixed]))
    else:
        support = np.abs(s) > 1e-14 * t
        if np.abs(s).sum() < t * (1 - 1e-12):  # inside: the unconstrained minimiser
            cand = np.linalg.solve(H, -q)
        else:
            sign = np.sign(s[support])
            k = int(support.sum())
            K = np.zeros((k + 1, k + 1))
            K[:k, :k], K[:k, k], K[k, :k] = H[np.ix_(support, support)], sign, sign
            sol = np.linalg.solve(K, np.concatenate([-q[support], [t]]))
            cand = np.zeros(n)
            cand[support] = sol[:k]
    cand = project(cand, t, kind)
    return cand if _residual(q, H, t, kind, cand) < _residual(q, H, t, kind, s) else s
