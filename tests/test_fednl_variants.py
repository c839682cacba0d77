"""FedNL-PP, -LS, -CR and -BC (Safaryan et al. 2022, Algorithms 2-5) against plain client-by-client
loops written here with full matrices and plain numpy derivatives, their special cases, the
cubic subproblem against scipy, the bit ledger of every exchange, and bad input."""
import math

import numpy as np
import pytest
import scipy.optimize

from mpifed import compressors
from mpifed import config as cfgmod
from mpifed.algorithms.second_order import fednl, fednl_bc, fednl_cr, fednl_ls
from mpifed.algorithms.base import Aggregate
from mpifed.comm import SerialComm
from mpifed.data import load, paper_split, synthetic_clients
from mpifed.driver import run
from mpifed.errors import MpifedError
from mpifed.federation import build_federation
from mpifed.rng import ClientStreams, participants
from mpifed.plan import resolve

LAM, SEED = 1e-3, 0
SYNTH = {"dataset": "synthetic", "clients": 7, "samples_per_client": 30, "features": 5, "seed": SEED}
PHISH = {"dataset": "phishing", "clients": 9, "samples_per_client": 40, "seed": SEED}


class Client:
    """f_i(x) = mean_j log(1 + exp(-b_j a_j^T x)) + lam/2 ||x||^2, in plain numpy."""

    def __init__(self, A, b):
        self.A, self.b = A, b

    def f(self, x):
        return np.mean(np.logaddexp(0, -self.b * (self.A @ x))) + LAM / 2 * x @ x

    def grad(self, x):
        return self.A.T @ (-self.b / (1 + np.exp(self.b * (self.A @ x)))) / len(self.b) + LAM * x

    def hess(self, x):
        s = 1 / (1 + np.exp(-(self.A @ x)))
        return (self.A.T * (s * (1 - s))) @ self.A / len(self.b) + LAM * np.eye(len(x))


def clients_of(cfg):
    n, m = cfg["clients"], cfg["samples_per_client"]
    if cfg["dataset"] == "synthetic":
        A, b = synthetic_clients(range(n), m, cfg["features"], cfg["seed"])
    else:
        ds = load(cfg["dataset"])
        rows = paper_split(ds.A.shape[0], n, m).rows
        A, b = ds.A[rows], ds.b[rows]
    A = A.toarray()
    return [Client(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m]) for i in range(n)]


def grad_P(clients, x):
    return np.mean([c.grad(x) for c in clients], axis=0)


def topk(k):
    """Top-K of the upper triangle of a symmetric matrix (ties to the lower packed index)."""
    def compress(i, rnd, X):
        iu = np.triu_indices(len(X))
        v = X[iu]
        out = np.zeros_like(v)
        keep = np.argsort(-np.abs(v), kind="stable")[:k]
        out[keep] = v[keep]
        return _symmetric(out, len(X))
    return compress


def randk(k):
    """Rand-K of the upper triangle, scaled by T/K: the K largest keys of client i's stream (seed, "randk", i, round)."""
    def compress(i, rnd, X):
        iu = np.triu_indices(len(X))
        v = X[iu]
        keys = ClientStreams(SEED, [i], rnd).bits("randk", len(v))[0]
        keep = np.argsort(keys, kind="stable")[-k:]
        out = np.zeros_like(v)
        out[keep] = v[keep] * len(v) / k
        return _symmetric(out, len(X))
    return compress


def _symmetric(packed, d):
    S = np.zeros((d, d))
    S[np.triu_indices(d)] = packed
    return S + np.triu(S, 1).T


def clipped_solve(H, g, mu):
    w, U = np.linalg.eigh(H)
    return U @ ((U.T @ g) / np.maximum(w, mu))


def sparse_bits(k, entries):
    return k * 32 + k * math.ceil(math.log2(entries))


def go(cfg, **kw):
    return run({**cfg, "quiet": True, "reference_iterations": 0, **kw})


def check(result, clients, xs, rtol=1e-10):
    np.testing.assert_allclose(result.x, xs[-1], rtol=rtol, atol=1e-13)
    norms = [np.linalg.norm(grad_P(clients, x)) for x in xs]
    np.testing.assert_allclose(result.metrics["grad_norm"], norms, rtol=rtol, atol=1e-14)


