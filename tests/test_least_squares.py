"""--problem least-squares: the ridge block against finite differences, scipy and plain numpy; the reference
solution; the smoothness constants the methods take from the block; the ill-conditioned synthetic set."""
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from mpifed import tri
from mpifed.data import synthetic_clients
from mpifed.driver import run
from mpifed.errors import MpifedError
from mpifed.problems import BLOCKS, LeastSquaresBlock
from sparse_data import sparse_binary

LAM = 1e-3


def _data(n=4, m=30, d=6, seed=3, dense=True):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n * m, d)) * (rng.random((n * m, d)) < (1.0 if dense else 0.4))
    b = rng.standard_normal(n * m)
    offsets = np.arange(n + 1) * m
    return A, b, offsets


def _plain(A, b, offsets, lam):
    """Per-client f_i, grad f_i, hess f_i from the formulas of the module docstring."""
    out = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        out.append((A[lo:hi], b[lo:hi], hi - lo))
    def f(x):
        return np.array([0.5 * np.sum((Ai @ x - bi) ** 2) / m + 0.5 * lam * x @ x for Ai, bi, m in out])
    def g(x):
        return np.array([Ai.T @ (Ai @ x - bi) / m + lam * x for Ai, bi, m in out])
    def h():
        return np.array([Ai.T @ Ai / m + lam * np.eye(A.shape[1]) for Ai, bi, m in out])
    return f, g, h


@pytest.mark.parametrize("dense", [True, False])
def test_block_matches_plain_formulas_and_finite_differences(dense):
    A, b, offsets = _data(dense=dense)
    block = LeastSquaresBlock(scipy.sparse.csr_matrix(A), b, offsets, LAM, dense=dense)
    assert block.dense == dense
    f, g, h = _plain(A, b, offsets, LAM)
    x = np.random.default_rng(0).standard_normal(A.shape[1])
    loss, grad, hess = block.derivatives(x)
    np.testing.assert_allclose(loss, f(x), rtol=1e-13)
    np.testing.assert_allclose(grad, g(x), rtol=1e-12, atol=1e-14)
    for i in range(block.n):
        np.testing.assert_allclose(tri.unpack(hess[i], block.d), h()[i], rtol=1e-12, atol=1e-14)
    # central differences: exact for a quadratic up to rounding
    eps = 1e-5
    for k in range(block.d):
        e = np.zeros(block.d)
        e[k] = eps
        np.testing.assert_allclose((block.loss(x + e) - block.loss(x - e)) / (2 * eps), grad[:, k], rtol=1e-7, atol=1e-9)
        dg = (block.derivatives(x + e, hessian=False)[1] - block.derivatives(x - e, hessian=False)[1]) / (2 * eps)
        np.testing.assert_allclose(dg, np.array([tri.unpack(hh, block.d)[:, k] for hh in hess]), rtol=1e-7, atol=1e-9)
    # the Hessian coefficients l'' are all 1, and the pieces of a chunked step are the block's own numbers
    assert np.all(block.derivatives_and_coefficients(x)[2] == 1.0)
    piece = block.clients(1, 3)
    assert isinstance(piece, LeastSquaresBlock)
    np.testing.assert_array_equal(piece.derivatives(x)[1], grad[1:3])


def test_registry_and_bounds():
    assert BLOCKS["least-squares"] is LeastSquaresBlock
    assert LeastSquaresBlock.curvature_bound == 1.0 and LeastSquaresBlock.third_derivative_bound == 0.0
    assert BLOCKS["logistic"].curvature_bound == 0.25


def test_reference_solution_is_the_ridge_solve_and_newton_takes_one_step(tmp_path):
    """x* of the driver's reference solve against scipy's LSQR on the stacked, client-weighted system, and Newton
    converged after one round (equal client sizes: P(x) = (1/2N)||Ax - b||^2 + lam/2 ||x||^2)."""
    path = sparse_binary()
    out = run({"dataset": path, "clients": 8, "samples_per_client": 50, "problem": "least-squares",
               "algorithm": "newton", "quiet": True, "out": str(tmp_path / "t.h5")})
    from mpifed.data import load

    ds = load(path)
    A, b = ds.A[:400].toarray(), ds.b[:400]
    N, d = A.shape
    # min (1/2N)||Ax - b||^2 + lam/2||x||^2  <=>  lsqr on [A; sqrt(N lam) I] x = [b; 0]
    stacked = scipy.sparse.vstack([scipy.sparse.csr_matrix(A), np.sqrt(N * LAM) * scipy.sparse.eye(d)])
    x_lsqr = scipy.sparse.linalg.lsqr(stacked, np.concatenate([b, np.zeros(d)]), atol=1e-15, btol=1e-15,
                                      iter_lim=10000)[0]
    x_solve = np.linalg.solve(A.T @ A / N + LAM * np.eye(d), A.T @ b / N)
    np.testing.assert_allclose(x_solve, x_lsqr, rtol=1e-7, atol=1e-9)
    assert out.status == "converged" and out.rounds == 1
    np.testing.assert_allclose(out.x, x_solve, rtol=1e-10, atol=1e-12)
    f_star = 0.5 * np.mean((A @ x_solve - b) ** 2) + 0.5 * LAM * x_solve @ x_solve
    np.testing.assert_allclose(out.metrics["loss"][-1], f_star, rtol=1e-13)
    assert abs(out.metrics["f_gap"][-1]) < 1e-14


