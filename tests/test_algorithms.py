"""Newton, FedNL and GD against plain re-implementations written here from the papers' formulas."""
import math

import numpy as np
import pytest

from mpifed import tri
from mpifed.data import load, paper_split, synthetic_clients
from mpifed.driver import run
from mpifed.problems.logistic import LogisticBlock


def plain_newton(A, b, lam, rounds):
    """Centralised Newton on P(x) = (1/N) sum log(1 + exp(-b a^T x)) + lam/2 ||x||^2 (equal client sizes)."""
    A = A.toarray()
    x, iterates = np.zeros(A.shape[1]), []
    for _ in range(rounds + 1):
        iterates.append(x.copy())
        t = A @ x
        g = A.T @ (-b / (1 + np.exp(b * t))) / len(b) + lam * x
        s = 1 / (1 + np.exp(-t))
        H = (A.T * (s * (1 - s))) @ A / len(b) + lam * np.eye(len(x))
        x = x - np.linalg.solve(H, g)
    return iterates


def gradient_norms(A, b, lam, iterates):
    A = A.toarray()
    return np.array([np.linalg.norm(A.T @ (-b / (1 + np.exp(b * (A @ x)))) / len(b) + lam * x) for x in iterates])


@pytest.mark.data("a9a")
def test_newton_on_a9a_matches_plain_numpy_newton():
    """Distributed Newton on a9a (80 clients x 407, lam = 1e-3) matches a plain numpy Newton round by round
    (iterate and gradient norms to rtol 1e-12) and ends at ||grad P|| < 1e-15."""
    ds = load("a9a")
    rows = paper_split(ds.A.shape[0], 80, 407).rows
    A, b = ds.A[rows], ds.b[rows]
    iterates = plain_newton(A, b, 1e-3, 8)
    result = run({"dataset": "a9a", "algorithm": "newton", "rounds": 8, "quiet": True, "reference_iterations": 0,
                  "out": None})
    np.testing.assert_allclose(result.x, iterates[-1], rtol=1e-12, atol=1e-12)
    reference = gradient_norms(A, b, 1e-3, iterates)
    measured = result.metrics["grad_norm"]
    big = reference > 1e-9  # below that both are rounding noise
    np.testing.assert_allclose(measured[big], reference[big], rtol=1e-12, atol=1e-15)
    assert measured[-1] < 1e-15


def plain_fednl(blocks, lam, d, k, alpha, option, step_hessian, mu, rounds):
    """FedNL Algorithm 1 client by client with full matrices (per-client derivatives from each client's block)."""
    x = np.zeros(d)
    H_i = [tri.unpack(blk.derivatives(x)[2][0], d) for blk in blocks]
    iu = np.triu_indices(d)
    xs = [x.copy()]
    for _ in range(rounds):
        grads, S, ls = [], [], []
        for i, blk in enumerate(blocks):
            _, g, h = blk.derivatives(x)
            hess = tri.unpack(h[0], d)
            diff = hess - H_i[i]
            packed = diff[iu]
            keep = np.argsort(-np.abs(packed), kind="stable")[:k]
            sparse = np.zeros_like(packed)
            sparse[keep] = packed[keep]
            S_i = np.zeros((d, d))
            S_i[iu] = sparse
            S_i = S_i + np.triu(S_i, 1).T
            grads.append(g[0]), S.append(S_i), ls.append(np.linalg.norm(diff))
        H_prev = np.mean(H_i, axis=0)
        H_i = [H + alpha * s for H, s in zip(H_i, S)]
        H = np.mean(H_i, axis=0) if step_hessian == "updated" else H_prev
        g = np.mean(grads, axis=0)
        if option == 2:
            x = x - np.linalg.solve(H + np.mean(ls) * np.eye(d), g)
        else:
            w, U = np.linalg.eigh(H)
            x = x - U @ ((U.T @ g) / np.maximum(w, mu))
        xs.append(x.copy())
    return xs


