"""NEWTON-STAR, NL1, NL2 and CNL (Islamov, Qian, Richtarik, ICML 2021) against plain client-by-client loops written here.

The plain loops follow the algorithm boxes with full matrices: H^k (or A^k) is recomputed
from the coefficient vectors h_i^k every round (an oracle for the server's rank-one
updates), and the random coordinates are re-derived from ClientStreams with the stream
names that mpifed.algorithms.second_order.nl1 documents ("nl-sample", "nl-send").
"""
import math

import numpy as np
import pytest
import scipy.optimize

from conftest import data_params
from mpifed.algorithms.second_order import cnl, nl1, nl2
from mpifed.algorithms.second_order.lowrank import LowRankSPD
from mpifed.backend import NUMPY
from mpifed.comm import SerialComm
from mpifed.data import load, paper_split, synthetic_clients
from mpifed.driver import iterate, run
from mpifed.errors import MpifedError
from mpifed.federation import Federation
from mpifed.problems.logistic import LogisticBlock
from mpifed.rng import ClientStreams

LAM = 1e-3


class Client:
    """One client's rows, plain numpy: f_i = (1/m) sum log(1 + exp(-b a^T x)) + lam/2 ||x||^2."""

    def __init__(self, A, b):
        self.A, self.b, self.m = np.asarray(A.todense()), np.asarray(b), len(b)

    def grad(self, x):
        return self.A.T @ (-self.b / (1 + np.exp(self.b * (self.A @ x)))) / self.m + LAM * x

    def coef(self, x):
        s = 1 / (1 + np.exp(-(self.A @ x)))
        return s * (1 - s)

    def gram(self, h):
        return (self.A.T * h) @ self.A / self.m


def plain_newton_learn(clients, variant, r, rounds, p=1.0, eta=None, gamma=0.25, H_star=None, seed=0):
    """NL1 (Algorithm 1), NL2 (Algorithm 2) or CNL (NL2 + cubic step) from x^0 = 0.

    Returns the iterates, the mean uplink bits per round and how many coefficients the
    positive part clipped."""
    n, d = len(clients), clients[0].A.shape[1]
    x = np.zeros(d)
    h = [c.coef(x) for c in clients]
    G = sum(c.gram(np.ones(c.m)) for c in clients) / n
    xs, bits, clipped = [x.copy()], [], 0
    for k in range(rounds):
        g = sum(c.grad(x) for c in clients) / n
        H = sum(c.gram(hi) for c, hi in zip(clients, h)) / n
        if variant == "nl1":
            M = H + LAM * np.eye(d)
        else:  # H^k = beta^k A^k - 2 gamma G with A^k = H + 2 gamma G
            beta = max(np.max((c.coef(x) + 2 * gamma) / (hi + 2 * gamma)) for c, hi in zip(clients, h))
            M = beta * (H + 2 * gamma * G) - 2 * gamma * G + LAM * np.eye(d)
        round_bits = []
        for i, c in enumerate(clients):
            streams = ClientStreams(seed, [i], k)
            J = np.argsort(streams.bits("nl-sample", c.m)[0], kind="stable")[:r]
            sent = p >= 1 or streams.uniform("nl-send", 1)[0, 0] < p
            floats, index = d + (variant != "nl1"), 0
            if sent:
                old = h[i][J].copy()
                step = eta if eta is not None else r * p / c.m
                new = old + step * ((c.m / (r * p)) * (c.coef(x)[J] - old))
                if variant == "nl1":
                    clipped += int((new < 0).sum())
                    new = np.maximum(new, 0)
                h[i][J] = new
                floats += r + d * int((new != old).sum())
                index = r * math.ceil(math.log2(c.m))
            round_bits.append(32 * floats + index)
        bits.append(np.mean(round_bits))
        x = x + (plain_cubic(M, g, H_star) if variant == "cnl" else -np.linalg.solve(M, g))
        xs.append(x.copy())
    return xs, np.array(bits), clipped


def plain_cubic(M, g, H):
    """argmin <g, s> + s^T M s / 2 + H ||s||^3 / 6: the root rho = ||s|| of ||(M + H rho/2 I)^{-1} g|| = rho."""
    def solve(rho):
        return np.linalg.solve(M + H * rho / 2 * np.eye(len(g)), g)

    rho = scipy.optimize.brentq(lambda t: np.linalg.norm(solve(t)) - t, 0.0, 2 * math.sqrt(2 * np.linalg.norm(g) / H),
                                xtol=1e-300, rtol=4 * np.finfo(float).eps)
    return -solve(rho)


