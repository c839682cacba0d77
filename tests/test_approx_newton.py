"""DANE, GIANT, Fed-Sophia (convex and network) and FedCurv against independent oracles: packed Hessians and finite
differences for the per-client Hessian-vector products, numpy solves for the batched CG, closed forms on ridge
regression (DANE = GIANT = mean_i(H_i^{-1}) step; Newton at n = 1), plain client-by-client re-implementations on
logistic regression, FedAvg for FedCurv at lambda = 0, and hand counts of bits and exchanges."""
import dataclasses

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse

from mpifed import config as cfgmod, tri
from mpifed.algorithms.approx_newton import cg, dane, fedsophia, giant
from mpifed.comm import SerialComm
from mpifed.driver import iterate, run
from mpifed.errors import ConfigError
from mpifed.federation import build_federation
from mpifed.plan import resolve
from mpifed.problems.logistic import LogisticBlock
from mpifed.rng import ClientStreams, participants
from sparse_data import sparse_binary
from test_first_order_local import LAM, client_data, grad  # the plain logistic loss of the first-order tests

SYN = {"dataset": "synthetic", "clients": 5, "samples_per_client": 30, "features": 6}
SPARSE = {"dataset": sparse_binary(), "clients": 6, "samples_per_client": 40}
BASE = {"quiet": True, "reference_iterations": 0, "out": None, "lam": LAM, "tol": 0.0}
NN = {"dataset": "mnist-synthetic", "model": "mlp:hidden=8", "clients": 5, "partition": "dirichlet:alpha=0.5",
      "batch_size": 8, "local_steps": 3, "quiet": True, "out": None, "eval_every": 100}


def loss(A, b, x):
    return np.logaddexp(0.0, -b * (A @ x)).mean() + 0.5 * LAM * x @ x


def hess(A, b, x):
    s = 1 / (1 + np.exp(-(A @ x)))
    return (A.T * (s * (1 - s))) @ A / len(b) + LAM * np.eye(A.shape[1])


def runs(cfg, **extra):
    return run({**BASE, **cfg, **extra}, comm=SerialComm())


