"""Analytic FLOP counts: what a client or the server computes in a round, as a function of the problem's shape.

Every method module defines ``flops(p, shape) -> Work`` next to its update (``p`` its ``Params``, ``shape`` a
:class:`Shape`), built from the primitives below, so the cost model reads like the update it counts. A FLOP is
one floating-point add or multiply; a transcendental (exp, log, tanh) counts :data:`ELEMENTARY` FLOPs. The
counts are of the arithmetic the update needs on sparse rows (a row with nnz_j non-zeros costs 2 nnz_j in
A x), not of the simulator's own implementation, which may pad or batch differently.

Logistic regression, client i with m_i rows, nnz_i non-zeros and pairs_i = sum_j nnz_ij (nnz_ij + 1) / 2:

* :func:`loss_grad`: margins A x (2 nnz), phi and phi' per row (2 ELEMENTARY m), A^T c (2 nnz), 1/m_i and
  the ridge lam x (3 d): ``4 nnz + 2 E m + 3 d``;
* :func:`hessian`: h_ij = phi''(t_ij) (E m), then a_ja a_jb h_ij added to the packed Hessian (3 per pair), the
  ridge on the diagonal (d): ``3 pairs + E m + d`` (the margins are shared with the gradient);
* the server: Cholesky d^3/3 and two triangular solves 2 d^2 (:func:`cholesky_solve`); a symmetric eigen-
  decomposition with vectors 9 d^3 (Golub and Van Loan, Matrix Computations, 4th ed., 8.3) and two products
  4 d^2 (:func:`eigen_solve`); summing the participants' messages costs one add per received float.

PCA on the unit sphere (:mod:`mpifed.problems.pca`), client i with rows Z_i (m_i rows, nnz_i non-zeros):

* :func:`pca_loss_grad`: A_i x = (1/m_i) Z_i^T (Z_i x) (4 nnz + d), f_i = -x^T (A_i x) (2 d), grad_E f_i =
  -2 A_i x (d): ``4 nnz + 4 d`` (:func:`pca_grad` without the loss: ``4 nnz + 2 d``);
* the sphere's maps (Absil, Mahony and Sepulchre 2008): the projection P_x v = v - <x, v> x (:func:`tangent_projection`,
  4 d; it is also the vector transport) and the retraction R_x(v) = (x + v) / ||x + v|| (:func:`retraction`,
  4 d and one square root).

Neural networks (``shape.layers``: per weighted layer (rows per sample, d_in + 1, d_out); ``shape.batch``):
a forward pass costs 2 rows (d_in + 1) d_out per layer and sample, the backward pass twice that
(:func:`network_step`); a FOOF factor a^T a costs 2 rows (d_in + 1)^2 per sample (:func:`foof_factors`) and
its inverse (d_in + 1)^3 (:func:`factor_inverses`), or the Woodbury identity on the batch's rows when that is
cheaper (:func:`foof_solve`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ELEMENTARY = 10  # FLOPs charged for one exp, log or tanh (a libm call is about 10-20 multiply-adds)


@dataclass(frozen=True)
class Shape:
    """The federation as a FLOP model sees it.

    d: model dimension; m, nnz, pairs: (n,) rows, non-zeros and sum_j nnz_j (nnz_j + 1) / 2 per client;
    tau: participants per round; layers: neural networks only, (rows per sample, d_in + 1, d_out) per weighted
    layer; batch: the mini-batch size b of a network's local step.
    """

    d: int
    m: np.ndarray
    nnz: np.ndarray
    pairs: np.ndarray
    tau: int
    layers: tuple = ()
    batch: int = 0

    @property
    def n(self) -> int:
        return len(self.m)

    @property
    def T(self) -> int:
        return self.d * (self.d + 1) // 2


@dataclass(frozen=True)
class Work:
    """FLOPs of one round: ``step`` (n,) per client in the round's main client step, ``server`` after it;
    ``query`` (n,) and ``query_server`` per extra in-round exchange (a :class:`~mpifed.algorithms.base.Query`);
    ``init`` (n,) and ``init_server`` at setup (the clients' first upload, e.g. FedNL's H_i^0).

    A method whose queries are of several kinds (its module's ``QUERIES``: Newton-CG's Hessian-vector products
    and line-search trials) gives ``query`` and ``query_server`` as dicts {kind: cost}, one entry per kind; each
    exchange is then charged its kind's cost. The FLOP vectors then have one query column per kind, in
    ``QUERIES`` order (:meth:`vectors`)."""

    step: np.ndarray
    server: float
    query: np.ndarray | float | dict = 0.0
    query_server: float | dict = 0.0
    init: np.ndarray | float = 0.0
    init_server: float = 0.0

    def kinds(self, kinds=None) -> tuple:
        """The query kinds in column order: ``kinds`` (the module's ``QUERIES``), else the dict's own order."""
        if not isinstance(self.query, dict):
            return ("query",)
        return tuple(kinds) if kinds is not None else tuple(self.query)

    def vectors(self, n: int, kinds=None) -> np.ndarray:
        """(n, 2 + K): init, step, then one query column per kind (K = 1 for a single-cost method: (n, 3)),
        as the trace stores them."""
        query = [self.query[k] for k in self.kinds(kinds)] if isinstance(self.query, dict) else [self.query]
        return np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in
                         (self.init, self.step, *query)], axis=1)

    def servers(self, kinds=None) -> np.ndarray:
        """(2 + K,): the server's init, step and per-kind query FLOPs, in the columns of :meth:`vectors`."""
        if isinstance(self.query_server, dict):
            query = [float(self.query_server.get(k, 0.0)) for k in self.kinds(kinds)]
        else:
            query = [float(self.query_server)] * len(self.kinds(kinds))
        return np.asarray([self.init_server, self.server, *query], dtype=np.float64)


def loss_grad(s: Shape) -> np.ndarray:
    """f_i and grad f_i of the logistic GLM, per client."""
    return 4.0 * s.nnz + 2.0 * ELEMENTARY * s.m + 3.0 * s.d


def loss_only(s: Shape) -> np.ndarray:
    """f_i alone (a line search's trial point): margins, phi, the ridge."""
    return 2.0 * s.nnz + ELEMENTARY * s.m + 2.0 * s.d


def pca_loss_grad(s: Shape) -> np.ndarray:
    """f_i(x) = -x^T A_i x and grad_E f_i(x) = -2 A_i x of PCA, per client: Z_i x and Z_i^T t (2 nnz each), 1/m_i
    (d), the loss's dot product (2 d), the factor -2 (d)."""
    return 4.0 * s.nnz + 4.0 * s.d


def pca_grad(s: Shape) -> np.ndarray:
    """grad_E f_i(x) = -2 A_i x of PCA alone (a second point's gradient, no loss): 4 nnz + 2 d."""
    return 4.0 * s.nnz + 2.0 * s.d


def tangent_projection(d: int) -> float:
    """P_x v = v - <x, v> x onto the sphere's tangent space at x (and the transport by projection): the dot product
    2 d, then <x, v> x and the difference 2 d."""
    return 4.0 * d


def retraction(d: int) -> float:
    """R_x(v) = (x + v) / ||x + v|| on the sphere: the sum d, the norm 2 d and its square root (ELEMENTARY), the
    scaling d."""
    return 4.0 * d + ELEMENTARY


def gradient_and_coefficients(s: Shape) -> np.ndarray:
    """f_i, grad f_i and the rows' h_ij = phi''(a_ij^T x) / m_i kept for later Hessian-vector products."""
    return loss_grad(s) + (ELEMENTARY + 1.0) * s.m


def hvp(s: Shape) -> np.ndarray:
    """grad^2 f_i(x) v from the kept h_ij: margins A v (2 nnz), times h (m), A^T (h A v) (2 nnz), + lam v (2 d)."""
    return 4.0 * s.nnz + s.m + 2.0 * s.d


def loss_along(s: Shape, trials: int) -> np.ndarray:
    """f_i(x + a_j p) and <grad f_i(x + a_j p), p> at ``trials`` step lengths a_j in one pass: margins A x and A p
    (4 nnz) and <x, x>, <x, p>, <p, p> (6 d) once; per trial t = tx + a tp (2 m), phi and its sum (E m + m),
    phi'(t) tp and its sum (E m + 2 m), the ridge terms from the three scalars (8)."""
    return 4.0 * s.nnz + 6.0 * s.d + trials * ((5.0 + 2.0 * ELEMENTARY) * s.m + 8.0)


def diagonal_hessian(s: Shape) -> np.ndarray:
    """diag grad^2 f_i = (1/m_i) sum_j h_ij a_ij^2 + lam: h_ij (E m + m for 1/m_i), a square and a
    multiply-add per non-zero (3 nnz), the ridge (d); no pairs."""
    return 3.0 * s.nnz + (ELEMENTARY + 1.0) * s.m + s.d


def cg(d: int, iterations: float, product: float) -> float:
    """``iterations`` conjugate-gradient steps, each one ``product`` (M p) plus two dot products, three axpys
    and the scalars (10 d)."""
    return float(iterations) * (product + 10.0 * d)


def hessian(s: Shape) -> np.ndarray:
    """The packed Hessian (1/m_i) sum_j h_ij a_ij a_ij^T + lam I, given the margins of :func:`loss_grad`."""
    return 3.0 * s.pairs + ELEMENTARY * s.m + s.d


def glm_hvp(s: Shape) -> np.ndarray:
    """H_i(x) v of the logistic GLM without the matrix, given the margins of x (:func:`loss_grad`): phi'' per row
    (E m), then :func:`hvp` and the 1/m_i scaling (d): ``4 nnz + (E + 1) m + 3 d``."""
    return hvp(s) + ELEMENTARY * s.m + s.d


def coefficient_hessian(s: Shape) -> np.ndarray:
    """A packed Hessian from given coefficients h_ij (Newton-Learn's learned Hessians): no phi''."""
    return 3.0 * s.pairs + s.d


def squared_rows(s: Shape) -> np.ndarray:
    """(1/m_i) sum_j c_ij a_ij * a_ij (elementwise), the diagonal of (1/m_i) sum_j c_ij a_ij a_ij^T, from given row
    coefficients c: c_ij / m_i per row (m), then per non-zero the product with a_ij^2 (the data's own squares,
    fixed) and the sum into its slot (2 nnz)."""
    return 2.0 * s.nnz + s.m


def cholesky_solve(d: int) -> float:
    """(M)^{-1} g by Cholesky: d^3/3 for the factor, 2 d^2 for the two triangular solves."""
    return d**3 / 3.0 + 2.0 * d * d


def lu_solve(d: int) -> float:
    """M^{-1} g for a general (non-symmetric) d x d matrix by LU with partial pivoting (LAPACK getrf/getrs, what
    numpy.linalg.solve calls): 2 d^3 / 3 for the factor, 2 d^2 for the two triangular solves."""
    return 2.0 * d**3 / 3.0 + 2.0 * d * d


def thin_svd(rows: int, cols: int) -> float:
    """The thin SVD U S V^T of a rows x cols matrix with U and V (numpy's ``svd(full_matrices=False)``), M = max,
    N = min of the sides: the cheaper of Golub-Reinsch, 14 M N^2 + 8 N^3, and R-SVD (a QR first), 6 M N^2 + 20 N^3
    (Golub and Van Loan, Matrix Computations, 3rd ed., Fig. 5.4.1: Sigma, U_1, V)."""
    M, N = max(rows, cols), min(rows, cols)
    return float(min(14 * M * N * N + 8 * N**3, 6 * M * N * N + 20 * N**3))


def eigen_solve(d: int) -> float:
    """[M]_mu^{-1} g by a symmetric eigendecomposition (Option 1's projection): 9 d^3 + 4 d^2."""
    return 9.0 * d**3 + 4.0 * d * d


def unpack(d: int) -> float:
    """The server's packed-to-square copy and the diagonal shift: d^2 (copies counted as one FLOP per entry)."""
    return float(d * d)


def aggregate(s: Shape, floats) -> float:
    """The server's sum of ``floats`` received from each of tau participants."""
    return float(s.tau * floats)


def soft_threshold(d: int, lam1: float = 1.0) -> float:
    """prox_{t lam1 ||.||_1}(z) = sign(z) max(abs(z) - t lam1, 0) on d entries: the subtraction, the max and the
    sign's product, 3 d (abs and sign are free bit operations); nothing when lam1 = 0 (the prox is the identity)."""
    return 3.0 * d if lam1 else 0.0


ROOT_EVALUATIONS = 20  # nominal evaluations of a scalar root-finder (Brent's method, its bracket included)


def secular_root(d: int, per_entry: float) -> float:
    """A scalar root of a secular equation, a sum over d entries (a trust-region multiplier, LCD2's Polyak mu),
    by Brent's method: ROOT_EVALUATIONS evaluations at ``per_entry`` FLOPs per entry (the count the data decide,
    charged at this nominal value)."""
    return float(ROOT_EVALUATIONS * per_entry * d)


def compression(C) -> float:
    """A compressor (:mod:`mpifed.compressors`) on one client's T entries: Top-K one comparison per entry (TopLEK
    two), Rand-K and RandSeqK K draws, natural compression one rounding per entry, Rank-R an eigendecomposition
    of the d x d matrix, identity nothing."""
    name, T, k = type(C).__name__, C.T, getattr(C, "k", C.T)
    return {"Compressor": 0.0, "TopK": float(T), "TopLEK": 2.0 * T, "RandK": float(k), "RandSeqK": float(k),
            "Natural": float(T), "RankR": 9.0 * C.d**3}.get(name, float(T))


def payload(C) -> float:
    """Entries a compressed message carries (what the server adds and the client applies): K for the sparsifiers,
    R (d + 1) for Rank-R, all T otherwise."""
    name = type(C).__name__
    if name in ("TopK", "RandK", "RandSeqK", "TopLEK"):
        return float(min(C.k, C.T))
    if name == "RankR":
        return float(C.r * (C.d + 1))
    return float(C.T)


def forward(s: Shape) -> float:
    """One sample's forward pass through a network."""
    return float(sum(2 * rows * din * dout for rows, din, dout in s.layers))


def network_step(s: Shape) -> float:
    """One local step on a mini-batch of b samples: forward, backward (twice the forward), the update (3 per
    parameter)."""
    params = sum(din * dout for _, din, dout in s.layers)
    return 3.0 * s.batch * forward(s) + 3.0 * params


def network_gradient(s: Shape, ridge: bool = True) -> float:
    """One mini-batch gradient of a network, no update: the forward pass and the backward pass (twice the forward)
    on b samples, 3 b forward, and with ``ridge`` the term lam theta (2 per parameter); a step's gradient without
    :func:`network_step`'s update, or a second gradient on the same batch (a finite-difference Hessian-vector
    product, a Fisher's squared gradients)."""
    params = sum(din * dout for _, din, dout in s.layers)
    return 3.0 * s.batch * forward(s) + (2.0 * params if ridge else 0.0)


def foof_factors(s: Shape) -> float:
    """FOOF / K-FAC input factors a^T a of a batch, every layer (2 rows (d_in + 1)^2 per sample)."""
    return float(s.batch * sum(2 * rows * din * din for rows, din, _ in s.layers))


def gradient_factors(s: Shape) -> float:
    """K-FAC output-gradient factors g^T g of a batch, every layer."""
    return float(s.batch * sum(2 * rows * dout * dout for rows, _, dout in s.layers))


def factor_inverses(s: Shape, outputs: bool = False) -> float:
    """Inverting every layer's (d_in + 1)^2 factor (and with ``outputs`` its d_out^2 factor): a Cholesky
    factor and inverse, d^3 each."""
    return float(sum(din**3 + (dout**3 if outputs else 0) for _, din, dout in s.layers))


def preconditioned_update(s: Shape, outputs: bool = False) -> float:
    """Multiplying every layer's gradient (d_in + 1, d_out) by its factor inverse(s)."""
    return float(sum(2 * din * din * dout + (2 * din * dout * dout if outputs else 0) for _, din, dout in s.layers))


def foof_solve(s: Shape, stacked: int = 1) -> float:
    """(A + eps I)^{-1} grad for every layer, A = U^T U with U the R = ``stacked`` x batch x rows statistic rows
    (D = d_in + 1): the cheaper of a dense factor and solve (D^3 + 2 D^2 d_out) and the Woodbury identity
    (U U^T: 2 R^2 D, its Cholesky R^3 / 3, two products with U: 4 R D d_out), as the row-kept factors choose."""
    total = 0.0
    for rows, din, dout in s.layers:
        R = stacked * s.batch * rows
        total += min(din**3 + 2.0 * din * din * dout, 2.0 * R * R * din + R**3 / 3.0 + 4.0 * R * din * dout)
    return total


def per_client(value, s: Shape) -> np.ndarray:
    """A per-client count (scalar or (n,)) as an (n,) array."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (s.n,)).copy()