def split_clients(dataset, n, m):
    if dataset == "synthetic":
        A, b = synthetic_clients(range(n), m, 10, seed=0)
    else:
        ds = load(dataset)
        rows = paper_split(ds.A.shape[0], n, m).rows
        A, b = ds.A[rows], ds.b[rows]
    return [Client(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m]) for i in range(n)]


# -------------------------------------------------------------- against the plain loops
CASES = {  # dataset, n, m, algorithm, extra config
    "nl1-sparse": ("a9a", 6, 30, "nl1", {"compressor": "randk:k=2"}),
    "nl1-dense-Cp": ("phishing", 5, 40, "nl1", {"compressor": "randk:k=3,p=0.5"}),
    "nl1-clipped": ("synthetic", 5, 30, "nl1", {"compressor": "randk:k=3", "eta": 0.5}),
    "nl2-sparse": ("a9a", 6, 30, "nl2", {"compressor": "randk:k=1", "gamma": 0.3}),
    "nl2-dense-eta": ("synthetic", 5, 30, "nl2", {"compressor": "randk:k=2", "eta": 0.02}),
    "cnl-sparse-Cp": ("a9a", 6, 30, "cnl", {"compressor": "randk:k=2,p=0.5", "hessian_lipschitz": 0.5}),
    "cnl-dense": ("phishing", 5, 40, "cnl", {"compressor": "randk:k=1", "hessian_lipschitz": 2.0}),
}


@pytest.mark.parametrize("case", data_params(list(CASES), {case: {"dataset": v[0]} for case, v in CASES.items()}))
def test_newton_learn_matches_a_plain_loop_over_clients(case, tmp_path):
    dataset, n, m, algorithm, extra = CASES[case]
    rounds = 12
    result = run({"dataset": dataset, "clients": n, "samples_per_client": m, "features": 10 if dataset == "synthetic" else None,
                  "algorithm": algorithm, "rounds": rounds, "quiet": True, "reference_iterations": 0,
                  "out": str(tmp_path / "t.h5"), **extra})
    spec = extra["compressor"]  # randk:k=<r>[,p=<p>]
    r, p = int(spec.split("k=")[1].split(",")[0]), float(spec.split("p=")[1]) if "p=" in spec else 1.0
    xs, bits, clipped = plain_newton_learn(split_clients(dataset, n, m), algorithm, r, rounds, p=p, eta=extra.get("eta"),
                                           gamma=extra.get("gamma", 0.25), H_star=extra.get("hessian_lipschitz"))
    assert result.status == "completed"
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-10, atol=1e-12)
    if case == "nl1-clipped":
        assert clipped > 0  # the positive part of (19) was exercised
    d = len(xs[0])
    setup = {"nl1": 1, "nl2": 2, "cnl": 2}[algorithm] * 32 * d * (d + 1) // 2
    np.testing.assert_allclose(result.metrics["bits_up"], setup + np.concatenate([[0], np.cumsum(bits)]), rtol=1e-12)
    np.testing.assert_allclose(result.metrics["bits_down"], 32 * d * np.arange(rounds + 1))


@pytest.mark.data("a9a")
def test_unequal_client_sizes_use_a_per_client_one_over_m_i_weight():
    """The driver loop on one block with m_i = 17..43 (sparse a9a rows and dense synthetic rows)."""
    sizes = [17, 43, 25, 31, 20]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    ds = load("a9a")
    A_syn, b_syn = synthetic_clients([0], offsets[-1], 8, seed=1)
    for A, b, dense in [(ds.A[:offsets[-1]], ds.b[:offsets[-1]], False), (A_syn, b_syn, True)]:
        block = LogisticBlock(A, b, offsets, LAM, m_max=max(sizes), dense=dense)
        assert block.dense == dense
        fed = Federation(0, SerialComm(), NUMPY, block, np.arange(5), 5, block.d, "test",
                         m_min=min(sizes), m_max=max(sizes))
        clients = [Client(A[lo:hi], b[lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:])]
        for module, variant, params in [(nl1, "nl1", nl1.Params(r=3)), (nl2, "nl2", nl2.Params(r=2)),
                                        (cnl, "cnl", cnl.Params(r=2, p=1.0, H_star=1.0))]:
            x, status, _, _ = iterate(fed, module, params, np.zeros(block.d), 10, 0.0)
            xs, _, _ = plain_newton_learn(clients, variant, params.r, 10, p=params.p,
                                          H_star=getattr(params, "H_star", None))
            assert status == "completed"
            np.testing.assert_allclose(x, xs[-1], rtol=1e-10, atol=1e-12, err_msg=f"{variant} dense={dense}")