# ------------------------------------------------------------------ Hessian-vector products, diagonals, CG
def _block(dense):
    rng = np.random.default_rng(3)
    A = scipy.sparse.random(70, 9, density=0.35, random_state=4, format="csr")
    b = np.where(rng.random(70) < 0.5, 1.0, -1.0)
    return LogisticBlock(A, b, [0, 12, 30, 31, 55, 70], 0.05, dense=dense), A.toarray(), b


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_hvp_each_is_each_clients_hessian_times_its_own_vector(dense):
    block, A, b = _block(dense)
    rng = np.random.default_rng(0)
    x, V = rng.standard_normal(9), rng.standard_normal((5, 9))
    _, _, H = block.derivatives(x)
    packed = np.stack([tri.unpack(H[i], 9) @ V[i] for i in range(5)])
    np.testing.assert_allclose(block.hvp_each(x, V), packed, rtol=1e-12, atol=1e-15)
    # finite differences of the gradients, client by client (central: error O(eps^2))
    eps = 1e-5
    fd = np.stack([(block.derivatives(x + eps * V[i], hessian=False)[1][i]
                    - block.derivatives(x - eps * V[i], hessian=False)[1][i]) / (2 * eps) for i in range(5)])
    np.testing.assert_allclose(block.hvp_each(x, V), fd, rtol=1e-7, atol=1e-9)
    # a piece of the block gives its clients the same products
    np.testing.assert_array_equal(block.clients(1, 4).hvp_each(x, V[1:4]), block.hvp_each(x, V)[1:4])


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_diagonals_and_fisher_match_the_rows(dense):
    block, A, b = _block(dense)
    x = np.random.default_rng(1).standard_normal(9)
    _, _, H = block.derivatives(x)
    _, _, h = block.derivatives_and_coefficients(x)
    np.testing.assert_allclose(block.squared_rows(h) + block.lam,
                               [np.diag(tri.unpack(H[i], 9)) for i in range(5)], rtol=1e-12, atol=1e-16)
    X = np.random.default_rng(2).standard_normal((5, 9))
    offsets = [0, 12, 30, 31, 55, 70]
    fisher = []
    for i in range(5):
        Ai, bi = A[offsets[i]:offsets[i + 1]], b[offsets[i]:offsets[i + 1]]
        per_row = (-bi / (1 + np.exp(bi * (Ai @ X[i]))))[:, None] * Ai  # gradient of each row's loss term
        fisher.append((per_row ** 2).mean(axis=0))
    np.testing.assert_allclose(block.fisher_diagonals(X), fisher, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("problem", ["logistic", "least-squares"])
def test_loss_changes_are_differences_of_losses_without_their_cancellation(problem):
    from mpifed.problems import BLOCKS

    _, A, b = _block(False)
    block = BLOCKS[problem](scipy.sparse.csr_matrix(A), b, [0, 12, 30, 31, 55, 70], 0.05)
    rng = np.random.default_rng(4)
    x, p = rng.standard_normal(9), rng.standard_normal(9)
    steps = np.array([1.0, 0.3, 1e-3])
    expected = np.stack([block.loss(x - a * p) - block.loss(x) for a in steps], axis=1)
    np.testing.assert_allclose(block.loss_changes(x, p, steps), expected, rtol=1e-9, atol=1e-15)
    # a step so short that the difference of losses is all rounding: the first-order term -a <p, grad f_i> wins
    a = 1e-13
    grad = block.derivatives(x, hessian=False)[1]
    np.testing.assert_allclose(block.loss_changes(x, p, [a])[:, 0], -a * grad @ p, rtol=1e-6)


def test_batched_cg_solves_each_system_and_stops_per_client():
    rng = np.random.default_rng(5)
    d, n = 7, 4
    M = rng.standard_normal((n, d, d))
    H = M @ M.transpose(0, 2, 1) + 0.1 * np.eye(d)
    H[2] = np.diag(np.arange(1.0, d + 1))
    B = rng.standard_normal((n, d))
    B[3] = 0.0  # a zero right-hand side: p = 0 after no iteration
    sol = cg.solve(lambda V: np.einsum("nij,nj->ni", H, V), B, q=50)
    np.testing.assert_allclose(sol.p, np.linalg.solve(H, B[..., None])[..., 0], rtol=1e-9, atol=1e-12)
    assert sol.iterations[3] == 0 and np.all(sol.iterations[:3] <= d + 2)
    # a fixed q = 2 is plain CG's second iterate, client by client
    two = cg.solve(lambda V: np.einsum("nij,nj->ni", H, V), B, q=2)
    for i in range(3):
        p, r = np.zeros(d), B[i].copy()
        dd = r.copy()
        for _ in range(2):
            a = r @ r / (dd @ H[i] @ dd)
            p, r_next = p + a * dd, r - a * H[i] @ dd
            dd, r = r_next + (r_next @ r_next) / (r @ r) * dd, r_next
        np.testing.assert_allclose(two.p[i], p, rtol=1e-12)
    assert list(two.iterations) == [2, 2, 2, 0]


# ------------------------------------------------------------------ ridge regression: DANE = GIANT = closed form
class RidgeBlock:
    """f_i(x) = ||A_i x - b_i||^2 / (2 m_i) + lam/2 ||x||^2 with the block interface the methods use."""

    def __init__(self, data, lam, backend):
        self.data, self.lam, self.bk = data, lam, backend
        self.n, self.d = len(data), data[0][0].shape[1]
        self.H = np.stack([A.T @ A / len(b) + lam * np.eye(self.d) for A, b in data])

    def loss(self, x):
        return np.array([0.5 * np.sum((A @ x - b) ** 2) / len(b) + 0.5 * self.lam * x @ x for A, b in self.data])

    def derivatives_and_coefficients(self, x):
        X = np.broadcast_to(x, (self.n, self.d))
        grads = np.stack([A.T @ (A @ X[i] - b) / len(b) + self.lam * X[i] for i, (A, b) in enumerate(self.data)])
        return (self.loss(x) if x.ndim == 1 else None), grads, None

    def hvp_from_coefficients(self, h, V):
        return np.einsum("nij,nj->ni", self.H, V)


def ridge_run(method, params, clients, rounds):
    cfg = cfgmod.build({**BASE, "dataset": "synthetic", "clients": clients, "samples_per_client": 8, "features": 5})
    fed = build_federation(resolve(cfg).data, SerialComm())
    rng = np.random.default_rng(7)
    data = [(rng.standard_normal((8 + 3 * i, 5)), rng.standard_normal(8 + 3 * i)) for i in range(clients)]
    fed = dataclasses.replace(fed, block=RidgeBlock(data, 0.1, fed.backend))
    xs = []
    x, status, _, _ = iterate(fed, method, params, np.ones(5), rounds, 0.0, lambda k, agg, x, t, b: xs.append(x))
    assert status == "completed"
    return np.array(xs), fed.block


def test_dane_equals_giant_equals_the_averaged_inverse_step_on_ridge_regression():
    """eta = 1, mu = 0, exact local solves (CG to 1e-12 with q >= d), unit step: both take
    x+ = x - mean_i(H_i^{-1}) grad P(x) (unequal m_i: the clients count equally in P, as in mpifed)."""
    xs_dane, block = ridge_run(dane, dane.Params(q=50), 4, 3)
    xs_giant, _ = ridge_run(giant, giant.Params(q=50, line_search=False), 4, 3)
    np.testing.assert_allclose(xs_dane, xs_giant, rtol=1e-10, atol=1e-12)
    x = np.ones(5)
    M = np.mean([np.linalg.inv(H) for H in block.H], axis=0)
    for k in range(4):
        np.testing.assert_allclose(xs_dane[k], x, rtol=1e-10, atol=1e-12)
        g = block.derivatives_and_coefficients(x)[1].mean(axis=0)
        x = x - M @ g


def test_one_client_dane_and_giant_are_one_newton_step_on_ridge_regression():
    xs_dane, block = ridge_run(dane, dane.Params(q=50), 1, 1)
    xs_giant, _ = ridge_run(giant, giant.Params(q=50, line_search=False), 1, 1)
    A, b = block.data[0]
    x_star = np.linalg.solve(block.H[0], A.T @ b / len(b))  # Newton from anywhere lands on the minimiser
    np.testing.assert_allclose(xs_dane[1], x_star, rtol=1e-10)
    np.testing.assert_allclose(xs_giant[1], x_star, rtol=1e-10)


@pytest.mark.parametrize("cfg", [SYN, SPARSE], ids=["dense", "sparse"])
def test_dane_equals_giant_equals_the_closed_form_on_the_least_squares_problem(cfg):
    """--problem least-squares: the same equality on mpifed's ridge block, and one client is one Newton step."""
    data, d = client_data(cfg), (cfg.get("features") or 40)
    extra = {"problem": "least-squares", "cg_iterations": 2 * d, "rounds": 3}
    a = runs(cfg, algorithm="dane", **extra)
    b = runs(cfg, algorithm="giant", line_search=False, **extra)
    H = [A.T @ A / len(y) + LAM * np.eye(d) for A, y in data]
    M = np.mean([np.linalg.inv(Hi) for Hi in H], axis=0)
    x = np.zeros(d)
    for _ in range(3):
        x = x - M @ np.mean([A.T @ (A @ x - y) / len(y) + LAM * x for A, y in data], axis=0)
    np.testing.assert_allclose(a.x, x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.x, x, rtol=1e-9, atol=1e-12)
    if cfg is SPARSE:
        return
    one = {**cfg, "clients": 1, **extra, "rounds": 1}
    A, y = client_data(one)[0]
    x_star = np.linalg.solve(A.T @ A / len(y) + LAM * np.eye(d), A.T @ y / len(y))
    for method in ("dane", "giant"):
        np.testing.assert_allclose(runs(one, algorithm=method).x, x_star, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ logistic regression: plain re-implementations
def plain_cg(H, b, q):
    p, r = np.zeros_like(b), b.copy()
    dd, rs0 = r.copy(), r @ r
    for _ in range(q):
        if r @ r <= 1e-24 * rs0:
            break
        a = (r @ r) / (dd @ H @ dd)
        p, r_next = p + a * dd, r - a * H @ dd
        dd, r = r_next + (r_next @ r_next) / (r @ r) * dd, r_next
    return p


@pytest.mark.parametrize("cfg", [SYN, SPARSE], ids=["dense", "sparse"])
def test_giant_matches_the_plain_algorithm(cfg):
    """q = 3 CG iterations per client (fewer than d: a truly inexact direction), mean, 10-trial Armijo search."""
    data, q = client_data(cfg), 3
    out = runs(cfg, algorithm="giant", cg_iterations=q, rounds=4)
    x = np.zeros(data[0][0].shape[1])
    for k in range(5):
        np.testing.assert_allclose(out.metrics["loss"][k], np.mean([loss(A, b, x) for A, b in data]), rtol=1e-12)
        if k == 4:
            break
        g = np.mean([grad(A, b, x) for A, b in data], axis=0)
        p = np.mean([plain_cg(hess(A, b, x), g, q) for A, b in data], axis=0)
        P0 = np.mean([loss(A, b, x) for A, b in data])
        alpha = next((a for a in 0.25 ** np.arange(10)
                      if np.mean([loss(A, b, x - a * p) for A, b in data]) <= P0 - 0.1 * a * p @ g), 0.25 ** 9)
        assert out.metrics["step_length"][k] == alpha
        assert out.metrics["local_iterations"][k] == q
        x = x - alpha * p
    np.testing.assert_allclose(out.x, x, rtol=1e-10, atol=1e-13)


def test_dane_local_solutions_are_the_minimisers_of_the_local_problems():
    """With T = 8 local Newton steps the clients' w_i are the argmins of DANE's local problem (scipy's)."""
    cfg, eta, mu = SYN, 0.7, 0.05
    data = client_data(cfg)
    out = runs(cfg, algorithm="dane", local_steps=8, eta=eta, mu=mu, rounds=2)
    x = np.zeros(cfg["features"])
    for _ in range(2):
        g = np.mean([grad(A, b, x) for A, b in data], axis=0)
        ws = []
        for A, b in data:
            shift = grad(A, b, x) - eta * g
            local = scipy.optimize.minimize(lambda z: loss(A, b, z) - shift @ z + 0.5 * mu * (z - x) @ (z - x), x,
                                            jac=lambda z: grad(A, b, z) - shift + mu * (z - x), method="BFGS",
                                            options={"gtol": 1e-12})
            ws.append(local.x)
        x = np.mean(ws, axis=0)
    np.testing.assert_allclose(out.x, x, rtol=1e-6, atol=1e-9)


def test_dane_with_one_local_step_is_giant_without_line_search_on_logistic_regression():
    a = runs(SPARSE, algorithm="dane", cg_iterations=40, rounds=3)
    b = runs(SPARSE, algorithm="giant", cg_iterations=40, line_search=False, rounds=3)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-11, atol=1e-14)


# ------------------------------------------------------------------ Fed-Sophia, convex
def test_hutchinson_mean_converges_to_the_exact_glm_diagonal():
    """S = 2000 one-probe estimates per client. Each coordinate of u * (H u) has mean H_jj and variance
    sum_{k != j} H_jk^2 (Rademacher u); every coordinate must lie within 5 standard errors (a false alarm has
    probability below 1e-4 over all coordinates and clients), and the errors shrink like 1/sqrt(S)."""
    block, A, b = _block(False)
    x = np.random.default_rng(0).standard_normal(9)
    _, _, H = block.derivatives(x)
    _, _, h = block.derivatives_and_coefficients(x)
    p = fedsophia.Params(diagonal="hutchinson")
    S = 2000
    est = np.stack([fedsophia.diagonals(p, block, x, h, ClientStreams(0, np.arange(5), k)) for k in range(S)])
    full = np.stack([tri.unpack(H[i], 9) for i in range(5)])
    exact = np.stack([np.diag(F) for F in full])
    off = full - np.stack([np.diag(e) for e in exact])
    sd = np.sqrt((off ** 2).sum(axis=2))  # 0 where a coordinate has no off-diagonal coupling: exact every probe
    err = np.abs(est.mean(axis=0) - exact)
    assert np.all(err <= 5 * sd / np.sqrt(S) + 1e-12)
    np.testing.assert_allclose(est.std(axis=0), sd, rtol=0.1, atol=1e-12)  # the variance is the formula's
    np.testing.assert_allclose(fedsophia.diagonals(fedsophia.Params(), block, x, h, None), exact, rtol=1e-12)


def test_fedsophia_without_averaging_or_clipping_is_the_diagonal_newton_step():
    data = client_data(SYN)
    out = runs(SYN, algorithm="fedsophia", step_size=1.0, beta1=0.0, beta2=0.0, gamma=1.0, clip=1e6, rounds=3)
    x = np.zeros(SYN["features"])
    for _ in range(3):
        g = np.mean([grad(A, b, x) for A, b in data], axis=0)
        D = np.mean([np.diag(hess(A, b, x)) for A, b in data], axis=0)
        x = x - g / D
    np.testing.assert_allclose(out.x, x, rtol=1e-11)


def test_fedsophia_clips_and_averages_as_sophia():
    data = client_data(SPARSE)
    b1, b2, gam, rho, eta = 0.5, 0.8, 0.3, 0.05, 0.7
    out = runs(SPARSE, algorithm="fedsophia", step_size=eta, beta1=b1, beta2=b2, gamma=gam, clip=rho, rounds=4)
    x, m, h = np.zeros(data[0][0].shape[1]), 0.0, 0.0
    for _ in range(4):
        g = np.mean([grad(A, b, x) for A, b in data], axis=0)
        D = np.mean([np.diag(hess(A, b, x)) for A, b in data], axis=0)
        m, h = b1 * m + (1 - b1) * g, b2 * h + (1 - b2) * D
        x = x - eta * np.clip(m / np.maximum(gam * h, 1e-12), -rho, rho)
    np.testing.assert_allclose(out.x, x, rtol=1e-11, atol=1e-15)


# ------------------------------------------------------------------ FedCurv
@pytest.mark.parametrize("tau", [None, 3])
def test_fedcurv_with_lambda_zero_is_fedavg_bit_for_bit(tau):
    extra = {"rounds": 4, "local_steps": 3} | ({} if tau is None else {"participation": tau})
    a = runs(SPARSE, algorithm="fedcurv", curv_lambda=0.0, **extra)
    b = runs(SPARSE, algorithm="fedavg", **extra)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.metrics["loss"], b.metrics["loss"])
    np.testing.assert_allclose(a.metrics["bits_up"], 3 * b.metrics["bits_up"], rtol=1e-15)