# ------------------------------------------------------------------ FedNL-PP (Algorithm 2)
def plain_pp(clients, x0, rounds, tau, alpha, compress):
    """Driver round k: the paper's S^{k-1} (k >= 1) update at x^k, then x^{k+1} = (H + l I)^{-1} g."""
    n, d = len(clients), len(x0)
    H = [c.hess(x0) for c in clients]
    l = [0.0] * n
    g = [H[i] @ x0 - clients[i].grad(x0) for i in range(n)]
    x, xs = x0, [x0]
    for k in range(rounds):
        if k > 0:
            for i in np.flatnonzero(participants(SEED, n, tau, k)):
                hess = clients[i].hess(x)
                H[i] = H[i] + alpha * compress(i, k, hess - H[i])
                l[i] = np.linalg.norm(H[i] - hess)
                g[i] = (H[i] + l[i] * np.eye(d)) @ x - clients[i].grad(x)
        x = np.linalg.solve(np.mean(H, axis=0) + np.mean(l) * np.eye(d), np.mean(g, axis=0))
        xs.append(x)
    return xs


@pytest.mark.parametrize("cfg, spec, compress, tau", [
    (SYNTH, "topk:k=6", topk(6), 3),
    pytest.param(PHISH, "randk:k=200", randk(200), 4, marks=pytest.mark.data("phishing")),
], ids=["synthetic-topk", "phishing-randk"])
def test_pp_matches_a_plain_loop_and_its_bit_ledger(cfg, spec, compress, tau):
    clients = clients_of(cfg)
    n, d, rounds = cfg["clients"], clients[0].A.shape[1], 12
    xs = plain_pp(clients, np.zeros(d), rounds, tau, 1.0, compress)
    r = go(cfg, algorithm="fednl-pp", compressor=spec, alpha=1.0, participation=tau, rounds=rounds)
    check(r, clients, xs)
    T, k = d * (d + 1) // 2, int(spec.split("=")[1])
    per_round = np.r_[0, np.full(rounds - 1, tau / n * (sparse_bits(k, T) + (d + 1) * 32))]
    np.testing.assert_allclose(r.metrics["bits_up"], (T + d) * 32 + np.r_[0, np.cumsum(per_round)])
    np.testing.assert_allclose(r.metrics["bits_down"], np.arange(rounds + 1) * tau / n * d * 32)


@pytest.mark.data("phishing")
def test_pp_with_all_clients_identity_and_alpha_one_is_newton():
    """tau = n: every g_i = grad^2 f_i(x^k) x^k - grad f_i(x^k), l_i = 0, so x^{k+1} is Newton's step."""
    newton = go(PHISH, algorithm="newton", rounds=6)
    pp = go(PHISH, algorithm="fednl-pp", compressor="identity", alpha=1.0, participation=1.0, rounds=6)
    np.testing.assert_allclose(pp.x, newton.x, rtol=1e-11, atol=1e-13)
    big = newton.metrics["grad_norm"] > 1e-9
    np.testing.assert_allclose(pp.metrics["grad_norm"][big], newton.metrics["grad_norm"][big], rtol=1e-8)


# ------------------------------------------------------------------ FedNL-LS (Algorithm 3)
def plain_ls(clients, x0, rounds, option, alpha, c, gamma, compress, tol):
    """Trials per round: 0 where c|<g, d>| <= 2^-40 |f(x^k)| (unit step, untested: fednl_ls.RESOLUTION)."""
    d = len(x0)
    H = [cl.hess(x0) for cl in clients]
    x, xs, trials = x0, [x0], []
    for k in range(rounds):
        hess = [cl.hess(x) for cl in clients]
        g = grad_P(clients, x)
        if np.linalg.norm(g) <= tol:
            break
        f0 = np.mean([cl.f(x) for cl in clients])
        Hk = np.mean(H, axis=0)
        if option == 1:
            D = -clipped_solve(Hk, g, LAM)
        else:
            l = np.mean([np.linalg.norm(h - Hi) for h, Hi in zip(hess, H)])
            D = -np.linalg.solve(Hk + l * np.eye(d), g)
        t, s = 1.0, 0
        if c * abs(g @ D) > 2.0**-40 * abs(f0):
            s = 1
            while np.mean([cl.f(x + t * D) for cl in clients]) > f0 + c * t * (g @ D):
                t, s = t * gamma, s + 1
        H = [Hi + alpha * compress(i, k, h - Hi) for i, (h, Hi) in enumerate(zip(hess, H))]
        x = x + t * D
        xs.append(x)
        trials.append(s)
    return xs, np.array(trials)


