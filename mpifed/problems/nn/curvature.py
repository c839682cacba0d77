"""FOOF and K-FAC curvature factors, EMA, damping and preconditioned gradients, per weighted layer.

Weight layout: ``W`` is ``(d_in+1, d_out)`` (bias last row) and ``s = a W``, so the per-sample gradient is
``dW_n = a_n g_n^T`` and its row-major vectorisation is ``a_n (x) g_n``. Hence the block of the empirical
Fisher of layer ``l`` is ``E[(a a^T) (x) (g g^T)] ~ A (x) G`` and, by ``(A (x) G)^-1 = A^-1 (x) G^-1``,
the preconditioned gradient is ``A^-1 (grad W) G^-1`` (row-major vec).

Factors (``B`` samples; conv layers have ``T`` spatial locations):

- dense: ``A = (1/B) sum_n a_n a_n^T``, ``G = (1/B) sum_n g_n g_n^T`` (Martens & Grosse 2015, K-FAC, sec. 3).
- conv (KFC, Grosse & Martens 2016, sec. 3.1, under spatial homogeneity and spatially uncorrelated
  derivatives): ``Omega = E[[[A]]^T [[A]]] = (1/B) sum_n sum_t a_nt a_nt^T`` (a *sum* over locations of the
  unfolded patches with the homogeneous 1) and ``Gamma = (1/|T|) E[DS^T DS] = (1/(B T)) sum_n sum_t g_nt g_nt^T``.
- FOOF (Benzing 2022; FedPM sec. 3.3, eq. 11): ``A`` only, the uncentered covariance of the layer inputs,
  the same matrix as K-FAC's ``A`` (for conv, KFC's ``Omega``, so FOOF is K-FAC with ``G = I``); the step is
  ``vec((A + eps I)^-1 vec^-1(g))`` (eq. 11), i.e. ``(A + eps I)^-1 grad W`` on the input side.
- EMA (FedRCO eq. 7): ``A_k = alpha E[a a^T] + (1 - alpha) A_{k-1}``, same for ``G``.
- Damping (Martens & Grosse 2015, sec. 6.3, factored Tikhonov; FedRCO eq. 6, 8):
  ``pi = sqrt((tr(A)/dim A) / (tr(G)/dim G))``, ``A + pi sqrt(eps) I``, ``G + sqrt(eps)/pi I``.
  FedRCO prints ``pi = sqrt(tr(A)/tr(G))`` without the dimensions; Martens & Grosse's trace-norm form,
  which is invariant to layer width, is used here. ``pi = 1`` when either trace is 0 (e.g. zero gradients).
"""

from __future__ import annotations

import math

import numpy as np

from mpifed.errors import ConfigError


def check_eps(eps) -> float:
    """``eps`` as a float, or a one-line ConfigError unless ``0 < eps < inf``."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        e = float("nan")
    if not (e > 0 and math.isfinite(e)):
        raise ConfigError(f"damping eps must be a finite number > 0, got {eps!r}")
    return e


def kfac_factors(st):
    """``(A, G)`` of one layer from its :class:`~mpifed.problems.nn.models.LayerStats` (see module docstring)."""
    a, g = st.a, st.g
    B = a.shape[0]
    if st.kind == "conv":
        T = a.shape[1]
        a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
        return a.T @ a / B, g.T @ g / (B * T)
    return a.T @ a / B, g.T @ g / B


def sample_labels(xp, logits, u):
    """Labels drawn from the model's predictive distribution, ``y_n ~ softmax(z_n)``, by inverse CDF of ``u``.

    Back-propagating these instead of the data labels makes ``G`` a Monte-Carlo estimate of the true Fisher
    factor (Martens & Grosse 2015, sec. 5) rather than the empirical one. ``u``: ``(B,)`` uniforms in
    ``[0, 1)`` (from the client's random streams, so the draw does not depend on the rank layout).
    """
    z = logits - logits.max(axis=1, keepdims=True)
    cdf = xp.cumsum(xp.exp(z), axis=1)
    cdf = cdf / cdf[:, -1:]
    return xp.minimum((cdf <= u[:, None]).sum(axis=1), logits.shape[1] - 1)


def foof_factor(st):
    """FOOF's ``A`` (uncentered input covariance; conv: KFC's ``Omega``) of one layer."""
    a = st.a.reshape(-1, st.a.shape[-1])
    return a.T @ a / st.a.shape[0]


def ema(old, new, alpha: float):
    """FedRCO eq. 7: ``alpha * new + (1 - alpha) * old`` (``old=None``: ``new``); works on nested tuples/lists."""
    if not (0 < alpha <= 1):
        raise ConfigError(f"EMA weight alpha must be in (0, 1], got {alpha!r}")
    if old is None:
        return new
    if isinstance(new, (list, tuple)):
        return type(new)(ema(o, n, alpha) for o, n in zip(old, new))
    return alpha * new + (1 - alpha) * old


def pi_correction(A, G) -> float:
    """``pi = sqrt((tr(A)/dim A) / (tr(G)/dim G))`` (Martens & Grosse 2015, sec. 6.3)."""
    ta, tg = float(A.trace()) / A.shape[0], float(G.trace()) / G.shape[0]
    return math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0


def damped(A, G, eps, xp=np):
    """``(A + pi sqrt(eps) I, G + sqrt(eps)/pi I)``."""
    r, pi = math.sqrt(check_eps(eps)), pi_correction(A, G)
    return A + pi * r * xp.eye(A.shape[0]), G + r / pi * xp.eye(G.shape[0])


def _spd_inv(M, xp):
    Mi = xp.linalg.inv(M)
    return (Mi + Mi.T) / 2  # keep it exactly symmetric


def kfac_inverses(A, G, eps, xp=np):
    """Inverses of the damped factors, ``(A_d^-1, G_d^-1)`` (reused for several steps by a lazy-inverse method)."""
    Ad, Gd = damped(A, G, eps, xp)
    return _spd_inv(Ad, xp), _spd_inv(Gd, xp)


def kfac_precondition(dW, Ainv, Ginv):
    """``A^-1 dW G^-1`` = ``(A (x) G)^-1 vec(dW)`` in row-major vec (FedRCO eq. 8)."""
    return Ainv @ dW @ Ginv


def foof_precondition(dW, A, eps, xp=np):
    """``(A + eps I)^-1 dW`` (FedPM eq. 11, damped)."""
    return xp.linalg.solve(A + check_eps(eps) * xp.eye(A.shape[0]), dW)


def kfac_direction(model, grad, factors, eps, xp=np):
    """Flat K-FAC step for ``model``: per layer ``A_d^-1 dW G_d^-1``; ``factors`` = list of ``(A, G)``."""
    out = []
    for dW, (A, G) in zip(model.views(grad), factors):
        out.append(kfac_precondition(dW, *kfac_inverses(A, G, eps, xp)).ravel())
    return xp.concatenate(out)


def foof_direction(model, grad, factors, eps, xp=np):
    """Flat FOOF step for ``model``: per layer ``(A + eps I)^-1 dW``; ``factors`` = list of ``A``."""
    check_eps(eps)
    return xp.concatenate([foof_precondition(dW, A, eps, xp).ravel()
                           for dW, A in zip(model.views(grad), factors)])