def test_network_fedcurv_with_lambda_zero_is_fedavg_bit_for_bit():
    cfg = {**NN, "rounds": 3, "participation": 3}
    a = run({**cfg, "algorithm": "fedcurv", "curv_lambda": 0.0}, comm=SerialComm())
    b = run({**cfg, "algorithm": "fedavg"}, comm=SerialComm())
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.metrics["loss"], b.metrics["loss"])


def test_fedcurv_matches_the_plain_algorithm_with_stale_terms_of_absent_clients():
    data, lam_c, K, eta, tau = client_data(SYN), 0.5, 3, 0.5, 3
    out = runs(SYN, algorithm="fedcurv", curv_lambda=lam_c, local_steps=K, step_size=eta, participation=tau, rounds=4)
    n, d = len(data), SYN["features"]
    x, u, v = np.zeros(d), np.zeros((n, d)), np.zeros((n, d))
    for t in range(4):
        U, V = u.sum(axis=0), v.sum(axis=0)  # what the server last broadcast
        deltas = []
        for i in np.flatnonzero(participants(0, n, tau, t)):
            A, b = data[i]
            y = x.copy()
            for _ in range(K):
                y = y - eta * (grad(A, b, y) + 2 * lam_c * ((U - u[i]) * y - (V - v[i])))
            per_row = (-b / (1 + np.exp(b * (A @ y))))[:, None] * A
            u[i] = (per_row ** 2).mean(axis=0)
            v[i] = u[i] * y
            deltas.append(y - x)
        x = x + np.mean(deltas, axis=0)
    np.testing.assert_allclose(out.x, x, rtol=1e-11, atol=1e-14)