@pytest.mark.parametrize("option", [1, 2])
def test_ls_matches_a_plain_loop_with_backtracking_and_its_bit_ledger(option):
    """x0 = x* + 10 N(0, I): the first steps backtrack, the last ones are below f's resolution."""
    cfg = {**SYNTH, "x0_noise": 10.0}
    clients = clients_of(cfg)
    d, T = 5, 15
    r = run({**cfg, "algorithm": "fednl-ls", "compressor": "topk:k=6", "alpha": 1.0, "option": option,
             "ls_c": 0.5, "ls_gamma": 0.5, "rounds": 30, "tol": 1e-13, "quiet": True, "reference_iterations": 10})
    xs, trials = plain_ls(clients, _start(r), 30, option, 1.0, 0.5, 0.5, topk(6), 1e-13)
    check(r, clients, xs)
    assert r.status == "converged" and trials.max() >= 3 and trials.min() == 0
    np.testing.assert_array_equal(r.metrics["backtracks"][:-1], np.maximum(trials - 1, 0))
    np.testing.assert_array_equal(r.metrics["armijo_tested"][:-1], trials > 0)
    up = (d + 1 + (option == 2)) * 32 + sparse_bits(6, T) + 32 * trials  # grad, f_i, (l_i), S_i; a value per trial
    down = d * 32 + 32 * np.maximum(trials - 1, 0)  # the direction, then a step length per further trial
    np.testing.assert_allclose(r.metrics["bits_up"], T * 32 + np.r_[0, np.cumsum(up)])
    np.testing.assert_allclose(r.metrics["bits_down"], np.r_[0, np.cumsum(down)])


def _start(result):
    import h5py

    with h5py.File(result.path, "r") as f:
        return f["x/start"][()]


@pytest.mark.data("phishing")
@pytest.mark.parametrize("option", [1, 2])
def test_ls_whose_unit_step_is_always_accepted_is_fednl(option):
    """Near x* (x0 = x* + N(0, I)) with c tiny the Armijo test passes at t = 1 every round:
    FedNL-LS is then FedNL (previous H^k) with the same direction, bit for bit."""
    cfg = {**PHISH, "x0_noise": 1.0, "reference_iterations": 6, "rounds": 10, "quiet": True,
           "compressor": "topk:k=2d", "alpha": 1.0, "option": option}
    ls = run({**cfg, "algorithm": "fednl-ls", "ls_c": 1e-4})
    fednl = run({**cfg, "algorithm": "fednl"})
    tested = ls.metrics["armijo_tested"][:-1]
    assert np.all(ls.metrics["backtracks"][:-1] == 0) and tested.sum() >= 4
    np.testing.assert_array_equal(ls.x, fednl.x)
    np.testing.assert_array_equal(ls.metrics["grad_norm"], fednl.metrics["grad_norm"])
    # One more float up (f_i(x^k)) per round and a trial value where tested; the direction replaces x^{k+1} down.
    np.testing.assert_allclose(ls.metrics["bits_up"] - fednl.metrics["bits_up"], 32 * np.r_[0, np.cumsum(1 + tested)])
    np.testing.assert_allclose(ls.metrics["bits_down"], fednl.metrics["bits_down"])


def test_ls_gives_up_with_a_message_after_max_backtracks():
    p = fednl_ls.Params(fednl.Params(compressors.Compressor(d=2), 1.0), c=0.5, gamma=0.5, max_backtracks=3)
    x = np.zeros(2)
    trial = fednl_ls.Trial(np.zeros(3), np.array([1.0, 0.0]), 1.0, 1.0, -1.0, 0, {})
    worse = Aggregate(4, 8.0, np.zeros(2), 0.0, 0.0, {})  # f = 2 > f0 at every trial point
    with pytest.raises(fednl_ls.LineSearchError, match="after 3 reductions by gamma = 0.5"):
        for _ in range(5):
            q = fednl_ls.server_resume(p, trial, x, worse)
            trial = q.state
            np.testing.assert_allclose(q.point, x + trial.t * trial.direction)
    assert trial.t == 0.125


