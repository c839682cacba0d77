"""Linear minimisation oracles over unit balls, LMO(m) = argmin_{||s|| <= 1} <m, s> (Pethick et al. 2025, Scion;
Riabinin et al. 2025, Gluon, with one radius for all layers)::

    l2:        s = -m / ||m||_2                       (0 at m = 0)
    linf:      s = -sign(m)                           (a zero entry of m gives 0: any value in [-1, 1] is optimal)
    spectral:  per weighted layer, s_W = -U V^T for the thin SVD m_W = U S V^T (the layer's (d_in + 1, d_out)
               matrix, bias row included): the spectral-norm ball of each layer, Muon's orthogonalised step.
"""
from __future__ import annotations

import numpy as np

NORMS = ("l2", "linf", "spectral")


def lmo(m: np.ndarray, norm: str, layers: tuple = ()) -> np.ndarray:
    """LMO(m) over the unit ball of ``norm``; ``layers`` are the (lo, hi, rows, cols) slices of the spectral norm."""
    if norm == "l2":
        size = float(np.linalg.norm(m))
        return -m / size if size > 0 else np.zeros_like(m)
    if norm == "linf":
        return -np.sign(m)
    s = np.zeros_like(m)
    for lo, hi, rows, cols in layers:
        U, _, Vt = np.linalg.svd(m[lo:hi].reshape(rows, cols), full_matrices=False)
        s[lo:hi] = -(U @ Vt).ravel()
    return s


def layer_slices(model) -> tuple:
    """(lo, hi, rows, cols) of every weighted layer of a network (:class:`~mpifed.problems.nn.models.Model`)."""
    return tuple((int(lo), int(hi), int(layer.shape[0]), int(layer.shape[1]))
                 for layer, lo, hi in zip(model.weighted, model.offsets[:-1], model.offsets[1:]))