@pytest.mark.data("phishing")
def test_newton_star_matches_plain_numpy(tmp_path):
    n, m = 6, 40
    clients = split_clients("phishing", n, m)
    d = clients[0].A.shape[1]
    x = np.zeros(d)  # x* by 20 plain Newton steps, as the driver's reference
    hess = lambda x: sum(c.gram(c.coef(x)) for c in clients) / n + LAM * np.eye(d)  # noqa: E731
    grad = lambda x: sum(c.grad(x) for c in clients) / n  # noqa: E731
    for _ in range(20):
        x = x - np.linalg.solve(hess(x), grad(x))
    H_star, xs = hess(x), [np.zeros(d)]
    for _ in range(6):
        xs.append(xs[-1] - np.linalg.solve(H_star, grad(xs[-1])))
    result = run({"dataset": "phishing", "clients": n, "samples_per_client": m, "algorithm": "newton-star",
                  "rounds": 6, "quiet": True, "out": str(tmp_path / "ns.h5")})
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.metrics["grad_norm"], [np.linalg.norm(grad(v)) for v in xs], rtol=1e-8, atol=1e-14)
    T = d * (d + 1) // 2  # grad^2 f_i(x*) once at setup, then one gradient per round
    np.testing.assert_allclose(result.metrics["bits_up"], 32 * T + 32 * d * np.arange(7))


@pytest.mark.data("phishing")
def test_cnl_never_increases_P_from_a_far_start(tmp_path):
    """H^k + lam I >= grad^2 P(x^k) (NL2's beta) and H_* = nu R^3 make CNL's cubic model an upper
    bound of P, so P(x^k) is non-increasing; NL1's plain step from the same start is not."""
    base = {"dataset": "phishing", "clients": 20, "samples_per_client": 100, "x0_noise": 10.0, "rounds": 300,
            "tol": 1e-10,
            "quiet": True, "out": str(tmp_path / "far.h5"), "overwrite": True}
    cubic = run({**base, "algorithm": "cnl"})
    f = cubic.metrics["loss"]
    assert cubic.status == "converged" and np.all(np.diff(f) <= 1e-15 * f[1:])
    assert np.any(np.diff(run({**base, "algorithm": "nl1"}).metrics["loss"]) > 0)


