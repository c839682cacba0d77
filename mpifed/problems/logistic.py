"""L2-regularised logistic regression as a GLM, for a whole block of clients at once.

Client i holds rows a_ij (j = 1..m_i) with labels b_ij in {-1, +1} and minimises

    f_i(x) = (1/m_i) sum_j phi(b_ij a_ij^T x) + (lam/2) ||x||^2,   phi(t) = log(1 + e^{-t}),

so that P(x) = (1/n) sum_i f_i(x) (Islamov, Qian, Richtarik, ICML 2021, eq. (1); FedNL's f_i carry the
regulariser too). Then

    grad f_i(x)   = (1/m_i) sum_j phi'(t_ij) b_ij a_ij + lam x,
    hess f_i(x)   = (1/m_i) sum_j h_ij(x) a_ij a_ij^T + lam I,   h_ij(x) = phi''(a_ij^T x),

with h_ij the Hessian coefficients that Newton-Learn (Islamov et al. 2021) learns.

Everything is computed for all of a rank's clients in one call. Sparse data (LIBSVM) use
precomputed scatter matrices, so a round is a few sparse mat-vecs: per-client sums
(R), gradients (G) and packed Hessians (M) whose entries are products a_ja a_jb of each
row's non-zeros. On the CPU the packed Hessians come instead from each row's pair positions
(:func:`mpifed.kernels.packed_hessians`: the same sums in the same order, without M).
Dense data (synthetic) use batched matrix products. In both paths a
client's numbers depend only on its own rows, never on the other clients of the block:
that is what makes results independent of the number of ranks.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from .. import kernels, tri
from ..backend import NUMPY, Backend


def phi(t, xp=np):
    """phi(t) = log(1 + e^{-t}), stable for large ``|t|``."""
    return xp.logaddexp(0.0, -t)


def phi_prime(t, xp=np):
    """phi'(t) = -1 / (1 + e^{t})."""
    return -0.5 * (1.0 - xp.tanh(0.5 * t))


PHI_THIRD_MAX = 1.0 / (6.0 * np.sqrt(3.0))  # sup |phi'''(t)|: the Lipschitz constant of phi''


def phi_second(t, xp=np):
    """phi''(t) = sigma(t) sigma(-t), the Hessian coefficient."""
    s = 0.5 * (1.0 + xp.tanh(0.5 * t))
    return s * (1.0 - s)


def canonical_rows(A, offsets):
    """(A as a float64 CSR matrix with summed duplicates and sorted column indices, the client offsets as int64):
    the form every block's row arithmetic assumes."""
    A = scipy.sparse.csr_matrix(A, dtype=np.float64)
    A.sum_duplicates()
    A.sort_indices()
    return A, np.asarray(offsets, dtype=np.int64)


