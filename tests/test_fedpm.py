"""FedPM (Ishii et al. 2026, eq. (9)-(10)) and LocalNewton (eq. (5)) against plain client-by-client
re-implementations written here from the paper's equations, Newton's method, and the
behaviour of the paper's Test 1 (w8a, a9a; K = 1; x0 ~ N(x*, 0.1^2); T = 50)."""
import numpy as np
import pytest
from scipy.special import expit
from threadpoolctl import threadpool_limits

from mpifed import tri
from mpifed.algorithms.second_order import fednl, fedpm, localnewton, newton
from mpifed.algorithms.base import SolverError
from mpifed.comm import SerialComm
from mpifed.config import build
from mpifed.data import load, paper_split, synthetic_clients
from mpifed.driver import iterate, reference_solution, run, start_point
from mpifed.errors import ConfigError, MpifedError
from mpifed.federation import build_federation
from mpifed.plan import resolve

LAM = 1e-3


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The oracles' small solves are slower with threads on a shared machine; run() uses one too."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ------------------------------------------------------------------ plain oracles
def clients_of(A, b, n, m):
    A = A.toarray()
    return [(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m]) for i in range(n)]


def f_g_H(client, x, lam=LAM):
    """f_i, grad f_i, hess f_i of (1/m) sum log(1 + exp(-b a^T x)) + lam/2 ||x||^2."""
    A, b = client
    t = A @ x
    f = np.mean(np.logaddexp(0.0, -b * t)) + 0.5 * lam * x @ x
    g = A.T @ (-b * expit(-b * t)) / len(b) + lam * x
    s = expit(t)
    H = (A.T * (s * (1 - s))) @ A / len(b) + lam * np.eye(len(x))
    return f, g, H


def plain_local_steps(client, x, K, eta, search=None, lam=LAM):
    """Eq. (5)/(10) for one client; ``search`` = (c, gamma): Armijo backtracking from eta, 30 tries."""
    theta, backtracks = x.copy(), 0
    for _ in range(K):
        f, g, H = f_g_H(client, theta, lam)
        p = np.linalg.solve(H, g)
        s = eta
        if search:
            c, gamma = search
            for _ in range(30):
                if f_g_H(client, theta - s * p, lam)[0] <= f - c * s * g @ p:
                    break
                s, backtracks = gamma * s, backtracks + 1
            else:
                s = 0.0
        theta = theta - s * p
    return theta, H, backtracks


def plain_rounds(clients, rounds, K, eta, mixing, search=None, lam=LAM):
    """Iterates theta^(0..rounds) of FedPM (``mixing='preconditioned'``, eq. (10) literally) or LocalNewton."""
    x = np.zeros(clients[0][0].shape[1])
    xs, backtracks = [x], 0
    for _ in range(rounds):
        local = [plain_local_steps(c, x, K, eta, search, lam) for c in clients]
        backtracks += sum(bt for _, _, bt in local)
        if mixing == "preconditioned":
            P = np.mean([H for _, H, _ in local], axis=0)
            x = np.linalg.solve(P, np.mean([H @ th for th, H, _ in local], axis=0))
        else:
            x = np.mean([th for th, _, _ in local], axis=0)
        xs.append(x)
    return xs, backtracks


def grad_norms(clients, xs, lam=LAM):
    return np.array([np.linalg.norm(np.mean([f_g_H(c, x, lam)[1] for c in clients], axis=0)) for x in xs])


def superlinear(errors):
    """The last three contraction factors e_{k+1}/e_k shrink, and the last one is below 1e-2."""
    ratios = errors[1:] / errors[:-1]
    return bool(np.all(np.diff(ratios[-3:]) < 0) and ratios[-1] < 1e-2), ratios


# ------------------------------------------------------------------ 1. FedPM K = 1 is Newton
@pytest.mark.data("a9a")
def test_fedpm_k1_eta1_equals_newton_on_a9a():
    base = {"dataset": "a9a", "rounds": 8, "quiet": True, "reference_iterations": 0, "out": None}
    exact = run({**base, "algorithm": "newton"})
    pm = run({**base, "algorithm": "fedpm"})
    np.testing.assert_allclose(pm.x, exact.x, rtol=1e-12, atol=1e-14)
    # atol 1e-16: P_i (P_i^{-1} g_i) returns g_i up to eps ||g_i||, the rounding noise of the local step.
    np.testing.assert_allclose(pm.metrics["grad_norm"], exact.metrics["grad_norm"], rtol=1e-12, atol=1e-16)
    assert exact.metrics["grad_norm"][-1] < 1e-15
    # Each client sends theta_i and the packed P_i every round: d + d(d+1)/2 floats (= Newton's g_i, H_i).
    np.testing.assert_array_equal(pm.metrics["bits_up"], np.arange(9) * (123 + tri.size(123)) * 32)
    np.testing.assert_array_equal(pm.metrics["bits_down"], np.arange(9) * 123 * 32)