# ------------------------------------------------------------------ bits and exchanges per round
def _per_round(out, key):
    return np.diff(out.metrics[key])


def test_bits_and_exchanges_per_round_are_the_hand_counts():
    d, fb = 40, 32
    g = runs(SPARSE, algorithm="giant", rounds=3)
    np.testing.assert_array_equal(_per_round(g, "exchanges"), 3)
    np.testing.assert_array_equal(_per_round(g, "bits_up"), (d + d + 10) * fb)   # grad | p_i | 10 loss changes
    np.testing.assert_array_equal(_per_round(g, "bits_down"), 3 * d * fb)           # g | p | x_{t+1}
    a = runs(SPARSE, algorithm="dane", rounds=3)
    np.testing.assert_array_equal(_per_round(a, "exchanges"), 2)
    np.testing.assert_array_equal(_per_round(a, "bits_up"), 2 * d * fb)
    np.testing.assert_array_equal(_per_round(a, "bits_down"), 2 * d * fb)
    c = runs(SPARSE, algorithm="fedcurv", rounds=3)
    np.testing.assert_array_equal(_per_round(c, "exchanges"), 3)
    np.testing.assert_array_equal(_per_round(c, "bits_up"), 3 * d * fb)
    np.testing.assert_array_equal(_per_round(c, "bits_down"), 3 * d * fb)
    s = runs(SPARSE, algorithm="fedsophia", rounds=3)
    np.testing.assert_array_equal(_per_round(s, "exchanges"), 1)
    np.testing.assert_array_equal(_per_round(s, "bits_up"), 2 * d * fb)
    np.testing.assert_array_equal(_per_round(s, "bits_down"), d * fb)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("values, message", [
    ({"algorithm": "giant", "cg_iterations": 0}, "--cg-iterations = 0 is out of range; valid: an integer >= 1"),
    ({"algorithm": "dane", "model": "cnn", "dataset": "mnist-synthetic"}, "'dane' has no neural-network version"),
    ({"algorithm": "giant", "model": "cnn", "dataset": "mnist-synthetic"}, "'giant' has no neural-network version"),
    ({"algorithm": "fedcurv", "curv_lambda": -1.0}, "--curv-lambda = -1.0 is out of range"),
    ({"algorithm": "fedsophia", "diagonal": "gnb"}, "--diagonal = 'gnb' is out of range; valid: exact, hutchinson"),
    ({"algorithm": "fedsophia", "diagonal": "exact", "model": "cnn", "dataset": "mnist-synthetic"},
     "--diagonal does not apply"),
    ({"algorithm": "fedsophia", "clip": 0.0}, "--clip = 0.0 is out of range"),
    ({"algorithm": "dane", "local_steps": 0}, "--local-steps = 0 is out of range"),
    ({"algorithm": "giant", "participation": 0.5}, "--participation does not apply"),
])
def test_bad_input_is_a_one_line_error_before_round_zero(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as err:
        cfgmod.build(values)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ networks: plain client-by-client loops
NN_SMALL = dict(dataset="mnist-synthetic", model="mlp:hidden=8", partition="iid", reference_iterations=0,
                batch_size=8, local_steps=3, lam=0.0, quiet=True, seed=3, out=None, clients=4, rounds=3,
                participation=3, eval_every=100)


def _nn_setup(conf):
    fed = build_federation(resolve(cfgmod.build(conf)).data, SerialComm())
    return fed, np.array(fed.x0, dtype=float)


def _batches(fed, t, K):
    """The K mini-batches of round t's participants (rows in participant order)."""
    s = fed.streams(t)
    return [fed.block.batch(s, k, np.asarray(s.active, bool)) for k in range(K)]


def test_network_fedsophia_matches_the_plain_sophia_loop():
    """Sophia-H per client: m, h kept across rounds (absent clients' untouched), Hutchinson every tau global steps
    by a forward difference of gradients with delta = 1e-3, elementwise clip."""
    conf = {**NN_SMALL, "algorithm": "fedsophia", "hessian_every": 2, "step_size": 0.01, "beta1": 0.9, "beta2": 0.8,
            "gamma": 0.05, "clip": 0.5}
    out = run(conf, comm=SerialComm())
    fed, x = _nn_setup(conf)
    block, K, P = fed.block, conf["local_steps"], len(x)
    m, h = np.zeros((block.n, P)), np.zeros((block.n, P))
    for t in range(conf["rounds"]):
        s, batches, ys = fed.streams(t), _batches(fed, t, K), []
        for j, i in enumerate(np.flatnonzero(s.active)):
            y = x.copy()
            for k, (X, lab) in enumerate(batches):
                g = block.loss_grad(y, X[j], lab[j])[1]
                m[i] = 0.9 * m[i] + 0.1 * g
                if (t * K + k) % 2 == 0:
                    u = 1.0 - 2.0 * (s.bits(f"hutchinson{k}", P)[i] & np.uint64(1)).astype(float)
                    Hu = (block.loss_grad(y + 1e-3 * u, X[j], lab[j])[1] - g) / 1e-3
                    h[i] = 0.8 * h[i] + 0.2 * u * Hu
                y = y - 0.01 * np.clip(m[i] / np.maximum(0.05 * h[i], 1e-12), -0.5, 0.5)
            ys.append(y)
        x = x + np.mean(np.array(ys) - x, axis=0)
    np.testing.assert_allclose(out.x, x, rtol=1e-9, atol=1e-12)


def test_network_fedcurv_matches_the_plain_loop():
    """Penalised local SGD, then u_s = mean over the round's K mini-batches of the squared gradient at theta_s."""
    lam_c, eta = 0.3, 0.05
    conf = {**NN_SMALL, "algorithm": "fedcurv", "curv_lambda": lam_c, "step_size": eta}
    out = run(conf, comm=SerialComm())
    fed, x = _nn_setup(conf)
    block, K, P = fed.block, conf["local_steps"], len(x)
    u, v = np.zeros((block.n, P)), np.zeros((block.n, P))
    for t in range(conf["rounds"]):
        U, V = u.sum(axis=0), v.sum(axis=0)
        s, batches, ys = fed.streams(t), _batches(fed, t, K), []
        for j, i in enumerate(np.flatnonzero(s.active)):
            y = x.copy()
            for X, lab in batches:
                g = block.loss_grad(y, X[j], lab[j])[1]
                y = y - eta * (g + 2 * lam_c * ((U - u[i]) * y - (V - v[i])))
            u[i] = np.mean([block.loss_grad(y, X[j], lab[j])[1] ** 2 for X, lab in batches], axis=0)
            v[i] = u[i] * y
            ys.append(y)
        x = x + np.mean(np.array(ys) - x, axis=0)
    np.testing.assert_allclose(out.x, x, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ checkpoint and resume
@pytest.mark.parametrize("cfg", [
    {**SPARSE, "algorithm": "giant", "cg_iterations": 4},
    {**SYN, "algorithm": "dane", "line_search": True, "local_steps": 2},
    {**SPARSE, "algorithm": "fedcurv", "participation": 3, "curv_lambda": 0.1},
    {**SYN, "algorithm": "fedsophia", "diagonal": "hutchinson"},
], ids=["giant", "dane-search", "fedcurv", "fedsophia-hutchinson"])
def test_a_suspended_run_resumes_to_the_uninterrupted_trace(cfg, tmp_path, monkeypatch):
    """Client state kept across rounds (FedCurv's u, v, U, V) and the server's moving averages (Sophia's m, h)
    survive a checkpoint."""
    from test_checkpoint import resume_equals_uninterrupted

    config = {**BASE, "rounds": 5, **cfg, "reference_iterations": 0}
    resume_equals_uninterrupted(config, tmp_path, monkeypatch)
