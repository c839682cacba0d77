"""The composite L1 term R(x) = lam1 ||x||_1 of P(x) = (1/n) sum_i f_i(x) + lam1 ||x||_1, as pure functions.

The f_i keep their smooth part (lam/2 ||x||^2 included); R is handled by its prox, soft-thresholding::

    prox_{t R}(z)_j = sign(z_j) max(|z_j| - t lam1, 0)

(Parikh and Boyd, "Proximal Algorithms", 2014, Sec. 6.5.2). Optimality is measured by the norm of the
prox-gradient mapping (Beck, "First-Order Methods in Optimization", SIAM 2017, Def. 10.5 and Thm. 10.7):

    G_gamma(x) = (x - prox_{gamma R}(x - gamma grad f(x))) / gamma,

which is zero exactly at the minimisers of P for any gamma > 0; mpifed takes gamma = 1/L, L the smoothness
constant of f = (1/n) sum_i f_i (the step of proximal gradient descent, Beck's Thm. 10.15). With lam1 = 0,
G_gamma = grad f.
"""
from __future__ import annotations

import numpy as np


def soft_threshold(z, t: float, xp=np):
    """prox_{t ||.||_1}(z): sign(z) max(abs(z) - t, 0), elementwise (exact zeros below the threshold)."""
    return xp.sign(z) * xp.maximum(xp.abs(z) - t, 0.0)


def prox(z, step: float, lam1: float, xp=np):
    """prox_{step * lam1 ||.||_1}(z); the identity (z itself, not a copy) when lam1 = 0."""
    return soft_threshold(z, step * lam1, xp) if lam1 else z


def value(x, lam1: float) -> float:
    """R(x) = lam1 ||x||_1 (0.0 when lam1 = 0)."""
    return float(lam1 * np.abs(x).sum()) if lam1 else 0.0


def gradient_mapping(x, grad, gamma: float, lam1: float) -> np.ndarray:
    """G_gamma(x) = (x - prox_{gamma R}(x - gamma grad)) / gamma (grad f(x) itself when lam1 = 0)."""
    if not lam1:
        return np.asarray(grad)
    return (x - soft_threshold(x - gamma * grad, gamma * lam1)) / gamma


def subgradient_residual(x, grad, lam1: float) -> np.ndarray:
    """The distance of 0 to grad + lam1 d||x||_1, coordinate by coordinate: abs(grad_j + lam1 sign(x_j)) where
    x_j != 0 and max(abs(grad_j) - lam1, 0) where x_j = 0 (the KKT conditions of the L1 problem; zero at x*)."""
    return np.where(x != 0, np.abs(grad + lam1 * np.sign(x)), np.maximum(np.abs(grad) - lam1, 0.0))


def support_scores(x, x_star) -> dict:
    """nnz of x, and how well its support S matches S* of x_star: recall card(S and S*) / card(S*) and precision
    card(S and S*) / card(S) (NaN when the denominator's support is empty)."""
    s, s_star = x != 0, np.asarray(x_star) != 0
    both = float(np.count_nonzero(s & s_star))
    nnz, nnz_star = np.count_nonzero(s), np.count_nonzero(s_star)
    return {"nnz": float(nnz), "support_recall": both / nnz_star if nnz_star else np.nan,
            "support_precision": both / nnz if nnz else np.nan}
