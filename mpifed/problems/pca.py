"""Federated PCA on the unit sphere, for a whole block of clients at once.

Client i holds rows z_ij (j = 1..m_i) and the uncentered second moment A_i = Z_i^T Z_i / m_i (no intercept
column); the federation solves

    min_{||x|| = 1}  f(x) = (1/n) sum_i f_i(x),   f_i(x) = -x^T A_i x,

whose minimisers are +-v_1, the leading eigenvector of the mean second moment A = (1/n) sum_i A_i, with
f* = -lambda_1(A) (PCA, the first application Demidovich, Malinovsky and Richtarik 2024 name for their
problem (1), "Streamlining in the Riemannian Realm"). With equal client sizes (the papers' split) A is the
second moment of all the federation's rows. The Euclidean gradient is grad f_i(x) = -2 A_i x; the Riemannian
one (its projection onto the tangent space of the sphere) is taken by the methods
(:mod:`mpifed.algorithms.riemannian.sphere`).

No client's d x d matrix is formed: A_i x = (1/m_i) Z_i^T (Z_i x) comes from the block's rows, one sparse
product over the block for every client's margins Z_i x and one scatter of the weighted rows (sparse data),
or batched products of the padded (clients, m_max, d) rows (dense data). Labels are not used.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from ..backend import NUMPY, Backend
from .logistic import canonical_rows


class PCABlock:
    """The clients a rank hosts, with batched products A_i x, losses -x^T A_i x and Euclidean gradients.

    Parameters follow :class:`~mpifed.problems.logistic.LogisticBlock` (``b`` and ``lam`` are not used):
    A (N, d) the block's rows in client order, offsets (n + 1,) client i's rows offsets[i]:offsets[i+1],
    m_max the largest client of the whole federation (padding of dense blocks never depends on the ranks).
    """

    manifold = "sphere"

    def __init__(self, A, b, offsets, lam: float = 0.0, backend: Backend = NUMPY, m_max: int | None = None,
                 dense: bool | None = None):
        A, offsets = canonical_rows(A, offsets)
        self.bk, xp = backend, backend.xp
        self.N, self.d = A.shape
        self.n = len(offsets) - 1
        self.sizes = np.diff(offsets)
        row_client = np.repeat(np.arange(self.n), self.sizes)
        row_weight = 1.0 / self.sizes[row_client]
        self.dense = (A.nnz / max(self.N, 1) > self.d / 4) if dense is None else dense
        if self.dense:
            m_max = m_max or int(self.sizes.max(initial=1))
            slot = np.arange(self.N) - np.repeat(offsets[:-1], self.sizes)
            A3, W = np.zeros((self.n, m_max, self.d)), np.zeros((self.n, m_max))
            A3[row_client, slot], W[row_client, slot] = A.toarray(), row_weight
            self._A3, self._W = xp.asarray(A3), xp.asarray(W)
        else:
            row_of_nnz = np.repeat(np.arange(self.N), np.diff(A.indptr))
            client_of_nnz = row_client[row_of_nnz]
            self._A = backend.csr(A)
            self._row_of_nnz, self._client_of_nnz = xp.asarray(row_of_nnz), xp.asarray(client_of_nnz)
            # G^T: row j scatters w_j z_j into client c(j)'s slot, so (G t)_i = (1/m_i) sum_j t_j z_j
            G = scipy.sparse.csr_matrix((A.data * row_weight[row_of_nnz], client_of_nnz * self.d + A.indices,
                                         A.indptr), shape=(self.N, self.n * self.d))
            self._G = backend.csr(G.T.tocsr())

    def products(self, x):
        """A_i x for every client, (n, d); x is one point (d,) or one per client (n, d)."""
        xp = self.bk.xp
        if self.dense:
            X = x if x.ndim == 2 else xp.broadcast_to(x, (self.n, self.d))
            t = (self._A3 @ X[:, :, None])[..., 0]                 # (n, m_max): z_ij^T x_i
            return ((self._W * t)[:, None, :] @ self._A3)[:, 0, :]
        if x.ndim == 1:
            t = self._A @ x
        else:
            prod = self._A.data * x[self._client_of_nnz, self._A.indices]
            t = xp.bincount(self._row_of_nnz, weights=prod, minlength=self.N)
        return (self._G @ t).reshape(self.n, self.d)

    def derivatives(self, x, hessian: bool = False):
        """(f_i(x) = -x^T A_i x (n,), Euclidean gradients -2 A_i x (n, d), None): the block's losses and gradients."""
        Ax = self.products(x)
        return -(Ax * x).sum(axis=-1), -2.0 * Ax, None

    def loss(self, x):
        """f_i(x) for each client, (n,)."""
        return self.derivatives(x)[0]

    def top_eigenvalues(self, x0, steps: int):
        """Each client's Rayleigh quotient x^T A_i x after ``steps`` power iterations x <- A_i x / ||A_i x|| from x0,
        all clients at once: (n,), a lower estimate of lambda_max(A_i) (the methods' smoothness constants)."""
        xp = self.bk.xp
        X = xp.broadcast_to(x0 / xp.linalg.norm(x0), (self.n, self.d))
        for _ in range(steps):
            Y = self.products(X)
            norm = xp.linalg.norm(Y, axis=1)
            X = xp.where(norm[:, None] > 0, Y / xp.where(norm > 0, norm, 1.0)[:, None], X)
        return (self.products(X) * X).sum(axis=1)
