"""Ridge regression (least squares) as a GLM, for a whole block of clients at once.

Client i holds rows a_ij (j = 1..m_i) with targets b_ij (a LIBSVM file's labels, or the synthetic set's) and
minimises

    f_i(x) = (1/(2 m_i)) sum_j (a_ij^T x - b_ij)^2 + (lam/2) ||x||^2,

so that P(x) = (1/n) sum_i f_i(x), as on the logistic problem. Then

    grad f_i(x) = (1/m_i) sum_j (a_ij^T x - b_ij) a_ij + lam x,
    hess f_i(x) = (1/m_i) sum_j a_ij a_ij^T + lam I        (constant: the Hessian coefficients are all 1).

P is a quadratic, so one Newton step from any point lands on x* = (G + lam I)^{-1} (1/n) sum_i A_i^T b_i / m_i
with G = (1/n) sum_i A_i^T A_i / m_i; the driver's reference solve is that step (its further steps repeat x*).
lam = 0 is allowed: x* is then unique exactly when G is positive definite (at least d independent rows), and the
reference solve stops with a one-line error when it is not.

Only the row loss differs from :class:`~mpifed.problems.logistic.LogisticBlock`, whose scatter matrices,
chunking and sparse/dense paths are reused: l(t, b) = (t - b)^2 / 2, l' = t - b, l'' = 1, l''' = 0.
"""
from __future__ import annotations

import numpy as np

from .logistic import LogisticBlock


class LeastSquaresBlock(LogisticBlock):
    """A block of clients of the ridge-regression problem (arguments as :class:`LogisticBlock`; b: the targets)."""

    name = "least-squares"
    curvature_bound = 1.0         # l'' = 1: L = lam + lambda_max(G), exactly
    curvature_floor = 1.0         # inf l'' = 1: f_i is (lam + lambda_min(A_i^T A_i / m_i))-strongly convex, exactly
    third_derivative_bound = 0.0  # the Hessian is constant

    @staticmethod
    def row_loss(t, b, xp=np):
        r = t - b
        return 0.5 * r * r

    @staticmethod
    def row_slope(t, b, xp=np):
        return t - b

    @staticmethod
    def row_curvature(t, b, xp=np):
        return xp.ones_like(t)

    @staticmethod
    def row_loss_change(t, delta, b, xp=np):
        """l(t + delta, b) - l(t, b) = delta (delta + 2 (t - b)) / 2, without cancellation."""
        return 0.5 * delta * (delta + 2.0 * (t - b))