# -------------------------------------------------------- the server's maintained factorization
def test_low_rank_factorization_equals_a_fresh_solve_across_refactorizations():
    rng = np.random.default_rng(3)
    d, N = 40, 400
    A = np.where(rng.random((N, d)) < 0.2, rng.standard_normal((N, d)), 0.0)
    h = rng.random(N) / 4
    fresh = lambda: (A.T * h) @ A / N + 1e-4 * np.eye(d)  # noqa: E731
    M = LowRankSPD.factor(fresh(), limit=d)
    ranks = []
    for k in range(15):
        g = rng.standard_normal(d)
        np.testing.assert_allclose(M.solve(g), np.linalg.solve(fresh(), g), rtol=1e-9)
        idx = rng.choice(N, 12, replace=False)
        new = np.where(rng.random(12) < 0.2, h[idx], rng.random(12) / 4)  # some unchanged: w = 0, dropped
        w = (new - h[idx]) / N
        h[idx] = new
        M = M.update(A[idx], w)
        ranks.append(M.rank)
        np.testing.assert_allclose(M.M, fresh(), rtol=0, atol=1e-15)
    assert max(ranks) <= d and min(ranks[3:]) < max(ranks)  # terms accumulate, then a refactorization
    assert len(set(ranks)) > 3


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("config, message", [
    ({"algorithm": "nl1", "compressor": "randk:k=41"}, "r = 41 is out of range; valid: 1 <= r <= 40"),
    ({"algorithm": "nl2", "compressor": "randk:k=0"}, "r = 0 is out of range"),
    ({"algorithm": "nl1", "lam": 0.0}, "it needs lam > 0"),
    ({"algorithm": "nl1", "eta": -0.1}, "--eta = -0.1 is out of range; valid: eta > 0"),
    ({"algorithm": "nl2", "eta": 0.0}, "--eta = 0.0 is out of range"),
    ({"algorithm": "nl1", "compressor": "topk:k=1"}, "is not valid for Newton-Learn"),
    ({"algorithm": "cnl", "compressor": "randk:k=1,p=1.5"}, "p = 1.5 is out of range"),
    ({"algorithm": "cnl", "hessian_lipschitz": -1.0}, "--hessian-lipschitz = -1.0 is out of range"),
    ({"algorithm": "newton-star", "reference_iterations": 0}, "--reference-iterations = 0 is out of range"),
    ({"algorithm": "nl1", "gamma": 0.25}, "--gamma does not apply to algorithm 'nl1'"),
])
def test_bad_input_is_refused_with_one_line(config, message, tmp_path):
    with pytest.raises(MpifedError) as err:
        run({"dataset": "synthetic", "clients": 4, "samples_per_client": 40, "rounds": 1, "quiet": True,
             "out": str(tmp_path / "bad.h5"), **config})
    assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ end to end on a9a: rounds and bits
@pytest.mark.data("a9a")
def test_nl1_nl2_reach_1e12_on_a9a_and_their_bits_against_newton_and_fednl(tmp_path):
    """a9a, the first 20 of its 80 clients x 407 in file order, lam = 1e-3, x^0 = 0, r = 1. Bits per client,
    setup included. Twenty clients: a quarter of the work per round; the rounds and bits per client below are
    the ones all 80 clients take.

    Measured: Newton 6 rounds / 1.49e6 bits, FedNL (Top-K 8d) 19 / 1.16e6, NL1 164 / 1.54e6,
    NL2 170 / 1.83e6. NL sends ~31x fewer bits per round than Newton but needs ~27x more
    rounds: on a9a (d = 123) it is no cheaper in total. The paper's orders-of-magnitude gap
    to Newton is its Figure 1 (artificial data); it also counts Newton's matrix as d^2
    floats, not the d(d+1)/2 of the upper triangle mpifed sends.
    """
    def bits_to_1e12(algorithm, rounds, **extra):
        out = run({"dataset": "a9a", "clients": 20, "algorithm": algorithm, "rounds": rounds, "tol": 1e-11,
                   "quiet": True, "out": str(tmp_path / f"{algorithm}.h5"), **extra}).metrics
        k = int(np.flatnonzero(out["f_gap"] <= 1e-12)[0])
        return k, out["bits_up"][k], out["bits_up"][k] - out["bits_up"][k - 1]

    newton, fednl = bits_to_1e12("newton", 20), bits_to_1e12("fednl", 60)
    learn = {alg: bits_to_1e12(alg, 400, compressor="randk:k=1") for alg in ("nl1", "nl2")}
    d, T = 123, 123 * 124 // 2
    assert newton[2] == 32 * (d + T)
    assert fednl[2] == 32 * (d + 1 + 8 * d) + 8 * d * math.ceil(math.log2(T))  # grad, l_i, Top-K values + indices
    for alg, (k, total, last) in learn.items():
        setup = 32 * T * (1 if alg == "nl1" else 2)          # H_i^0; NL2 also uploads G_i
        scalars = 0 if alg == "nl1" else 1                      # NL2's beta_i
        low = 32 * (d + scalars + 1) + 9                        # grad, scalars, one coefficient + its 9-bit index
        high = low + 32 * d                                     # ... and the a_ij when the coefficient changed
        assert low <= last <= high < fednl[2] / 6 < newton[2] / 25  # per round: ~2d floats, not 9d or d^2 / 2
        assert setup + k * low <= total <= setup + k * high, alg
        assert newton[0] < k < 400, alg                         # it gets there, in more rounds than Newton
    # The totals (NL1 1.54e6, NL2 1.83e6 vs Newton 1.49e6 bits) are findings reported in the docs,
    # not asserted: they follow from the round counts, which the paper does not give for a9a.
