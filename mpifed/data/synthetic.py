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


_ROTATION_STREAM = 2**31 - 2  # reserved key of the PCA federation's shared eigenvectors
PCA_EIGENGAP = 0.1  # lambda_1 - lambda_2 of the synthetic PCA federation unless --eigengap says otherwise
PCA_HETEROGENEITY = 0.5  # client i's eigenvalues are lambda_k (1 + 0.5 cos(2 pi (i/n + k/d)))


def pca_spectrum(features: int, eigengap: float) -> np.ndarray:
    """The eigenvalues of the synthetic PCA federation's mean second moment: lambda_1 = 1, then 1 - gap down to
    (1 - gap)/10, evenly spaced (so lambda_1 - lambda_2 = gap exactly)."""
    rest = (1.0 - eigengap) * (1.0 - 0.9 * np.linspace(0.0, 1.0, features - 1)) if features > 1 else np.empty(0)
    return np.concatenate([[1.0], rest])


def synthetic_pca_clients(client_ids, n_clients: int, samples_per_client: int, features: int, eigengap: float,
                          seed: int) -> sp.csr_matrix:
    """Rows of the given clients of the synthetic PCA federation, whose mean second moment has a set eigengap.

    With V a random rotation shared by all clients (stream ``[seed, 2**31 - 2]``) and lambda the spectrum of
    :func:`pca_spectrum`, client c's rows are Z_c = sqrt(m) U_c diag(sqrt(lambda^c)) V^T, U_c the orthonormal
    (m x d) Q factor of a Gaussian matrix from ``default_rng([seed, c])``, and lambda^c_k = lambda_k (1 + 0.5
    cos(2 pi (c/n + k/d))) (no shift when n = 1). So A_c = Z_c^T Z_c / m = V diag(lambda^c) V^T exactly, the
    clients differ (heterogeneous, their leading eigenvectors too), and their mean is V diag(lambda) V^T, since
    the cosines over c = 0..n-1 sum to zero: lambda_1 - lambda_2 = ``eigengap`` up to rounding. Needs m >= d.
    """
    m = _check_int("samples_per_client", samples_per_client, 1)
    d = _check_int("features", features, 1)
    n = _check_int("clients", n_clients, 1)
    seed = _check_int("seed", seed, 0)
    if m < d:
        raise DataError(f"the synthetic PCA federation needs samples_per_client >= features; got {m} < {d}")
    ids = [_check_int("client id", c, 0, _ROTATION_STREAM - 1) for c in np.asarray(client_ids).reshape(-1).tolist()]
    V = np.linalg.qr(np.random.default_rng([seed, _ROTATION_STREAM]).standard_normal((d, d)))[0]
    lam = pca_spectrum(d, eigengap)
    k = np.arange(d)
    blocks = [np.empty((0, d))]
    for c in ids:  # one vectorized draw per client, never per sample
        U = np.linalg.qr(np.random.default_rng([seed, c]).standard_normal((m, d)))[0]
        shift = PCA_HETEROGENEITY * np.cos(2.0 * np.pi * (c / n + k / d)) if n > 1 else 0.0
        blocks.append(np.sqrt(m) * (U * np.sqrt(lam * (1.0 + shift))) @ V.T)
    return sp.csr_matrix(np.vstack(blocks))