def test_gd_step_is_one_over_the_exact_smoothness_constant(tmp_path):
    """On least squares L = lam + lambda_max(A^T A / N) (l'' = 1, not the logistic 1/4): GD's first step is
    x^1 = -grad P(0) / L, checked against numpy."""
    A, b = synthetic_clients(range(6), 20, 5, seed=2)
    A = A.toarray()
    out = run({"clients": 6, "samples_per_client": 20, "features": 5, "seed": 2, "problem": "least-squares",
               "algorithm": "gd", "rounds": 1, "tol": 0.0, "quiet": True, "out": str(tmp_path / "g.h5")})
    L = np.linalg.eigvalsh(A.T @ A / len(b))[-1] + LAM
    g0 = -A.T @ b / len(b)
    np.testing.assert_allclose(out.x, -g0 / L, rtol=1e-12)


def test_condition_scales_the_features_and_keeps_the_draws():
    A0, b0 = synthetic_clients(range(4), 50, 6, seed=1)
    A1, b1 = synthetic_clients(range(4), 50, 6, seed=1, condition=1e4)
    scale = 1e4 ** (-np.arange(6) / 10.0)
    np.testing.assert_allclose(A1.toarray(), A0.toarray() * scale, rtol=1e-15)
    big, _ = synthetic_clients(range(400), 100, 6, seed=1, condition=1e4)
    w = np.linalg.eigvalsh((big.T @ big).toarray() / big.shape[0])
    assert 0.7e4 < w[-1] / w[0] < 1.4e4  # the population's kappa = 1e4 up to sampling


def test_test_loss_is_the_least_squares_loss(tmp_path):
    from mpifed.data import load

    path = sparse_binary()
    out = run({"dataset": path, "clients": 4, "samples_per_client": 50, "problem": "least-squares",
               "algorithm": "gd", "rounds": 2, "tol": 0.0, "quiet": True, "test_dataset": path,
               "out": str(tmp_path / "t.h5")})
    ds = load(path)
    t = ds.A @ out.x
    expected = 0.5 * np.mean((t - ds.b) ** 2) + 0.5 * LAM * out.x @ out.x
    np.testing.assert_allclose(out.metrics["test_loss"][-1], expected, rtol=1e-12)
    np.testing.assert_allclose(out.metrics["test_accuracy"][-1], np.mean(ds.b * t > 0))


@pytest.mark.parametrize("values, words", [
    ({"condition": 0.5}, "--condition = 0.5 is out of range"),
    ({"condition": 10.0, "dataset": "a9a"}, "only with --dataset synthetic"),
    ({"algorithm": "fednl-cr"}, "give --hessian-lipschitz"),
    ({"algorithm": "cnl"}, "give --hessian-lipschitz"),
    ({"problem": "squares"}, "valid: logistic, least-squares"),
])
def test_bad_input_is_one_line(values, words, tmp_path):
    with pytest.raises(MpifedError) as err:
        run({"problem": "least-squares", "quiet": True, "out": str(tmp_path / "e.h5"), **values})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_lam_zero_needs_an_invertible_gram_matrix(tmp_path):
    """lam = 0: fine on full-rank data (x* = the least-squares solution of numpy's lstsq), a one-line error on
    rank-deficient data (the sparse file has tied columns)."""
    A, b = synthetic_clients(range(4), 25, 5, seed=4)
    out = run({"clients": 4, "samples_per_client": 25, "features": 5, "seed": 4, "problem": "least-squares",
               "lam": 0.0, "algorithm": "newton", "quiet": True, "out": str(tmp_path / "z.h5")})
    np.testing.assert_allclose(out.x, np.linalg.lstsq(A.toarray(), b, rcond=None)[0], rtol=1e-10)
    with pytest.raises(MpifedError, match="not positive definite"):
        run({"dataset": sparse_binary(), "clients": 4, "samples_per_client": 50, "problem": "least-squares",
             "lam": 0.0, "algorithm": "gd", "quiet": True, "out": str(tmp_path / "s.h5")})