class LogisticBlock:
    """The clients a rank hosts, with batched loss, gradient and Hessian evaluation.

    Everything is computed from the margins t = a_ij^T x through the row loss l(t, b) and its
    derivatives in t (:meth:`row_loss`, :meth:`row_slope`, :meth:`row_curvature`): a GLM with
    another row loss (:class:`~mpifed.problems.least_squares.LeastSquaresBlock`) overrides only those
    and the bounds below, and keeps the scatter matrices, chunking and sparse/dense paths.

    Parameters
    ----------
    A : scipy.sparse matrix (N, d)
        The rows of the block's clients, concatenated in client order.
    b : ndarray (N,)
        Labels in {-1, +1}.
    offsets : ndarray (n + 1,)
        Client i owns rows ``offsets[i]:offsets[i+1]``.
    lam : float
        The L2 regularisation lambda >= 0.
    m_max : int, optional
        Pad dense blocks to this many rows per client (pass the largest client of the whole
        federation, so padding never depends on the rank layout).
    """

    name = "logistic"
    curvature_bound = 0.25  # sup l'' (phi'' <= 1/4): the smoothness constants of the first-order methods
    curvature_floor = 0.0   # inf l'' = 0 (phi'' -> 0 far out): a client's strong convexity is lam alone
    third_derivative_bound = PHI_THIRD_MAX  # sup |l^(3)|: the Lipschitz constant of the Hessian (per ||a||^3)

    @staticmethod
    def row_loss(t, b, xp=np):
        """l(t, b) = phi(b t) per row."""
        return phi(b * t, xp)

    @staticmethod
    def row_slope(t, b, xp=np):
        """dl/dt = phi'(b t) b per row."""
        return phi_prime(b * t, xp) * b

    @staticmethod
    def row_curvature(t, b, xp=np):
        """d^2l/dt^2 = phi''(t) per row (phi'' is even and b = +-1): the Hessian coefficients."""
        return phi_second(t, xp)

    @staticmethod
    def row_loss_change(t, delta, b, xp=np):
        """l(t + delta, b) - l(t, b) per row without cancellation: log1p(sigma(-b t) expm1(-b delta))."""
        return xp.log1p(-phi_prime(b * t, xp) * xp.expm1(-b * delta))

    def __init__(self, A, b, offsets, lam: float, backend: Backend = NUMPY, m_max: int | None = None,
                 dense: bool | None = None):
        A, offsets = canonical_rows(A, offsets)
        self.bk, xp = backend, backend.xp
        self.lam = float(lam)
        self.N, self.d = A.shape
        self.n = len(offsets) - 1
        self.T = tri.size(self.d)
        self.sizes = np.diff(offsets)
        self.row_client = np.repeat(np.arange(self.n), self.sizes)
        row_weight = 1.0 / self.sizes[self.row_client]
        self.b = xp.asarray(np.asarray(b, dtype=np.float64))
        nnz_per_row = A.nnz / max(self.N, 1)
        self.dense = (nnz_per_row > self.d / 4) if dense is None else dense
        # R: (n, N) per-client weighted sums of per-row values.
        self._R = backend.csr(scipy.sparse.csr_matrix(
            (row_weight, np.arange(self.N), offsets), shape=(self.n, self.N)))
        self._parent = None  # a piece of a block (:meth:`clients`): (parent, lo, hi, first row, end row)
        if self.dense:
            self._init_dense(A, row_weight, m_max or int(self.sizes.max()))
        else:
            self._init_sparse(A, row_weight)

    # ----------------------------------------------------------------- setup
    # Built on first use (:meth:`__getattr__`): the packed-Hessian scatter matrix M (d^2/2 pairs per row's
    # non-zeros, n T columns), the gradient scatter G (n d rows) and the per-non-zero row and client ids.
    # The Hessian-free methods never touch them, which is what lets a rank hold d = 10^5..10^6 features.
    _LAZY = {"_diag": "_build_diag", "_row_of_nnz": "_build_row_of_nnz", "_client_of_nnz": "_build_client_of_nnz",
             "_G": "_build_G", "_M": "_build_M", "_support": "_build_support", "_pairs": "_build_pairs",
             "_packed_rows": "_build_packed_rows"}

    def __getattr__(self, name):
        build = LogisticBlock._LAZY.get(name)
        if build is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = getattr(self, build)()
        setattr(self, name, value)
        return value

    def _init_sparse(self, A, row_weight):
        self._A = self.bk.csr(A)
        self._M_offset = 0

    def _host_A(self):
        return self._A if self.bk.xp is np else self._A.get()

    def _build_diag(self):
        return self.bk.xp.asarray(tri.diagonal(self.d))

    def _build_row_of_nnz(self):
        if self._parent:
            parent, lo, hi, r0, r1 = self._parent
            a0, a1 = int(parent._A.indptr[r0]), int(parent._A.indptr[r1])
            return parent._row_of_nnz[a0:a1] - r0
        return self.bk.xp.asarray(np.repeat(np.arange(self.N), np.diff(self._host_A().indptr)))

    def _build_client_of_nnz(self):
        if self._parent:
            parent, lo, hi, r0, r1 = self._parent
            a0, a1 = int(parent._A.indptr[r0]), int(parent._A.indptr[r1])
            return parent._client_of_nnz[a0:a1] - lo
        return self.bk.xp.asarray(self.row_client[self.bk.to_host(self._row_of_nnz)])

    def _build_pairs(self):
        """(packed position of every non-zero pair (a <= b) of every row, the pairs' pointer per row (N + 1,), their
        products a_ra a_rb, or None when every value is 1.0): a piece's rows index its parent's arrays."""
        if self._parent:
            parent, lo, hi, r0, r1 = self._parent
            pos, ptr, products = parent._pairs
            return pos, ptr[r0:r1 + 1], products
        A = self._host_A()
        return kernels.row_pairs(A.indptr, A.indices, A.data, self.d)

    def _build_G(self):
        """G^T: row j scatters w_j a_j into client c(j)'s gradient slot."""
        if self._parent and not self.__dict__.get("_own_scatter"):
            parent, lo, hi, r0, r1 = self._parent
            return _row_range(parent._G, lo * self.d, hi * self.d, r0, r1 - r0)
        A, bk = self._host_A(), self.bk
        row_of_nnz, client_of_nnz = bk.to_host(self._row_of_nnz), bk.to_host(self._client_of_nnz)
        row_weight = 1.0 / self.sizes[self.row_client]
        G = scipy.sparse.csr_matrix((A.data * row_weight[row_of_nnz], client_of_nnz * self.d + A.indices, A.indptr),
                                    shape=(self.N, self.n * self.d))
        return bk.csr(G.T.tocsr())

    def _build_M(self):
        """M^T: row j scatters w_j a_ja a_jb (a <= b) into client c(j)'s packed Hessian."""
        if self._parent:
            parent, lo, hi, r0, r1 = self._parent
            # the big one keeps its column indices (no copy); its coefficients get r0 leading zeros instead
            return _row_range(parent._M, lo * self.T, hi * self.T, 0, parent._M_offset + r1)
        A, bk = self._host_A(), self.bk
        row_weight = 1.0 / self.sizes[self.row_client]
        return bk.csr(_scatter_matrix(A, row_weight, bk.to_host(self._row_of_nnz), bk.to_host(self._client_of_nnz),
                                      self.n, self.d, self.T))

    def _build_support(self):
        """Each client's columns: (index (n, K), the slot in the flattened (n, K) layout of every non-zero,
        the block's columns (U,)).

        The block's non-zeros touch U <= d distinct columns (ascending in ``columns``); row i of ``index``
        lists client i's distinct columns as positions in ``columns``, ascending, padded with the spare
        position U (:meth:`weighted_row_chunks` sums into U + 1 slots and drops the last). Two passes over ranges of
        clients of some SUPPORT_CHUNK non-zeros (the first finds K, the widest client), so the sort's temporaries
        never span the whole block.
        """
        A, n, d = self._host_A(), self.n, self.d
        columns = np.flatnonzero(np.bincount(A.indices, minlength=d))
        compact = np.zeros(d, dtype=np.int64)
        compact[columns] = np.arange(len(columns))
        ptr = A.indptr[np.concatenate([[0], np.cumsum(self.sizes)])]  # client i's non-zeros: ptr[i]:ptr[i+1]

        def pieces():
            lo = 0
            while lo < n:  # clients lo..hi-1: at least one, else about SUPPORT_CHUNK non-zeros
                hi = min(n, max(lo + 1, int(np.searchsorted(ptr, ptr[lo] + SUPPORT_CHUNK, side="right")) - 1))
                client = np.repeat(np.arange(hi - lo), np.diff(ptr[lo:hi + 1]))
                keys, inverse = np.unique(client * np.int64(d) + compact[A.indices[ptr[lo]:ptr[hi]]],
                                          return_inverse=True)
                owner, column = np.divmod(keys, d)
                yield lo, hi, owner, column, np.bincount(owner, minlength=hi - lo), inverse.ravel()
                lo = hi

        K = max([1] + [int(count.max(initial=0)) for *_, count, _ in pieces()])
        index = np.full((n, K), len(columns), dtype=np.int32 if d < 2**31 - 1 else np.int64)
        flat = np.empty(A.nnz, dtype=np.int32 if n * K < 2**31 else np.int64)
        for lo, hi, owner, column, count, inverse in pieces():
            slot = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
            index[lo + owner, slot] = column
            flat[ptr[lo]:ptr[hi]] = ((lo + owner) * K + slot)[inverse]
        return self.bk.xp.asarray(index), self.bk.xp.asarray(flat), self.bk.xp.asarray(columns)

    def _init_dense(self, A, row_weight, m_max):
        xp = self.bk.xp
        slot = np.arange(self.N) - np.repeat(np.cumsum(self.sizes) - self.sizes, self.sizes)
        A3 = np.zeros((self.n, m_max, self.d))
        A3[self.row_client, slot] = A.toarray()
        W = np.zeros((self.n, m_max))
        W[self.row_client, slot] = row_weight
        b3 = np.zeros((self.n, m_max))
        b3[self.row_client, slot] = self.bk.to_host(self.b)
        self._A3, self._W, self._b3 = xp.asarray(A3), xp.asarray(W), xp.asarray(b3)
        self._tri_rows, self._tri_cols = (xp.asarray(a) for a in tri.rows_cols(self.d))

    def clients(self, lo: int, hi: int, keep: bool = True) -> "LogisticBlock":
        """The block's clients lo..hi-1 as a block of their own (FedNL's chunked client step).

        Dense data are views; sparse data get their rows of the scatter matrices (a client's slots only
        ever receive its own rows, so the pieces are row ranges with shifted column indices). Every
        number a client gets is the one the whole block gives it. The pieces are kept, since a chunked
        method asks for the same ranges every round (rebuilding them took a quarter of a FedNL round on
        w8a); the Hessian scatter matrix's piece shares its parent's values and column indices, so the
        pieces together copy only its row pointers. ``keep`` False: a piece of its own, not kept, whose gradient
        scatter matrix is built from its own rows (the same entries in the same order; the block's, of n d rows,
        need not exist: at large d it would not fit).
        """
        if lo == 0 and hi == self.n:
            return self
        if not keep:
            sub = self._piece(lo, hi)
            sub._own_scatter = True
            return sub
        pieces = self.__dict__.setdefault("_pieces", {})
        if (lo, hi) not in pieces:
            pieces[lo, hi] = self._piece(lo, hi)
        return pieces[lo, hi]

    def _piece(self, lo: int, hi: int) -> "LogisticBlock":
        sub = object.__new__(type(self))
        sub.__dict__.update(self.__dict__)
        sub._pieces = {}
        r0, r1 = int(self.sizes[:lo].sum()), int(self.sizes[:hi].sum())
        sub.n, sub.N, sub.sizes = hi - lo, r1 - r0, self.sizes[lo:hi]
        sub.row_client = self.row_client[r0:r1] - lo
        sub.b = self.b[r0:r1]
        sub._R = _row_range(self._R, lo, hi, r0, r1 - r0)
        if self.dense:
            sub._A3, sub._W, sub._b3 = self._A3[lo:hi], self._W[lo:hi], self._b3[lo:hi]
        else:
            sub._A = self._A[r0:r1]
            for name in self._LAZY:  # built on first use, from the parent's (see _build_*)
                if name != "_diag":
                    sub.__dict__.pop(name, None)
            sub._parent = (self, lo, hi, r0, r1)
            sub._M_offset = self._M_offset + r0
        return sub

    def coefficients_of(self, values, lo: int, hi: int):
        """The part of ``values`` (per row, in the coefficient layout: (N,) sparse, (n, m_max) dense) that
        belongs to clients lo..hi-1: what ``self.clients(lo, hi)`` takes in that layout (a view)."""
        if self.dense:
            return values[lo:hi]
        return values[int(self.sizes[:lo].sum()):int(self.sizes[:hi].sum())]

    # -------------------------------------------------------------- per round
    def margins(self, x):
        """a_ij^T x for every row: (N,) sparse, (n, m_max) dense; x is (d,) or per client (n, d)."""
        xp = self.bk.xp
        if self.dense:
            X = x if x.ndim == 2 else xp.broadcast_to(x, (self.n, self.d))
            return (self._A3 @ X[:, :, None])[..., 0]
        if x.ndim == 1:
            return self._A @ x
        prod = self._A.data * x[self._client_of_nnz, self._A.indices]
        return xp.bincount(self._row_of_nnz, weights=prod, minlength=self.N)

    def _client_sum(self, per_row):
        """(1/m_i) sum_j per_row[ij] for each client."""
        if self.dense:
            return (self._W * per_row).sum(axis=1)
        return self._R @ per_row

    def _ridge(self, x):
        xp = self.bk.xp
        sq = (x * x).sum(axis=-1)
        return 0.5 * self.lam * (sq if x.ndim == 2 else xp.full(self.n, sq))

    def _labels(self):
        """The targets b_ij in the coefficient layout."""
        return self._b3 if self.dense else self.b

    def loss(self, x):
        """f_i(x) for each client, shape (n,)."""
        return self._client_sum(self.row_loss(self.margins(x), self._labels(), self.bk.xp)) + self._ridge(x)

    def derivatives(self, x, hessian: bool = True):
        """(f_i(x), grad f_i(x), packed hess f_i(x)) for all clients: (n,), (n, d), (n, T).

        The Hessian is skipped (None) when ``hessian`` is False.
        """
        loss, grad, t = self._loss_grad(x)
        hess = self.hessians_from_coefficients(self.row_curvature(t, self._labels(), self.bk.xp)) if hessian else None
        return loss, grad, hess

    def derivatives_and_coefficients(self, x):
        """(f_i(x), grad f_i(x), the Hessian coefficients h_ij(x) = l''(a_ij^T x) of every row (Islamov
        et al. 2021, Sec. 3)) from one pass over the margins: what Newton-Learn learns, and what FedNL-PP's participants
        build their Hessians from (:meth:`hessians_of`)."""
        loss, grad, t = self._loss_grad(x)
        return loss, grad, self.row_curvature(t, self._labels(), self.bk.xp)

    def _loss_grad(self, x):
        """(f_i(x), grad f_i(x), the margins a_ij^T x)."""
        loss, coef, t = self._loss_coefficients(x)
        return loss, self._weighted_rows(coef) + self.lam * x, t

    def _loss_coefficients(self, x):
        """(f_i(x), the gradient's row coefficients phi'(b_ij a_ij^T x) b_ij, the margins a_ij^T x)."""
        xp = self.bk.xp
        t = self.margins(x)
        labels = self._labels()
        return self._client_sum(self.row_loss(t, labels, xp)) + self._ridge(x), self.row_slope(t, labels, xp), t

    def _weighted_rows(self, coef):
        """(1/m_i) sum_j coef_ij a_ij for each client, shape (n, d)."""
        if self.dense:
            return ((self._W * coef)[:, None, :] @ self._A3)[:, 0, :]
        return (self._G @ coef).reshape(self.n, self.d)

    # ------------------------------------------------- Hessian-free products
    def hessian_coefficients(self, x):
        """h_ij(x) = l''(a_ij^T x) of every row (:meth:`row_curvature`), in the coefficient layout ((N,) sparse,
        (n, m_max) dense)."""
        return self.row_curvature(self.margins(x), self._labels(), self.bk.xp)

    def gradients(self, x):
        """(f_i(x) (n,), grad f_i(x) as :class:`ClientVectors`, h_ij(x)): the gradients without an (n, d) array."""
        loss, coef, t = self._loss_coefficients(x)
        return loss, ClientVectors(self, coef, x, self.lam), self.row_curvature(t, self._labels(), self.bk.xp)

    def hvp(self, x, v, h=None):
        """grad^2 f_i(x) v for every client, as :class:`ClientVectors`: (1/m_i) sum_j h_ij (a_ij^T v) a_ij + lam v.

        No matrix is formed: one pass over the rows for a_ij^T v and one scatter of the products, O(nnz).
        ``h``: the coefficients h_ij(x) when already known (:meth:`gradients` returns them), else computed.
        """
        h = self.hessian_coefficients(x) if h is None else h
        return ClientVectors(self, h * self.margins(v), v, self.lam)

    def along(self, x, direction, steps):
        """f_i(x + s p) and <grad f_i(x + s p), p> for every client and step s of ``steps`` (J,): two (n, J) arrays
        from one pass over the rows for a^T x and a^T p (a line search's trial points in one exchange)."""
        xp = self.bk.xp
        labels = self._labels()
        tx, tp = self.margins(x), self.margins(direction)
        xx, xd, dd = float(x @ x), float(x @ direction), float(direction @ direction)
        loss, slope = xp.empty((self.n, len(steps))), xp.empty((self.n, len(steps)))
        for j, s in enumerate(steps):
            t = tx + s * tp
            loss[:, j] = self._client_sum(self.row_loss(t, labels, xp)) + 0.5 * self.lam * (xx + 2 * s * xd + s * s * dd)
            slope[:, j] = self._client_sum(self.row_slope(t, labels, xp) * tp) + self.lam * (xd + s * dd)
        return loss, slope

    def weighted_row_chunks(self, coef):
        """(lo, hi, index, values) for chunks of clients: client i's (1/m_i) sum_j coef_ij a_ij.

        Sparse blocks: ``index`` (c, K) holds each client's distinct columns as positions in the block's U
        columns (:meth:`support_columns`; padded with the spare position U, whose values are 0), ``values``
        (c, K) the sums there, each a bincount over the client's own non-zeros in row order. Dense blocks: ``index`` is None and ``values`` the (c, d) rows (batched products).
        Chunks keep the temporaries near SUM_CHUNK_BYTES (dense) or SPARSE_SUM_CHUNK_BYTES (sparse) whatever the
        number of clients.
        """
        xp = self.bk.xp
        if self.dense:
            step = max(1, SUM_CHUNK_BYTES // (8 * self.d))
            for lo in range(0, self.n, step):
                hi = min(lo + step, self.n)
                yield lo, hi, None, ((self._W[lo:hi] * coef[lo:hi])[:, None, :] @ self._A3[lo:hi])[:, 0, :]
            return
        index, flat, columns = self._support
        K, ptr, starts = index.shape[1], self._A.indptr, np.concatenate([[0], np.cumsum(self.sizes)])
        weight = coef / xp.asarray(self.sizes[self.row_client], dtype=np.float64)
        # the chunk's double-double sum (dd_sum_sparse_rows) keeps ceil(c/32) rows of U + 1 slots and some ten
        # temporaries of that size: c is a multiple of 32 that keeps them near SPARSE_SUM_CHUNK_BYTES (from
        # d = 10^4 up, 32 clients), and the clients' values and non-zero products (K and nnz/n per client) within it too
        slots = 10 * 8 * (len(columns) + 1)
        per_client = 8 * 2 * max(K, self._A.nnz // max(self.n, 1))
        step = 32 * max(1, min(SPARSE_SUM_CHUNK_BYTES // slots, SPARSE_SUM_CHUNK_BYTES // (32 * per_client)))
        for lo in range(0, self.n, step):
            hi = min(lo + step, self.n)
            r0, r1 = int(starts[lo]), int(starts[hi])
            a0, a1 = int(ptr[r0]), int(ptr[r1])
            # each non-zero's row weight: a repeat on the host; cupy's repeat takes no array of counts, so a GPU
            # gathers through the (lazily built) row of every non-zero instead
            per_nnz = (xp.repeat(weight[r0:r1], np.diff(ptr[r0:r1 + 1])) if xp is np
                       else weight[self._row_of_nnz[a0:a1]])
            per_nnz *= self._A.data[a0:a1]  # in place: the row weight times the value
            at = flat[a0:a1].astype(np.int64)  # the index type bincount counts in (no second cast inside)
            at -= lo * K
            values = xp.bincount(at, weights=per_nnz, minlength=(hi - lo) * K)
            del per_nnz, at
            yield lo, hi, index[lo:hi], values.reshape(hi - lo, K)

    def support_columns(self):
        """The U columns the block's rows touch, ascending (None for a dense block, whose rows are full)."""
        return None if self.dense else self._support[2]

    def client_rows(self, i: int):
        """Client i's rows (m_i x d, host CSR) and labels: the shard DiSCO's preconditioner is built from."""
        r0, r1 = int(self.sizes[:i].sum()), int(self.sizes[:i + 1].sum())
        if self.dense:
            A = scipy.sparse.csr_matrix(self.bk.to_host(self._A3[i, :self.sizes[i]]))
            return A, self.bk.to_host(self._b3[i, :self.sizes[i]])
        return scipy.sparse.csr_matrix(self._host_A()[r0:r1]), self.bk.to_host(self.b[r0:r1])
    def loss_changes(self, x, p, steps):
        """f_i(x - a p) - f_i(x) for each client and each step a of ``steps`` (host floats), shape (n, len(steps)),
        from the row changes of :meth:`row_loss_change`: exact to rounding of the change itself, so a line search
        can compare decreases far below the loss's own rounding (the difference of two losses cannot)."""
        xp = self.bk.xp
        t, s, labels = self.margins(x), self.margins(p), self._labels()
        xp_, pp = float((x * p).sum()), float((p * p).sum())
        cols = [self._client_sum(self.row_loss_change(t, -a * s, labels, xp)) + 0.5 * self.lam * (a * a * pp - 2 * a * xp_)
                for a in steps]
        return xp.stack(cols, axis=1)

    def hvp_each(self, x, V):
        """grad^2 f_i(x) v_i for each client i with its own vector v_i (V: (n, d)), shape (n, d): from the client's
        rows only, O(nnz) (sparse) or two batched mat-vecs (dense); the Hessian is never formed."""
        return self.hvp_from_coefficients(self.row_curvature(self.margins(x), self._labels(), self.bk.xp), V)

    def hvp_from_coefficients(self, h, V):
        """(1/m_i) sum_j h_ij a_ij (a_ij^T v_i) + lam v_i for each client: :meth:`hvp_each` from given Hessian
        coefficients h (the coefficient layout of :meth:`derivatives_and_coefficients`), e.g. fixed through a CG solve."""
        return self._weighted_rows(h * self.margins(V)) + self.lam * V

    def squared_rows(self, coef):
        """(1/m_i) sum_j coef_ij a_ij * a_ij (elementwise squares) for each client, shape (n, d): the diagonal
        of (1/m_i) sum_j coef_ij a_ij a_ij^T. Sparse: one bincount over the non-zeros into the client's slots."""
        xp = self.bk.xp
        if self.dense:
            return ((self._W * coef)[:, None, :] @ (self._A3 * self._A3))[:, 0, :]
        data, rows = self._A.data, self._row_of_nnz
        w = (coef * self._row_weight())[rows] * (data * data)
        flat = self._client_of_nnz * self.d + self._A.indices
        return xp.bincount(flat, weights=w, minlength=self.n * self.d).reshape(self.n, self.d)

    def fisher_diagonals(self, X):
        """The diagonal of each client's empirical Fisher at its own point x_i (X: (n, d)), shape (n, d):
        (1/m_i) sum_j (l'(a_ij^T x_i, b_ij) a_ij)^2 elementwise, the squared per-row gradients of the data term."""
        return self.squared_rows(self.row_slope(self.margins(X), self._labels(), self.bk.xp) ** 2)

    def _row_weight(self):
        """1/m_i of each row's client (sparse layout)."""
        return 1.0 / self.bk.xp.asarray(self.sizes, dtype=np.float64)[self.bk.xp.asarray(self.row_client)]

    def hessians_from_coefficients(self, h):
        """Packed (1/m_i) sum_j h_ij a_ij a_ij^T + lam I for each client, shape (n, T)."""
        if self.dense:
            packed = self._dense_hessians(self._A3, self._W, h)
        elif self.compiled():
            return kernels.packed_hessians(self.packed_rows(), h, self.lam, self.d)
        else:
            packed = (self._M @ self._M_columns(h)).reshape(self.n, self.T)
        packed[:, self._diag] += self.lam
        return packed

    def compiled(self) -> bool:
        """Whether the packed Hessians of this (sparse, host) block come from the compiled kernels
        (:func:`mpifed.kernels.packed_hessians`): the same bits as the scatter matrix's product, which is then
        never built."""
        return not self.dense and self.bk.xp is np and kernels.enabled()

    def packed_rows(self):
        """What the compiled kernels form the packed Hessians from (:func:`mpifed.kernels.packed_hessians`): the
        rows' pairs (:func:`mpifed.kernels.row_pairs`: 4 bytes a pair where the scatter matrix takes 12, plus 8 for
        the products of non-binary data), each client's first and end row, every row's 1/m_i."""
        return self._packed_rows

    def _build_packed_rows(self):
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        return (*self._pairs, starts[:-1], starts[1:], 1.0 / self.sizes[self.row_client])

    def hessian_diagonals(self, h):
        """diag hess f_i = (1/m_i) sum_j h_ij a_ij^2 + lam for each client, shape (n, d), from the coefficients h
        of every row (the layout of :meth:`derivatives_and_coefficients`): O(nnz), no packed matrix (FedNL's
        diagonal option). A client's entries sum its own rows in row order, whatever the block."""
        return self.squared_rows(h) + self.lam

    def hessians_of(self, clients, h):
        """:meth:`hessians_from_coefficients` for the block's clients ``clients`` only (host ints), from the
        coefficients h of all rows: (len(clients), T), each row the bits the whole block gives that client
        (FedNL-PP: only the round's participants need their Hessians)."""
        xp, clients = self.bk.xp, np.asarray(clients, dtype=np.int64)
        if self.dense:
            at = xp.asarray(clients)
            packed = self._dense_hessians(self._A3[at], self._W[at], h[at])
        elif self.compiled():
            return kernels.packed_hessians(self.packed_rows(), h, self.lam, self.d, clients)
        else:
            rows = (clients[:, None] * self.T + np.arange(self.T)).ravel()
            packed = (_select_rows(self._M, xp.asarray(rows), xp) @ self._M_columns(h)).reshape(len(clients), self.T)
        packed[:, self._diag] += self.lam
        return packed

    def _M_columns(self, h):
        """The block's row coefficients h in the columns of its scatter matrix (a piece's columns start
        at its parent's first row, see :meth:`clients`)."""
        if not self._M_offset:
            return h
        xp = self.bk.xp
        return xp.concatenate([xp.zeros(self._M_offset, dtype=h.dtype), h])

    def _dense_hessians(self, A3, W, h):
        """Packed (1/m_i) sum_j h_ij a_ij a_ij^T (no lam) of dense client rows A3 (c, m, d), a few clients at a
        time: the full (clients, d, d) products are never held for the whole block."""
        xp, d, c = self.bk.xp, self.d, A3.shape[0]
        packed = xp.empty((c, self.T))
        budget = CHUNK_BYTES if xp is np else tri.GPU_CHUNK_BYTES
        step = max(1, budget // (8 * d * max(d, A3.shape[1])))
        for lo in range(0, c, step):
            at = slice(lo, lo + step)
            weighted = A3[at] * (W[at] * h[at])[:, :, None]
            full = weighted.transpose(0, 2, 1) @ A3[at]
            packed[at] = full[:, self._tri_rows, self._tri_cols]
        return packed

    def rows(self, J):
        """The data vectors a_ij of each client's local rows J (n, r): shape (n, r, d) (Newton-Learn's uplink)."""
        xp = self.bk.xp
        if self.dense:
            return self._A3[xp.arange(self.n)[:, None], xp.asarray(J)]
        start = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        flat = (start[:, None] + np.asarray(J)).ravel()
        return self._A[xp.asarray(flat)].toarray().reshape(self.n, np.shape(J)[1], self.d)

    def row_norms(self):
        """||a_ij|| for every row, in the coefficient layout: (N,) sparse, (n, m_max) dense."""
        xp = self.bk.xp
        if self.dense:
            return xp.sqrt((self._A3 ** 2).sum(axis=2))
        return xp.sqrt(xp.asarray(self._A.multiply(self._A).sum(axis=1)).ravel())

    def gram(self):
        """Packed (1/m_i) A_i^T A_i per client (coefficients 1, no regulariser)."""
        xp = self.bk.xp
        ones = xp.ones_like(self._W) if self.dense else xp.ones(self.N)
        packed = self.hessians_from_coefficients(ones)
        packed[:, self._diag] -= self.lam
        return packed


class ClientVectors:
    """One d-vector per client, held as (1/m_i) sum_j coef_ij a_ij + shift without an (n, d) array.

    ``shift`` (d,) is the same for every client (the regulariser's lam x or lam v: ``scale`` lam times ``x`` or ``v``,
    kept apart so that no further d-vector is held). :meth:`chunks` gives the
    data parts chunk by chunk (:meth:`LogisticBlock.weighted_row_chunks`); :meth:`dense` builds the (n, d)
    array, for small d and for tests.
    """

    def __init__(self, block: LogisticBlock, coef, shift, scale: float = 1.0):
        self.block, self.coef, self._shift, self.scale = block, coef, shift, scale

    @property
    def shift(self):
        """The common d-vector, scale times the vector given: formed on demand (:func:`block_sum` forms it a
        piece at a time instead, from :attr:`scale` and :meth:`shift_of`)."""
        return self._shift if self.scale == 1.0 else self.scale * self._shift

    def shift_of(self, at):
        """The shift's entries ``at`` (a slice): the bits of ``shift[at]``."""
        return self._shift[at] if self.scale == 1.0 else self.scale * self._shift[at]

    def chunks(self):
        return self.block.weighted_row_chunks(self.coef)

    def dense(self):
        b, xp = self.block, self.block.bk.xp
        columns = b.support_columns()
        out = xp.zeros((b.n, b.d))
        for lo, hi, index, values in self.chunks():
            if index is None:
                out[lo:hi] = values
            else:
                compact = xp.zeros((hi - lo, len(columns) + 1))
                xp.put_along_axis(compact, index.astype(np.int64), values, axis=1)
                out[lo:hi, columns] = compact[:, :-1]
        return out + self.shift


def _row_range(matrix, r0: int, r1: int, c0: int, columns: int):
    """Rows r0..r1-1 of a CSR matrix whose non-zeros there all lie in columns c0..c0+columns-1, as a
    (r1 - r0) x columns CSR matrix (scipy or cupyx) with the same entries in the same order."""
    start, stop = int(matrix.indptr[r0]), int(matrix.indptr[r1])
    data, indices = matrix.data[start:stop], matrix.indices[start:stop]
    indices = indices - c0 if c0 else indices
    piece = type(matrix)((data, indices, matrix.indptr[r0:r1 + 1] - start), shape=(r1 - r0, columns))
    # scipy copies a view of less than half its base; the piece is to share its parent's values (and
    # column indices when they do not shift), so hand the views back
    piece.data, piece.indices = data, indices
    return piece


def _select_rows(matrix, rows, xp):
    """Rows ``rows`` (device ints, any order) of a CSR matrix (scipy or cupyx), same entries in the same order."""
    ptr = matrix.indptr
    start = ptr[rows]
    count = ptr[rows + 1] - start
    new_ptr = xp.concatenate([xp.zeros(1, dtype=count.dtype), xp.cumsum(count)])
    at = xp.arange(int(new_ptr[-1]))
    row = xp.searchsorted(new_ptr[1:], at, side="right")  # which selected row each entry comes from
    pos = start[row] + (at - new_ptr[row])
    return type(matrix)((matrix.data[pos], matrix.indices[pos], new_ptr), shape=(len(rows), matrix.shape[1]))


SUM_CHUNK_BYTES = 1 << 24  # weighted_row_chunks, dense rows: clients per chunk so its temporaries take some 16 MB
SPARSE_SUM_CHUNK_BYTES = 1 << 22  # and sparse rows: some 4 MB (the chunks' sums are added in place, in client order)
SUPPORT_CHUNK = 1 << 16  # non-zeros per piece of the support's construction (its sort's temporaries: a few MB)
CHUNK_BYTES = 1 << 20  # dense Hessians: clients per step so that their (c, d, d) products take some 1 MB
PAIR_CHUNK = 1 << 18  # pairs built per step of _scatter_matrix (bounds its temporaries to some 12 MB)


def _scatter_matrix(A, row_weight, row_of_nnz, client_of_nnz, n: int, d: int, T: int):
    """M^T (n T x N, CSR): column j holds w_j a_ja a_jb at client c(j)'s packed position of (a, b), a <= b.

    Built a range of rows at a time into preallocated arrays (the pair lists of the whole block, several
    int64 arrays of the number of pairs, are never held at once), with 32-bit indices wherever they fit;
    every entry is the same product, in the same place and order, as building all pairs in one go.
    """
    per_row = np.diff(A.indptr).astype(np.int64)
    pair_ptr = np.concatenate([[0], np.cumsum(per_row * (per_row + 1) // 2)])
    pairs, N = int(pair_ptr[-1]), A.shape[0]
    index = np.int32 if max(pairs, n * T, N) < np.iinfo(np.int32).max else np.int64
    values = np.empty(pairs)
    targets = np.empty(pairs, dtype=index)
    lo = 0
    while lo < N:  # rows lo..hi-1: at least one row, else about PAIR_CHUNK pairs
        hi = max(lo + 1, int(np.searchsorted(pair_ptr, pair_ptr[lo] + PAIR_CHUNK, side="right")) - 1)
        hi = min(hi, N)
        start = A.indptr[lo]
        first, second, _ = _row_pairs(A.indptr[lo:hi + 1] - start)
        first += start
        second += start
        at = slice(int(pair_ptr[lo]), int(pair_ptr[hi]))
        np.multiply(A.data[first] * A.data[second], row_weight[row_of_nnz[first]], out=values[at])
        targets[at] = client_of_nnz[first] * T + tri.flat_index(A.indices[first], A.indices[second], d)
        lo = hi
    M = scipy.sparse.csr_matrix((values, targets, pair_ptr.astype(index)), shape=(N, n * T), copy=False)
    del values, targets
    return M.T.tocsr()


def _row_pairs(indptr):
    """All non-zero pairs (p, q), p <= q, within each CSR row, and the CSR pointer of the pairs."""
    nnz = int(indptr[-1])
    row_end = np.repeat(indptr[1:], np.diff(indptr))
    partners = row_end - np.arange(nnz)  # nnz p pairs with p, p+1, ..., row_end-1
    first = np.repeat(np.arange(nnz), partners)
    start = np.repeat(np.cumsum(partners) - partners, partners)
    second = first + (np.arange(first.size) - start)
    per_row = np.diff(indptr)
    pair_ptr = np.concatenate([[0], np.cumsum(per_row * (per_row + 1) // 2)])
    return first, second, pair_ptr
