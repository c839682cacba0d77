"""FedNL-CR: FedNL with cubic regularisation (Safaryan, Islamov, Qian, Richtarik, ICML 2022,
Algorithm 4 "FedNL-CR"; the rules follow FedNL_CR in the authors' public numpy code, FedNL-Public,
which is the reference here rather than the paper's text).

Clients run FedNL's Option 2 round unchanged (:func:`mpifed.algorithms.second_order.fednl.client_step`):
send grad f_i(x^k), S_i = C(grad^2 f_i(x^k) - H_i^k) and l_i^k = ||H_i^k - grad^2 f_i(x^k)||_F.
The server steps with the minimiser of the cubic model (Nesterov and Polyak 2006)

    h^k = argmin_h  <grad f(x^k), h> + 1/2 <(H^k + l^k I) h, h> + (L_*/6) ||h||^3,
    x^{k+1} = x^k + h^k,   H^{k+1} = H^k + alpha mean(S_i),

with L_* the Lipschitz constant of the Hessian (``hessian_lipschitz``). H^k + l^k I >= grad^2 f(x^k)
(as l_i >= ||H_i - grad^2 f_i||_2), so the model is convex here; :func:`cubic_step` also solves
indefinite ones. As L_* -> 0 the step tends to FedNL Option 2's -(H^k + l^k I)^{-1} grad f(x^k).

Default L_*: the logistic bound ``|phi'''| <= 1/(6 sqrt 3)`` gives
||grad^2 f_i(x) - grad^2 f_i(y)|| <= (1/m_i) sum_j ||a_ij||^3 / (6 sqrt 3) ||x - y||, averaged over
the clients (the authors' ``get_M``). Bits: FedNL Option 2's (d + 1 floats + S_i up, d floats down).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from ... import tri
from . import fednl
from ...problems.logistic import PHI_THIRD_MAX
from ...errors import ConfigError
from ..base import Aggregate, SolverError


@dataclass(frozen=True)
class Params:
    """fednl: C and alpha (Option 2 Hessian learning); L: the Hessian Lipschitz constant L_*."""

    fednl: fednl.Params
    L: float
    uses = ("compressor", "alpha", "hessian_lipschitz")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        base = fednl.Params.from_options(dataclasses.replace(opts, option=2), fed)
        L = opts.hessian_lipschitz
        if L is None and fed.block.third_derivative_bound == 0:
            raise ConfigError(f"fednl-cr on --problem {fed.block.name}: the Hessian is constant, so L_* = 0 and the "
                              f"cubic term vanishes; give --hessian-lipschitz > 0 (or use fednl)")
        if L is None:  # every rank computes its clients' bounds; all ranks average them in client order
            L = float(np.mean(np.concatenate(fed.comm.allgather(logistic_lipschitz(fed.block)))))
        return cls(base, L)


def logistic_lipschitz(block) -> np.ndarray:
    """Per-client bound (1/m_i) sum_j ||a_ij||^3 / (6 sqrt 3) on the Lipschitz constant of grad^2 f_i."""
    xp = block.bk.xp
    cubes = block.row_norms() ** 3
    if block.dense:  # (n, m_max), zero padding
        totals = cubes.sum(axis=1)
    else:
        totals = xp.bincount(xp.asarray(block.row_client), weights=cubes, minlength=block.n)
    return np.asarray(block.bk.to_host(totals)) / block.sizes * PHI_THIRD_MAX


def cubic_step(A: np.ndarray, g: np.ndarray, L: float) -> np.ndarray:
    """The global minimiser of m(h) = g^T h + h^T A h / 2 + (L/6) ||h||^3 (A symmetric, L > 0).

    h is characterised by (A + (L r/2) I) h = -g, A + (L r/2) I >= 0, r = ||h|| (Nesterov and
    Polyak 2006, Thm 10). With A = U diag(w) U^T and c = U^T g, r is the root of the decreasing
    secular function ||h(r)|| - r on r > max(0, -2 w_min / L), found by Brent's method to machine
    precision. In the "hard case" (c orthogonal to the bottom eigenvector and ||h(r)|| < r there)
    the bottom eigenvector is added to reach ||h|| = r.
    """
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(g))):
        raise SolverError("the cubic model has NaN or inf entries")
    w, U = np.linalg.eigh(A)
    c = U.T @ g
    r_low = max(0.0, -2.0 * w[0] / L)
    gnorm = float(np.linalg.norm(g))

    def norm_h(r):
        return float(np.linalg.norm(c / (w + 0.5 * L * r)))

    if gnorm == 0.0 and r_low == 0.0:
        return np.zeros_like(g)
    # The bracket's top: there (w_min + L r/2) r >= ||g||, so ||h(r)|| <= r (rationalised root: no cancellation).
    root = math.sqrt(w[0] ** 2 + 2.0 * L * gnorm)
    r_high = (2.0 * gnorm / (w[0] + root) if w[0] > 0 else (root - w[0]) / L) * (1 + 1e-12) + 1e-300
    lo = r_low * (1 + 4 * np.finfo(float).eps) + 1e-300
    shift_lo = w + 0.5 * L * lo
    if np.all(shift_lo > 0) and norm_h(lo) <= lo:  # hard case
        rest = c[1:] / (w[1:] - w[0]) if r_low > 0 else c[1:] / shift_lo[1:]
        h = -U[:, 1:] @ rest
        return h + math.sqrt(max(r_low**2 - float(h @ h), 0.0)) * U[:, 0]
    r = scipy.optimize.brentq(lambda r: norm_h(r) - r, lo, max(r_high, lo * 2), xtol=1e-300,
                              rtol=4 * np.finfo(float).eps, maxiter=500)
    return -U @ (c / (w + 0.5 * L * r))


def client_init(p: Params, block, x0, streams):
    return fednl.client_init(p.fednl, block, x0, streams)


def server_init(p: Params, agg: Aggregate, x0):
    return fednl.server_init(p.fednl, agg, x0)


def client_step(p: Params, block, state, x, streams):
    return fednl.client_step(p.fednl, block, state, x, streams)


def server_step(p: Params, state: fednl.ServerState, x, agg: Aggregate):
    A = tri.unpack(state.H, len(x)) + float(agg.mean("l")) * np.eye(len(x))
    h = cubic_step(A, agg.grad / agg.n, p.L)
    H_next = state.H + p.fednl.alpha * agg.mean("S")
    return fednl.ServerState(H_next, {"cubic_step_norm": float(np.linalg.norm(h))}), x + h, len(x) * p.fednl.float_bits