# ------------------------------------------------------------------ FedNL-CR (Algorithm 4)
def plain_cubic(A, g, L):
    """argmin g.h + h.A h/2 + L/6 |h|^3 for A > 0: bisection on r = ||(A + L r/2 I)^{-1} g||."""
    size = lambda r: np.linalg.norm(np.linalg.solve(A + L * r / 2 * np.eye(len(g)), g))  # noqa: E731
    lo, hi = 0.0, size(0.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(mid) > mid else (lo, mid)
    return -np.linalg.solve(A + L * hi / 2 * np.eye(len(g)), g)


def plain_cr(clients, x0, rounds, L, alpha, compress):
    d = len(x0)
    H = [c.hess(x0) for c in clients]
    x, xs = x0, [x0]
    for k in range(rounds):
        hess = [c.hess(x) for c in clients]
        l = np.mean([np.linalg.norm(h - Hi) for h, Hi in zip(hess, H)])
        h = plain_cubic(np.mean(H, axis=0) + l * np.eye(d), grad_P(clients, x), L)
        H = [Hi + alpha * compress(i, k, hh - Hi) for i, (hh, Hi) in enumerate(zip(hess, H))]
        x = x + h
        xs.append(x)
    return xs


@pytest.mark.parametrize("cfg, spec, compress, L", [
    (SYNTH, "topk:k=6", topk(6), 2.0),
    pytest.param(PHISH, "randk:k=300", randk(300), None, marks=pytest.mark.data("phishing")),
], ids=["synthetic-topk", "phishing-randk-default-L"])
def test_cr_matches_a_plain_loop(cfg, spec, compress, L):
    clients = clients_of(cfg)
    d, rounds = clients[0].A.shape[1], 10
    extra = {"hessian_lipschitz": L} if L else {}
    L = L or logistic_bound(clients)
    xs = plain_cr(clients, np.zeros(d), rounds, L, 1.0, compress)
    r = go(cfg, algorithm="fednl-cr", compressor=spec, alpha=1.0, rounds=rounds, **extra)
    check(r, clients, xs)
    T, k = d * (d + 1) // 2, int(spec.split("=")[1])
    np.testing.assert_allclose(np.diff(r.metrics["bits_up"]), (d + 1) * 32 + sparse_bits(k, T))
    np.testing.assert_allclose(np.diff(r.metrics["bits_down"]), d * 32)


def logistic_bound(clients):
    """mean_i (1/m) sum_j ||a_ij||^3 / (6 sqrt 3), as |phi^(3)| <= 1/(6 sqrt 3)."""
    return np.mean([np.mean(np.linalg.norm(c.A, axis=1) ** 3) for c in clients]) / (6 * math.sqrt(3))


@pytest.mark.parametrize("cfg", [SYNTH, pytest.param(PHISH, marks=pytest.mark.data("phishing"))],
                         ids=["dense-block", "sparse-block"])
def test_cr_default_L_bounds_the_change_of_the_hessian(cfg):
    clients = clients_of(cfg)
    plan = resolve(cfgmod.build({**cfg, "algorithm": "fednl-cr", "compressor": "identity"}))
    fed = build_federation(plan.data, SerialComm())
    L = fednl_cr.Params.from_options(plan.method, fed).L
    assert L == pytest.approx(logistic_bound(clients), rel=1e-13)
    rng = np.random.default_rng(1)
    hess_P = lambda x: np.mean([c.hess(x) for c in clients], axis=0)  # noqa: E731
    for _ in range(5):
        x, y = rng.standard_normal((2, clients[0].A.shape[1]))
        assert np.linalg.norm(hess_P(x) - hess_P(y), 2) <= L * np.linalg.norm(x - y)


@pytest.mark.data("phishing")
def test_cr_tends_to_fednl_option_2_as_L_vanishes():
    """The cubic step -(A + L r/2 I)^{-1} g differs from FedNL Option 2's by O(L): the gap after
    6 rounds falls tenfold with L (identity compressor: no Top-K choice can flip)."""
    base = {**PHISH, "compressor": "identity", "alpha": 1.0, "rounds": 6}
    fednl = go(base, algorithm="fednl", option=2)
    gaps = np.array([np.linalg.norm(go(base, algorithm="fednl-cr", hessian_lipschitz=L).x - fednl.x)
                     for L in (1e-5, 1e-6, 1e-7, 1e-9)])
    np.testing.assert_allclose(gaps[:2] / gaps[1:3], 10, rtol=0.05)
    assert gaps[3] < 1e-6 * np.linalg.norm(fednl.x)


@pytest.mark.parametrize("kind", ["convex", "indefinite", "hard"])
def test_cubic_step_is_the_global_minimiser(kind):
    """Against scipy.optimize.minimize on the cubic model, and the optimality conditions
    (A + L||h||/2 I) h = -g, A + L||h||/2 I >= 0 (Nesterov and Polyak 2006, Thm 10)."""
    rng = np.random.default_rng(3)
    d, L = 6, 0.7
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    w = {"convex": np.linspace(0.01, 3, d), "indefinite": np.linspace(-1, 2, d), "hard": np.linspace(-1, 2, d)}[kind]
    A = (Q * w) @ Q.T
    g = rng.standard_normal(d)
    if kind == "hard":  # g orthogonal to the bottom eigenvector, and small
        g = 1e-3 * (g - (Q[:, 0] @ g) * Q[:, 0])
    model = lambda h: g @ h + h @ A @ h / 2 + L / 6 * np.linalg.norm(h) ** 3  # noqa: E731
    h = fednl_cr.cubic_step(A, g, L)
    r = np.linalg.norm(h)
    np.testing.assert_allclose((A + L * r / 2 * np.eye(d)) @ h, -g, atol=1e-12)
    assert np.linalg.eigvalsh(A + L * r / 2 * np.eye(d))[0] >= -1e-12
    best = min((scipy.optimize.minimize(model, rng.standard_normal(d), method="BFGS", options={"gtol": 1e-10})
                for _ in range(8)), key=lambda res: res.fun)
    assert model(h) <= best.fun + 1e-12
    if kind != "hard":  # unique minimiser (the hard case has the mirror image -h too)
        np.testing.assert_allclose(h, best.x, atol=1e-5)


# ------------------------------------------------------------------ FedNL-BC (Algorithm 5)
def plain_bc(clients, x0, rounds, option, alpha, compress, K, p, eta):
    n, d = len(clients), len(x0)
    H = [c.hess(x0) for c in clients]
    w, z, gz, ws, coins = x0, x0, None, [x0], []
    for k in range(rounds):
        xi = k == 0 or p >= 1 or ClientStreams(SEED, [n], k).uniform("fednl-bc:xi", 1)[0, 0] < p
        hess = [c.hess(w) for c in clients]
        Hk = np.mean(H, axis=0)
        if xi:
            z, gz = w, grad_P(clients, w)
        if option == 2:
            M = Hk + np.mean([np.linalg.norm(h - Hi) for h, Hi in zip(hess, H)]) * np.eye(d)
        else:
            lam_, U = np.linalg.eigh(Hk)
            M = (U * np.maximum(lam_, LAM)) @ U.T
        x_next = w - np.linalg.solve(M, gz + M @ (w - z))
        s = x_next - w
        s[np.argsort(-np.abs(s), kind="stable")[K:]] = 0.0
        w = w + eta * s
        H = [Hi + alpha * compress(i, k, hh - Hi) for i, (hh, Hi) in enumerate(zip(hess, H))]
        ws.append(w)
        coins.append(xi)
    return ws, np.array(coins)


@pytest.mark.parametrize("cfg, spec, compress, option, eta", [
    (SYNTH, "topk:k=6", topk(6), 2, None),
    (SYNTH, "topk:k=6", topk(6), 1, 1.0),
    pytest.param(PHISH, "randk:k=300", randk(300), 2, 1.0, marks=pytest.mark.data("phishing")),
], ids=["synthetic-opt2-theory-eta", "synthetic-opt1", "phishing-randk"])
def test_bc_matches_a_plain_loop_and_its_bit_ledger(cfg, spec, compress, option, eta):
    clients = clients_of(cfg)
    d, rounds, K, p = clients[0].A.shape[1], 14, 2, 0.5
    T, k = d * (d + 1) // 2, int(spec.split("=")[1])
    eta_used = eta if eta is not None else 1 - math.sqrt(1 - K / d)
    ws, coins = plain_bc(clients, np.zeros(d), rounds, option, 1.0, compress, K, p, eta_used)
    extra = {} if eta is None else {"eta": eta}
    r = go(cfg, algorithm="fednl-bc", compressor=spec, alpha=1.0, option=option, down_compressor=f"topk:k={K}",
           grad_probability=p, rounds=rounds, **extra)
    check(r, clients, ws, rtol=1e-9)
    assert 0 < coins.sum() < rounds  # both kinds of round happened
    np.testing.assert_array_equal(r.metrics["gradient_sent"][:-1], coins)
    up = sparse_bits(k, T) + 32 * (option == 2) + d * 32 * coins
    np.testing.assert_allclose(r.metrics["bits_up"], T * 32 + np.r_[0, np.cumsum(up)])
    np.testing.assert_allclose(np.diff(r.metrics["bits_down"]), sparse_bits(K, d) + 1)


@pytest.mark.data("phishing")
@pytest.mark.parametrize("option", [1, 2])
def test_bc_with_identity_model_compressor_and_p_one_is_fednl(option):
    base = {**PHISH, "compressor": "topk:k=2d", "alpha": 1.0, "option": option, "rounds": 8}
    bc = go(base, algorithm="fednl-bc", down_compressor="identity", grad_probability=1.0)
    fednl = go(base, algorithm="fednl")
    np.testing.assert_allclose(bc.x, fednl.x, rtol=1e-12, atol=1e-15)
    big = fednl.metrics["grad_norm"] > 1e-10
    np.testing.assert_allclose(bc.metrics["grad_norm"][big], fednl.metrics["grad_norm"][big], rtol=1e-9)
    np.testing.assert_array_equal(bc.metrics["bits_up"], fednl.metrics["bits_up"])
    np.testing.assert_array_equal(bc.metrics["bits_down"], fednl.metrics["bits_down"])


def test_model_compressors_act_on_d_vectors():
    d = 10
    v = np.arange(1.0, d + 1)[None, :] * np.array([1, -1] * 5)
    top = fednl_bc.model_compressor("topk:k=3", d).compress(v)
    np.testing.assert_array_equal(top.values[0], np.where(np.abs(v[0]) >= 8, v[0], 0))
    assert (top.value_bits[0], top.index_bits[0]) == (3 * 32, 3 * 4)
    rnd = fednl_bc.model_compressor("randk:k=4", d)
    assert rnd.omega == d / 4 - 1
    out = rnd.compress(v, ClientStreams(0, [d], 1)).values[0]
    assert np.count_nonzero(out) == 4 and np.allclose(out[out != 0], v[0][out != 0] * d / 4)
    ident = fednl_bc.model_compressor("identity", d).compress(v)
    assert ident.value_bits[0] == d * 32 and ident.index_bits[0] == 0


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("values, match", [
    ({"algorithm": "fednl-pp", "participation": 8}, "participation = 8 asks for 8 clients per round; valid: at most n = 7"),
    ({"algorithm": "fednl-pp", "option": 1}, "--option does not apply to algorithm 'fednl-pp'"),
    ({"algorithm": "fednl-ls", "ls_c": 0.7}, "--ls-c = 0.7 is out of range; valid: 0 < c <= 1/2"),
    ({"algorithm": "fednl-ls", "ls_gamma": 1.0}, "--ls-gamma = 1.0 is out of range; valid: 0 < gamma < 1"),
    ({"algorithm": "fednl-ls", "option": 2, "mu": 0.1}, "--mu is the projection level of Option 1"),
    ({"algorithm": "fednl-cr", "hessian_lipschitz": 0.0}, "--hessian-lipschitz = 0.0 is out of range; valid: L > 0"),
    ({"algorithm": "fednl-cr", "ls_c": 0.1}, "--ls-c does not apply to algorithm 'fednl-cr'"),
    ({"algorithm": "fednl-bc", "grad_probability": 0.0}, "--grad-probability = 0.0 is out of range; valid: 0 < p <= 1"),
    ({"algorithm": "fednl-bc", "down_compressor": "topk:k=8d"}, r"--down-compressor: compressor 'topk:k=8d': k = 40 is outside 1..5 \(the d = 5 vector entries\)"),
    ({"algorithm": "fednl-bc", "down_compressor": "rankr:r=1"}, "--down-compressor: compressor 'rankr:r=1' cannot compress a vector; valid: identity, topk"),
    ({"algorithm": "fednl-bc", "down_compressor": "topk:k=0"}, r"--down-compressor: compressor .topk:k=0.: k = 0 is outside 1..5"),
])
def test_bad_parameters_fail_before_the_first_round_with_one_line(values, match):
    with pytest.raises(MpifedError, match=match) as err:
        go({**SYNTH, "compressor": "topk:k=3"}, rounds=3, **values)
    assert "\n" not in str(err.value)
