"""Synthetic heterogeneous logistic-regression federation, generated client by client.

Every client's data comes from its own stream ``np.random.default_rng([seed, client_id])``, so a rank that
generates only its own clients gets exactly the rows that any other layout of clients over ranks would.
The ground truth ``x_true`` comes from the reserved stream ``[seed, 2**31 - 1]``, shared by all clients.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mpifed.errors import DataError

_TRUTH_STREAM = 2**31 - 1  # reserved key, so client ids stay below it
SYNTHETIC_DEFAULTS = {"clients": 32, "samples_per_client": 100, "features": 20}  # the embedded default run


def _check_int(label: str, value, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise DataError(f"{label} must be an integer {rng}, got {value!r}")
    return int(value)


def ground_truth(features: int, seed: int) -> np.ndarray:
    """The shared parameter vector ``x_true ~ N(0, I_d)`` of the synthetic federation."""
    return np.random.default_rng([seed, _TRUTH_STREAM]).standard_normal(features)


def synthetic_clients(client_ids, samples_per_client: int, features: int,
                      seed: int, condition: float | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """Generate the data of the given clients.

    Client ``c`` draws, from ``default_rng([seed, c])`` and in this order: a mean shift ``mu_c ~ N(0, I_d)``,
    features ``a = (mu_c + N(0, I_d)) / sqrt(2 d)`` (so ``E||a||^2 = 1``), and labels ``+1`` with probability
    ``sigmoid(a . x_true)``, else ``-1``. The shift makes clients heterogeneous (non-i.i.d.).

    With ``condition`` = kappa, feature k (k = 0..d-1) is scaled by kappa^(-k / (2 (d - 1))) before the labels
    are drawn, so the features' covariance over the federation, E[a a^T] = diag(kappa^(-k / (d - 1))) / d, has
    condition number exactly kappa (the sample Gram matrix (1/N) A^T A approaches it as N grows): the
    ill-conditioned ridge and logistic problems. The draws are the same as without it.

    Parameters
    ----------
    client_ids : sequence of int
        Clients to generate, each in ``[0, 2**31 - 2]``; rows are concatenated in this order.
    samples_per_client : int
        ``m >= 1`` rows per client.
    features : int
        Dimension ``d >= 1``.
    seed : int
        Federation seed ``>= 0``.

    Returns
    -------
    A : scipy.sparse.csr_matrix
        float64, shape ``(len(client_ids) * m, d)`` (dense values stored as CSR).
    b : numpy.ndarray
        float64 labels in ``{-1, +1}``.
    """
    m = _check_int("samples_per_client", samples_per_client, 1)
    d = _check_int("features", features, 1)
    seed = _check_int("seed", seed, 0)
    ids = [_check_int("client id", c, 0, _TRUTH_STREAM - 1) for c in np.asarray(client_ids).reshape(-1).tolist()]
    from scipy.special import expit  # here, not at import: scipy.special costs every process some 4 MB

    x_true = ground_truth(d, seed)
    scale = 1.0 if condition is None or d == 1 else float(condition) ** (-np.arange(d) / (2.0 * (d - 1)))
    blocks, labels = [np.empty((0, d))], [np.empty(0)]
    for c in ids:  # one vectorized draw per client, never per sample
        rng = np.random.default_rng([seed, c])
        shift = rng.standard_normal(d)
        a = (shift + rng.standard_normal((m, d))) / np.sqrt(2.0 * d) * scale
        blocks.append(a)
        labels.append(np.where(rng.random(m) < expit(a @ x_true), 1.0, -1.0))
    return sp.csr_matrix(np.vstack(blocks)), np.concatenate(labels)