@pytest.mark.parametrize("option, step_hessian", [(2, "previous"), (1, "previous"), (2, "updated")])
def test_fednl_topk_matches_a_plain_loop_over_clients(option, step_hessian):
    """Continuous synthetic data: real LIBSVM files have exactly tied Hessian entries (one-hot
    features), where a 1-ulp difference legitimately flips Top-K's choice."""
    clients, m, d, k = 12, 60, 15, 30
    A, b = synthetic_clients(range(clients), m, d, seed=4)
    blocks = [LogisticBlock(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m], [0, m], 1e-3) for i in range(clients)]
    xs = plain_fednl(blocks, 1e-3, d, k, 1.0, option, step_hessian, 1e-3, rounds=12)
    result = run({"dataset": "synthetic", "clients": clients, "samples_per_client": m, "features": d, "seed": 4,
                  "algorithm": "fednl", "compressor": f"topk:k={k}", "alpha": 1.0, "option": option, "step_hessian": step_hessian,
                  "rounds": 12, "tol": 0.0, "quiet": True, "reference_iterations": 0})
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(result.metrics["grad_norm"], gradient_norms(A, b, 1e-3, xs), rtol=1e-9, atol=1e-15)


@pytest.mark.data("phishing")
def test_full_k_topk_randk_and_identity_give_the_same_iterates_bit_for_bit():
    base = {"dataset": "phishing", "clients": 10, "samples_per_client": 50, "intercept": True,
            "algorithm": "fednl", "rounds": 8, "quiet": True, "reference_iterations": 0}
    T = tri.size(69)
    runs = [run({**base, "compressor": spec}) for spec in ("identity", f"topk:k={T}", f"randk:k={T}")]
    for other in runs[1:]:
        assert np.array_equal(other.x, runs[0].x)
        assert np.array_equal(other.metrics["grad_norm"], runs[0].metrics["grad_norm"])


@pytest.mark.data("phishing")
def test_fednl_identity_updated_option1_is_newton():
    """With the freshly updated H (``step_hessian = "updated"``, u-FedNL's timing) and an inactive projection,
    FedNL with the identity compressor is Newton's method."""
    base = {"dataset": "phishing", "clients": 10, "samples_per_client": 50, "intercept": True,
            "rounds": 6, "quiet": True, "reference_iterations": 0}
    newton = run({**base, "algorithm": "newton"})
    fednl = run({**base, "algorithm": "fednl", "compressor": "identity", "option": 1, "step_hessian": "updated"})
    np.testing.assert_allclose(fednl.x, newton.x, rtol=1e-12, atol=1e-14)
    big = newton.metrics["grad_norm"] > 1e-9
    np.testing.assert_allclose(fednl.metrics["grad_norm"][big], newton.metrics["grad_norm"][big], rtol=1e-10)


@pytest.mark.data("phishing")
def test_fednl_topk_reaches_1e14_on_phishing_superlinearly():
    result = run({"dataset": "phishing", "intercept": True, "algorithm": "fednl", "compressor": "topk:k=8d",
                  "rounds": 200, "tol": 1e-14, "quiet": True})
    g = result.metrics["grad_norm"]
    assert result.status == "converged" and g[-1] <= 1e-14
    # Superlinear at the end: the last contraction factors shrink.
    tail = g[-4:-1] / g[-5:-2]
    assert tail[-1] < tail[0] < 1


@pytest.mark.data("phishing")
def test_gd_matches_plain_gradient_descent_with_step_one_over_L():
    ds = load("phishing")
    rows = paper_split(ds.A.shape[0], 10, 50).rows
    A, b, lam = ds.A[rows].toarray(), ds.b[rows], 1e-3
    L = np.linalg.eigvalsh(A.T @ A / len(b))[-1] / 4 + lam
    x = np.zeros(A.shape[1])
    for _ in range(15):
        x = x - (A.T @ (-b / (1 + np.exp(b * (A @ x)))) / len(b) + lam * x) / L
    result = run({"dataset": "phishing", "clients": 10, "samples_per_client": 50, "algorithm": "gd",
                  "rounds": 15, "quiet": True, "reference_iterations": 0})
    np.testing.assert_allclose(result.x, x, rtol=1e-11, atol=1e-13)
    assert math.isclose(result.metrics["bits_up"][-1], 15 * 68 * 32)
