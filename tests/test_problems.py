"""The logistic GLM block against finite differences and a plain per-client loop."""
import numpy as np
import pytest
import scipy.sparse

from mpifed import tri
from mpifed.data import add_intercept, load, paper_split
from mpifed.problems.logistic import LogisticBlock, phi, phi_prime, phi_second


def plain_client(A, b, x, lam):
    """f_i, grad f_i, Hessian of one client, written out from the logistic-regression formulas
    (mpifed.problems.logistic's docstring)."""
    A = A.toarray() if scipy.sparse.issparse(A) else A
    m = len(b)
    t = A @ x
    f = np.sum(np.log1p(np.exp(-b * t))) / m + lam / 2 * x @ x
    g = A.T @ (-b / (1 + np.exp(b * t))) / m + lam * x
    s = 1 / (1 + np.exp(-t))
    H = (A.T * (s * (1 - s))) @ A / m + lam * np.eye(len(x))
    return f, g, H


@pytest.fixture(scope="module")
def a9a_block():
    ds = load("a9a")
    part = paper_split(ds.A.shape[0], 80, 407)
    rows, offsets = part.block(3, 9)  # six clients, as a rank would hold them
    return add_intercept(ds.A[rows]), ds.b[rows], offsets


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.data("a9a")
def test_block_matches_plain_per_client_formulas(a9a_block, dense):
    A, b, offsets = a9a_block
    block = LogisticBlock(A, b, offsets, lam=1e-3, dense=dense)
    x = np.random.default_rng(0).standard_normal(A.shape[1]) * 0.3
    loss, grad, hess = block.derivatives(x)
    for i in range(block.n):
        lo, hi = offsets[i], offsets[i + 1]
        f, g, H = plain_client(A[lo:hi], b[lo:hi], x, 1e-3)
        assert loss[i] == pytest.approx(f, rel=1e-13)
        np.testing.assert_allclose(grad[i], g, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(tri.unpack(hess[i], block.d), H, rtol=1e-12, atol=1e-15)


@pytest.mark.data("a9a")
def test_gradient_and_hessian_match_finite_differences(a9a_block):
    A, b, offsets = a9a_block
    block = LogisticBlock(A, b, offsets, lam=1e-2)
    rng = np.random.default_rng(1)
    x, v = rng.standard_normal(block.d) * 0.2, rng.standard_normal(block.d)
    eps = 1e-5
    f_plus, g_plus, _ = block.derivatives(x + eps * v)
    f_minus, g_minus, _ = block.derivatives(x - eps * v)
    _, grad, hess = block.derivatives(x)
    # Central differences: directional derivative of f_i and Hessian-vector product.
    np.testing.assert_allclose((f_plus - f_minus) / (2 * eps), grad @ v, rtol=1e-7, atol=1e-10)
    hv = np.einsum("nij,j->ni", tri.unpack(hess, block.d), v)
    np.testing.assert_allclose((g_plus - g_minus) / (2 * eps), hv, rtol=1e-6, atol=1e-9)


def test_phi_derivatives_match_finite_differences_and_are_stable():
    t = np.linspace(-30, 30, 121)
    eps = 1e-6
    np.testing.assert_allclose((phi(t + eps) - phi(t - eps)) / (2 * eps), phi_prime(t), atol=1e-9)
    np.testing.assert_allclose((phi_prime(t + eps) - phi_prime(t - eps)) / (2 * eps), phi_second(t), atol=1e-9)
    assert np.all(np.isfinite(phi(np.array([-800.0, 800.0]))))
    assert phi(np.array([-800.0]))[0] == pytest.approx(800.0)


@pytest.mark.data("a9a")
def test_per_client_iterates_and_block_independence(a9a_block):
    """A client's numbers do not depend on the other clients in its block (rank independence)."""
    A, b, offsets = a9a_block
    whole = LogisticBlock(A, b, offsets, lam=1e-3)
    x = np.full(A.shape[1], 0.05)
    _, grad, hess = whole.derivatives(x)
    lo, hi = offsets[2], offsets[4]
    part = LogisticBlock(A[lo:hi], b[lo:hi], offsets[2:5] - lo, lam=1e-3)
    _, grad2, hess2 = part.derivatives(x)
    assert np.array_equal(grad[2:4], grad2) and np.array_equal(hess[2:4], hess2)
    # Per-client iterates (local methods): client i evaluated at X[i] equals evaluating it alone.
    X = np.random.default_rng(2).standard_normal((whole.n, whole.d)) * 0.1
    per_client = whole.loss(X)
    for i in range(whole.n):
        single = LogisticBlock(A[offsets[i]:offsets[i + 1]], b[offsets[i]:offsets[i + 1]], [0, offsets[i + 1] - offsets[i]], 1e-3)
        assert per_client[i] == pytest.approx(single.loss(X[i])[0], rel=1e-14)


def test_packed_storage_round_trip_and_frobenius():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 7, 7))
    M = M + M.transpose(0, 2, 1)
    packed = tri.pack(M)
    assert packed.shape == (4, 28)
    np.testing.assert_array_equal(tri.unpack(packed, 7), M)
    np.testing.assert_allclose(tri.frobenius(packed), np.linalg.norm(M, axis=(1, 2)), rtol=1e-14)
    i, j = np.triu_indices(7)
    np.testing.assert_array_equal(tri.flat_index(i, j, 7), np.arange(28))


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.data("a9a")
def test_rows_and_row_norms_read_each_clients_own_rows(a9a_block, dense):
    A, b, offsets = a9a_block
    block = LogisticBlock(A, b, offsets, 1e-3, dense=dense, m_max=407)
    J = np.array([[0, 406, 5]] * 3 + [[17, 1, 2]] * 3)
    got = block.rows(J)
    dense_A = A.toarray()
    for i in range(6):
        np.testing.assert_array_equal(got[i], dense_A[offsets[i] + J[i]])
    norms = np.linalg.norm(dense_A, axis=1)
    measured = block.row_norms()
    if dense:
        measured = np.concatenate([measured[i, :407] for i in range(6)])
    np.testing.assert_allclose(measured, norms, rtol=1e-15)