# ------------------------------------------------------------------ 2. against plain loops
SYNTH = {"dataset": "synthetic", "clients": 8, "samples_per_client": 40, "features": 10, "seed": 3}


def synthetic(n=8, m=40, d=10, seed=3):
    return clients_of(*synthetic_clients(range(n), m, d, seed), n, m)


@pytest.mark.parametrize("K, eta", [(3, 1.0), (2, 0.6)])
def test_fedpm_multiple_local_steps_match_eq10_client_by_client(K, eta):
    xs, _ = plain_rounds(synthetic(), 10, K, eta, "preconditioned")
    result = run({**SYNTH, "algorithm": "fedpm", "local_steps": K, "eta": eta, "rounds": 10,
                  "quiet": True, "reference_iterations": 0})
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(result.metrics["grad_norm"], grad_norms(synthetic(), xs), rtol=1e-10, atol=1e-15)
    assert np.allclose(result.metrics["bits_up"][1], (10 + 55) * 32)


@pytest.mark.data("a9a")
def test_fedpm_k2_on_an_a9a_subset_matches_eq10():
    """Sparse one-hot data (the CSR path of the batched local steps)."""
    ds = load("a9a")
    rows = paper_split(ds.A.shape[0], 6, 60).rows
    clients = clients_of(ds.A[rows], ds.b[rows], 6, 60)
    xs, _ = plain_rounds(clients, 6, 2, 1.0, "preconditioned")
    result = run({"dataset": "a9a", "clients": 6, "samples_per_client": 60, "algorithm": "fedpm", "local_steps": 2,
                  "rounds": 6, "quiet": True, "reference_iterations": 0})
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(result.metrics["grad_norm"], grad_norms(clients, xs), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("K, eta, search", [(1, 1.0, False), (4, 0.8, False), (1, 1.0, True), (3, 1.9, True)])
def test_localnewton_matches_simple_mixing_client_by_client(K, eta, search):
    ls = (1e-4, 0.5) if search else None
    xs, backtracks = plain_rounds(synthetic(), 8, K, eta, "simple", ls)
    if search and eta > 1:
        assert backtracks > 0  # the batched line search is exercised, not just the unit step
    extra = {"local_line_search": True} if search else {}
    result = run({**SYNTH, "algorithm": "localnewton", "local_steps": K, "eta": eta, "rounds": 8,
                  "quiet": True, "reference_iterations": 0, **extra})
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(result.metrics["grad_norm"], grad_norms(synthetic(), xs), rtol=1e-10, atol=1e-15)
    assert np.allclose(result.metrics["bits_up"][-1], 8 * 10 * 32)  # theta_i only


@pytest.mark.data("a9a")
def test_localnewton_line_search_with_a9a_clients_and_custom_armijo():
    ds = load("a9a")
    rows = paper_split(ds.A.shape[0], 5, 50).rows
    clients = clients_of(ds.A[rows], ds.b[rows], 5, 50)
    xs, backtracks = plain_rounds(clients, 4, 3, 2.5, "simple", (0.3, 0.6))
    assert backtracks > 0
    result = run({"dataset": "a9a", "clients": 5, "samples_per_client": 50, "algorithm": "localnewton",
                  "local_steps": 3, "eta": 2.5, "local_line_search": True, "ls_c": 0.3, "ls_gamma": 0.6,
                  "rounds": 4, "quiet": True, "reference_iterations": 0})
    np.testing.assert_allclose(result.x, xs[-1], rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ 3. the paper's Test 1
def paper_test1(dataset, methods, rounds=50, tol=1e-12):
    """One federation and one x* (20 Newton steps, as the paper) for several methods from
    x0 = x* + 0.1 N(0, I): the per-round ||grad P(x^k)|| and ||x^k - x*|| of each."""
    config = build({"dataset": dataset, "x0_noise": 0.1, "quiet": True})
    fed = build_federation(resolve(config).data, SerialComm())
    x_star, _ = reference_solution(fed, 20)
    x0 = start_point(config, fed.d, x_star)
    out = {}
    for name, module, fields in methods:
        params = module.Params.from_options(resolve(build({"dataset": dataset, "algorithm": module.__name__.split(".")[-1],
                                                           **fields})).method, fed)
        g, dist = [], []

        def record(k, agg, x, timing, bits):
            g.append(np.linalg.norm(agg.grad / agg.n))
            dist.append(np.linalg.norm(x - x_star))

        x, status, message, _ = iterate(fed, module, params, x0, rounds, tol, record)
        assert status != "failed", message
        out[name] = (np.array(g), np.array(dist), x)
    return out, x_star


TEST1_METHODS = [("newton", newton, {}), ("fedpm", fedpm, {}),
                 ("fednl-previous", fednl, {"compressor": "identity"}),
                 ("fednl-updated", fednl, {"compressor": "identity", "step_hessian": "updated"})]


@pytest.mark.parametrize("dataset", [pytest.param(n, marks=pytest.mark.data(n), id=n) for n in ("a9a", "w8a")])
def test1_newton_fedpm_fednl_converge_superlinearly(dataset):
    """FedPM paper, Test 1: from x0 ~ N(x*, 0.1^2) all three reach ||grad P|| <= 1e-12 well within
    T = 50 rounds, with shrinking contraction factors. FedPM (K = 1) is Newton; FedNL-identity
    (Option 2) steps with H^k + l^k I and needs a few more rounds in either Hessian timing."""
    runs, _ = paper_test1(dataset, TEST1_METHODS)
    for name, (g, dist, _) in runs.items():
        assert g[-1] <= 1e-12 and len(g) - 1 <= 50, name
        fast, ratios = superlinear(g)
        assert fast, (name, ratios)
        assert superlinear(dist)[0], (name, dist)
    rounds = {name: len(g) - 1 for name, (g, _, _) in runs.items()}
    assert rounds["newton"] == rounds["fedpm"] <= rounds["fednl-previous"], rounds  # FedPM is Newton;
    assert rounds["newton"] <= rounds["fednl-updated"], rounds                     # FedNL lags Newton
    np.testing.assert_allclose(runs["fedpm"][2], runs["newton"][2], rtol=1e-12, atol=1e-13)


@pytest.mark.data("a9a")
def test1_localnewton_stalls_at_its_simple_mixing_fixed_point_on_a9a():
    """Simple mixing (eq. (7)) converges to theta with mean_i P_i(theta)^{-1} g_i(theta) = 0,
    not to x*: on a9a it stops at ||grad P|| ~ 2e-3 for every eta (the fixed point does not
    depend on eta), where FedPM reaches 1e-12 in 4 rounds."""
    runs, _ = paper_test1("a9a", [("localnewton", localnewton, {})], rounds=15)
    g, dist, x = runs["localnewton"]
    assert g[-1] > 1e-3 and dist[-1] > 0.1
    assert abs(g[-1] - g[-2]) < 1e-6 * g[-1] and not superlinear(g)[0]  # stalled, not slow
    ds = load("a9a")
    rows = paper_split(ds.A.shape[0], 80, 407).rows
    clients = clients_of(ds.A[rows], ds.b[rows], 80, 407)
    local = [f_g_H(c, x) for c in clients]
    mixed = np.mean([np.linalg.solve(H, g_i) for _, g_i, H in local], axis=0)
    assert np.linalg.norm(mixed) < 1e-8 * np.linalg.norm(x)  # the eq. (7) fixed point
    assert np.linalg.norm(np.mean([g_i for _, g_i, _ in local], axis=0)) == pytest.approx(g[-1], rel=1e-8)


# ------------------------------------------------------------------ 4. bad input
@pytest.mark.parametrize("fields, words", [
    ({"algorithm": "fedpm", "eta": 0}, "--eta = 0.0 is out of range; valid: eta > 0"),
    ({"algorithm": "localnewton", "eta": -1.0}, "--eta = -1.0 is out of range; valid: eta > 0"),
    ({"algorithm": "fedpm", "local_steps": 0}, "--local-steps = 0 is out of range"),
    ({"algorithm": "localnewton", "local_steps": -2}, "--local-steps = -2 is out of range"),
    ({"algorithm": "fedpm", "local_line_search": True}, "--local-line-search does not apply to algorithm 'fedpm'"),
    ({"algorithm": "localnewton", "ls_c": 0.1}, "add --local-line-search"),
    ({"algorithm": "fedpm", "alpha": 0.5}, "--alpha does not apply"),
])
def test_bad_configuration_is_one_line(fields, words):
    with pytest.raises(MpifedError) as err:  # from_options's errors arrive through the collective setup
        run({**SYNTH, "rounds": 1, "quiet": True, "reference_iterations": 0, **fields})
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("module", [fedpm, localnewton])
def test_params_refuse_bad_eta_and_k_directly(module):
    with pytest.raises(ConfigError, match=r"^eta = 0 is out of range; valid: eta > 0$"):
        module.Params(eta=0)
    with pytest.raises(ConfigError, match=r"^local_steps K = 0 is out of range"):
        module.Params(K=0)
    with pytest.raises(ConfigError, match=r"local_steps K = 1.5"):
        module.Params(K=1.5)


@pytest.mark.parametrize("algorithm", ["fedpm", "localnewton"])
def test_singular_local_hessian_is_a_clear_solver_error(algorithm):
    """lam = 0 and fewer samples than features: every grad^2 f_i is singular."""
    with pytest.raises(SolverError) as err:
        run({"dataset": "synthetic", "clients": 4, "samples_per_client": 5, "features": 10, "lam": 0.0,
             "algorithm": algorithm, "rounds": 2, "quiet": True, "reference_iterations": 0})
    message = str(err.value)
    assert "client(s) 0, 1, 2, 3 is not positive definite" in message and "\n" not in message


def test_block_solve_names_only_the_bad_clients():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((5, 4, 4))
    P = B @ B.transpose(0, 2, 1) + np.eye(4)
    P[3] = np.diag([1.0, 1.0, 1.0, -1e-3])
    only_13 = r"client\(s\) 13 is not positive definite \(smallest eigenvalue -1.000e-03\)"
    with pytest.raises(SolverError, match=only_13):
        localnewton.solve_spd_batched(P, rng.standard_normal((5, 4)), np, np.arange(10, 15), "P")
    u = rng.standard_normal(4)
    P[3] = np.outer(u, u) + np.outer(u[::-1], u[::-1])  # rank 2: singular to working precision
    with pytest.raises(SolverError, match=r"client\(s\) 13 is not positive definite"):
        localnewton.solve_spd_batched(P, rng.standard_normal((5, 4)), np, np.arange(10, 15), "P")
    P[3] = np.eye(4)
    g = rng.standard_normal((5, 4))
    np.testing.assert_allclose(localnewton.solve_spd_batched(P, g, np, np.arange(5), "P"),
                               np.linalg.solve(P, g[..., None])[..., 0], rtol=1e-12)


@pytest.mark.parametrize("algorithm", ["fedpm", "localnewton"])
def test_partial_participation_mixes_only_the_participants(algorithm):
    """With tau of n clients, one round equals the same round on a federation of just those clients
    (the mixing runs over the participants S only; the others send nothing)."""
    from mpifed import config as cfgmod
    from mpifed.comm import SerialComm
    from mpifed.federation import build_federation
    from mpifed.rng import participants

    common = {"dataset": "synthetic", "clients": 8, "samples_per_client": 30, "features": 4, "algorithm": algorithm,
              "local_steps": 2, "rounds": 1, "quiet": True, "reference_iterations": 0, "out": None}
    part = run({**common, "participation": 3})
    chosen = np.flatnonzero(participants(0, 8, 3, 0))
    fed = build_federation(resolve(cfgmod.build(common)).data, SerialComm())
    block = fed.block
    # the plain re-implementation: K local Newton steps per chosen client from x0 = 0, then mix
    thetas, Ps = [], []
    for i in chosen:
        A = block._A3[i, :30]
        b = block._b3[i, :30]
        th = np.zeros(4)
        for _ in range(2):
            t = A @ th
            g = A.T @ (-b / (1 + np.exp(b * t))) / 30 + 1e-3 * th
            s = 1 / (1 + np.exp(-t))
            P = (A.T * (s * (1 - s))) @ A / 30 + 1e-3 * np.eye(4)
            th = th - np.linalg.solve(P, g)
        thetas.append(th)
        Ps.append(P)
    if algorithm == "localnewton":
        expected = np.mean(thetas, axis=0)
    else:
        expected = np.linalg.solve(sum(Ps), sum(P @ th for P, th in zip(Ps, thetas)))
    np.testing.assert_allclose(part.x, expected, rtol=1e-10, atol=1e-13)
    assert part.metrics["participants"][0] == 3
    per_round = (4 + (10 if algorithm == "fedpm" else 0)) * 32
    assert part.metrics["bits_up"][1] == pytest.approx(3 / 8 * per_round)
