"""FedNL's options: the diagonal Hessian, the CG solver and the adaptive (Levenberg-Marquardt) shift, against
plain loops written here from the data, the direct solves, scipy, their bit ledgers, bad input, and (under
mpiexec) the rank count."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

from rank_invariance import assert_same, batches, distributed_and_serial
from sparse_data import sparse_binary
from test_fednl_variants import LAM, SEED, SYNTH, _start, clients_of, grad_P
from mpifed import compressors, problems
from mpifed.algorithms.base import SolverError, solve_projected
from mpifed.algorithms.second_order import fednl
from mpifed.algorithms.second_order.fednl_solve import cg_solve
from mpifed.driver import run
from mpifed.errors import MpifedError
from mpifed.rng import ClientStreams

SPARSE = {"dataset": sparse_binary(), "clients": 9, "samples_per_client": 40, "seed": SEED}
RESOLUTION = 2.0**-40


def go(cfg, **kw):
    return run({**cfg, "quiet": True, "reference_iterations": 0, "tol": 0.0, **kw})


def diag_hess(client, x):
    """diag grad^2 f_i(x) = mean_j phi''(a_j^T x) a_j^2 + lam, from the rows."""
    s = 1 / (1 + np.exp(-(client.A @ x)))
    return (client.A ** 2).T @ (s * (1 - s)) / len(client.b) + LAM


def top_k_vector(k):
    def compress(v):
        out = np.zeros_like(v)
        keep = np.argsort(-np.abs(v), kind="stable")[:k]
        out[keep] = v[keep]
        return out
    return compress


# ------------------------------------------------------------------ the diagonal
def test_block_diagonals_are_the_diagonals_of_the_packed_hessians():
    rng = np.random.default_rng(3)
    sizes = np.array([3, 5, 2, 6])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    b = np.where(rng.random(offsets[-1]) < 0.5, -1.0, 1.0)
    for A in (sp.csr_matrix(rng.standard_normal((offsets[-1], 7))),
              sp.random(offsets[-1], 25, density=0.2, random_state=4, format="csr")):
        block = problems.LogisticBlock(A, b, offsets, LAM)
        x = rng.standard_normal(block.d)
        _, _, h = block.derivatives_and_coefficients(x)
        packed = block.derivatives(x)[2]
        iu = np.triu_indices(block.d)
        on_diagonal = iu[0] == iu[1]
        np.testing.assert_allclose(block.hessian_diagonals(h), packed[:, on_diagonal], rtol=1e-13, atol=1e-16)


def plain_diagonal(clients, x0, rounds, option, compress, alpha=1.0, mu=LAM):
    """FedNL on diagonals: H_i^0 = D_i(x^0); x^{k+1} = x^k - g / M with M = max(H^k, mu) or H^k + l^k."""
    H = [diag_hess(c, x0) for c in clients]
    x, xs = x0, [x0]
    for _ in range(rounds):
        D = [diag_hess(c, x) for c in clients]
        g, Hk = grad_P(clients, x), np.mean(H, axis=0)
        M = np.maximum(Hk, mu) if option == 1 else Hk + np.mean([np.linalg.norm(Hi - Di) for Hi, Di in zip(H, D)])
        H = [Hi + alpha * compress(Di - Hi) for Hi, Di in zip(H, D)]
        x = x - g / M
        xs.append(x)
    return xs


@pytest.mark.parametrize("cfg, spec, option", [
    (SYNTH, "identity", 1), (SYNTH, "identity", 2), (SPARSE, "identity", 2), (SPARSE, "topk:k=10", 2),
], ids=["synthetic-opt1", "synthetic-opt2", "sparse-opt2", "sparse-topk"])
def test_diagonal_fednl_is_a_diagonal_newton_iteration_with_its_bit_ledger(cfg, spec, option):
    clients = clients_of(cfg)
    d, rounds = clients[0].A.shape[1], 8
    k = d if spec == "identity" else int(spec.split("=")[1])
    xs = plain_diagonal(clients, np.zeros(d), rounds, option, top_k_vector(k))
    r = go(cfg, hessian="diagonal", compressor=spec, alpha=1.0, option=option, rounds=rounds,
           adaptive_regularization=False)
    np.testing.assert_allclose(r.x, xs[-1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(r.metrics["grad_norm"], [np.linalg.norm(grad_P(clients, x)) for x in xs], rtol=1e-10)
    S = d * 32 if spec == "identity" else k * (32 + math.ceil(math.log2(d)))
    up = (d + (option == 2)) * 32 + S
    np.testing.assert_allclose(r.metrics["bits_up"], d * 32 + np.arange(rounds + 1) * up)
    np.testing.assert_allclose(r.metrics["bits_down"], np.arange(rounds + 1) * d * 32)


def test_diagonal_client_state_is_d_numbers_per_client():
    """The client state holds (n, d), the uplink no (n, T) array, whatever d."""
    rng = np.random.default_rng(1)
    n, m, d = 6, 8, 60
    offsets = np.arange(n + 1) * m
    A = sp.random(n * m, d, density=0.1, random_state=2, format="csr")
    block = problems.LogisticBlock(A, np.where(rng.random(n * m) < 0.5, -1.0, 1.0), offsets, LAM)
    p = fednl.Params(compressors.make("randk:k=0.25d", d, vector=True), 0.25, hessian="diagonal")
    state, up = fednl.client_init(p, block, np.zeros(d), ClientStreams(0, np.arange(n), -1))
    for k in range(2):
        state, up = fednl.client_step(p, block, state, rng.standard_normal(d), ClientStreams(0, np.arange(n), k))
    arrays = [state.H, up.grad, up.loss, *up.fields.values()]
    assert state.H.shape == (n, d) and state.H.nbytes == n * d * 8
    assert max(a.size for a in arrays) == n * d and not up.sums


# ------------------------------------------------------------------ the CG solver
def test_cg_equals_the_direct_solves_and_falls_back_where_the_projection_acts():
    rng = np.random.default_rng(5)
    d = 40
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    g = rng.standard_normal(d)
    spd = (Q * np.geomspace(1e-2, 10, d)) @ Q.T
    np.testing.assert_allclose(cg_solve(spd, g, 200, shift=0.3), scipy.linalg.solve(spd + 0.3 * np.eye(d), g),
                               rtol=1e-10)
    report = {}
    np.testing.assert_allclose(cg_solve(spd, g, 200, mu=1e-3, report=report), scipy.linalg.solve(spd, g), rtol=1e-9)
    assert report["cg_fallback"] == 0 and report["cg_residual"] <= 1e-12 and report["cg_iterations"] < 200
    indefinite = (Q * np.linspace(-1, 5, d)) @ Q.T
    report = {}
    np.testing.assert_allclose(cg_solve(indefinite, g, 200, mu=0.1, report=report),
                               solve_projected(indefinite, g, 0.1), rtol=1e-12)
    assert report["cg_fallback"] == 1 and report["clipped_eigenvalues"] > 0
    with pytest.raises(SolverError, match="not positive definite"):
        cg_solve(indefinite, g, 200, shift=0.5)
    # warm start from the answer: no iteration needed; capped: an inexact step
    exact = scipy.linalg.solve(spd, g)
    report = {}
    np.testing.assert_allclose(cg_solve(spd, g, 200, guess=exact, report=report), exact, rtol=1e-10)
    assert report["cg_iterations"] <= 1
    report = {}
    cg_solve(spd, g, 3, report=report)
    assert report["cg_iterations"] == 3 and report["cg_residual"] > 1e-6


@pytest.mark.parametrize("kw", [
    {"option": 2, "compressor": "topk:k=2d"}, {"option": 1, "compressor": "randk:k=3d"},
    {"option": 2, "compressor": "randk:k=3d", "step_hessian": "updated"},
    {"algorithm": "fednl-ls", "compressor": "randk:k=3d"},
    {"algorithm": "fednl-pp", "compressor": "topk:k=2d", "participation": 4},
], ids=["opt2", "opt1", "randk-updated", "fednl-ls", "fednl-pp"])
def test_cg_with_enough_iterations_is_the_cholesky_path(kw):
    """Option 1 with Rand-K: this data's tied columns make Top-K's choice flip on last-bit differences."""
    cfg = {**SPARSE, "rounds": 12, **kw}
    direct = go(cfg)
    cg = go(cfg, solver="cg", cg_iterations=200)
    np.testing.assert_allclose(cg.x, direct.x, rtol=1e-10, atol=1e-12)
    big = direct.metrics["grad_norm"] > 1e-10
    np.testing.assert_allclose(cg.metrics["grad_norm"][big], direct.metrics["grad_norm"][big], rtol=1e-10)
    for key in ("bits_up", "bits_down", "exchanges"):
        np.testing.assert_array_equal(cg.metrics[key], direct.metrics[key])


# ------------------------------------------------------------------ adaptive regularization
def plain_lm(clients, x0, rounds, diagonal, compress, lam=LAM):
    """FedNL Option 2 (previous H) with shift l^k + sigma^k and the ratio test; returns the iterates, the sigma
    used in each round, and whether each round tested (0: untested, 1: accepted, -1: rejected)."""
    hess = (lambda c, x: diag_hess(c, x)) if diagonal else (lambda c, x: c.hess(x))
    H = [hess(c, x0) for c in clients]
    x, sigma, xs, sigmas, outcome = x0, 0.0, [x0], [], []
    P = lambda z: np.mean([c.f(z) for c in clients])  # noqa: E731
    for _ in range(rounds):
        D = [hess(c, x) for c in clients]
        g, Hk = grad_P(clients, x), np.mean(H, axis=0)
        l = np.mean([np.linalg.norm(Hi - Di) for Hi, Di in zip(H, D)])
        M = np.diag(Hk) if diagonal else Hk
        s = -np.linalg.solve(M + (l + sigma) * np.eye(len(x)), g)
        pred = -(g @ s + 0.5 * s @ M @ s)
        H = [Hi + compress(Di - Hi) for Hi, Di in zip(H, D)]
        sigmas.append(sigma)
        if pred <= RESOLUTION * abs(P(x)):
            x = x + s
            outcome.append(0)
        else:
            rho = (P(x) - P(x + s)) / pred
            if rho < 0.25:
                sigma = min(max(2 * sigma, lam), 1e10)
                outcome.append(-1)
            else:
                sigma = (sigma / 2 if sigma / 2 >= lam else 0.0) if rho > 0.75 else sigma
                x = x + s
                outcome.append(1)
        xs.append(x)
    return xs, np.array(sigmas), np.array(outcome)


@pytest.mark.parametrize("cfg, diagonal, rounds", [
    ({**SYNTH, "features": 8, "x0_noise": 3.0}, True, 25), (SPARSE, True, 25),
    ({**SYNTH, "x0_noise": 10.0}, False, 15),
], ids=["synthetic-diagonal", "sparse-diagonal", "synthetic-full"])
def test_adaptive_regularization_matches_a_plain_levenberg_marquardt_loop(cfg, diagonal, rounds):
    kw = {"hessian": "diagonal", "compressor": "identity"} if diagonal else {"compressor": "identity"}
    r = run({**cfg, "quiet": True, "reference_iterations": 10 if "x0_noise" in cfg else 0, "tol": 0.0,
             "rounds": rounds, "alpha": 1.0, "adaptive_regularization": True, **kw})
    clients = clients_of(cfg)
    x0 = _start(r) if "x0_noise" in cfg else np.zeros(clients[0].A.shape[1])
    xs, sigmas, outcome = plain_lm(clients, x0, rounds, diagonal, lambda v: v)
    np.testing.assert_allclose(r.x, xs[-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.metrics["grad_norm"], [np.linalg.norm(grad_P(clients, x)) for x in xs], rtol=1e-9,
                               atol=1e-14)
    np.testing.assert_allclose(r.metrics["lm_sigma"][:-1], sigmas, rtol=1e-12)
    np.testing.assert_array_equal(r.metrics["lm_tested"][:-1], outcome != 0)
    np.testing.assert_array_equal(r.metrics["lm_accepted"][:-1], outcome >= 0)
    assert (outcome == -1).any() and (outcome == 1).any()  # both branches of the rule ran
    # a tested round: two exchanges, one more float up (f_i(x + s)); the trial point replaces x^{k+1} down
    np.testing.assert_array_equal(np.diff(r.metrics["exchanges"]), 1 + (outcome != 0))
    d = len(x0)
    S = d * 32 if diagonal else d * (d + 1) // 2 * 32
    np.testing.assert_allclose(np.diff(r.metrics["bits_up"]), (d + 1) * 32 + S + 32 * (outcome != 0))
    np.testing.assert_allclose(np.diff(r.metrics["bits_down"]), d * 32)


def test_diagonal_option_2_is_damped_by_default():
    on = go(SPARSE, hessian="diagonal", rounds=6)
    off = go(SPARSE, hessian="diagonal", rounds=6, adaptive_regularization=False)
    explicit = go(SPARSE, hessian="diagonal", rounds=6, adaptive_regularization=True)
    np.testing.assert_array_equal(on.x, explicit.x)
    assert "lm_sigma" in on.metrics and "lm_sigma" not in off.metrics
    assert "lm_sigma" not in go(SPARSE, rounds=2, compressor="topk:k=d").metrics  # the full Hessian: the paper's


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("values, match", [
    ({"hessian": "diagonal", "compressor": "rankr:r=1"},
     "--hessian diagonal compresses the d-vector diag H_i: compressor 'rankr:r=1' cannot compress a vector"),
    ({"hessian": "diagonal", "compressor": "topk:k=8d"}, r"k = 40 is outside 1..5 \(the d = 5 vector entries\)"),
    ({"hessian": "diagonal", "compressor": "toplek:k=2"}, "cannot compress a vector"),
    ({"hessian": "block"}, "--hessian = 'block' is out of range; valid: full"),
    ({"solver": "lu"}, "--solver = 'lu' is out of range; valid: cholesky"),
    ({"solver": "cg", "cg_iterations": 0}, "--cg-iterations = 0 is out of range; valid: an integer >= 1"),
    ({"cg_iterations": 5}, "--cg-iterations = 5 caps the CG solver's iterations; it needs --solver cg"),
    ({"solver": "cg", "hessian": "diagonal"}, "--solver cg needs --hessian full"),
    ({"algorithm": "fednl-cr", "solver": "cg"}, "--solver does not apply to algorithm 'fednl-cr'"),
    ({"algorithm": "fednl-bc", "hessian": "diagonal"}, "--hessian does not apply to algorithm 'fednl-bc'"),
    ({"algorithm": "fednl-pp", "hessian": "diagonal"}, "--hessian does not apply to algorithm 'fednl-pp'"),
    ({"algorithm": "fednl-ls", "adaptive_regularization": True},
     "--adaptive-regularization does not apply to algorithm 'fednl-ls'"),
    ({"adaptive_regularization": True, "option": 1}, "it does not apply to --option 1"),
    ({"algorithm": "newton", "solver": "cg"}, "--solver does not apply to algorithm 'newton'"),
])
def test_bad_options_fail_before_the_first_round_with_one_line(values, match):
    with pytest.raises(MpifedError, match=match) as err:
        go({**SYNTH, "compressor": "topk:k=3"}, rounds=3, **values)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ rank count (mpiexec -n 2 / -n 4)
EVERY_OPTION = {
    "diagonal-topk": {**SPARSE, "hessian": "diagonal", "compressor": "topk:k=10", "adaptive_regularization": False},
    "diagonal-randk-opt1": {**SYNTH, "hessian": "diagonal", "compressor": "randk:k=3", "option": 1},
    "diagonal-natural-dense": {**SYNTH, "hessian": "diagonal", "compressor": "natural"},
    "cg-opt2": {**SPARSE, "solver": "cg", "cg_iterations": 7},
    "cg-opt1": {**SPARSE, "solver": "cg", "option": 1, "compressor": "topk:k=d"},
    "adaptive": {**SPARSE, "adaptive_regularization": True, "compressor": "randk:k=2d"},
    "adaptive-diagonal": {**SYNTH, "hessian": "diagonal", "compressor": "identity"},  # on by default here
    "ls-diagonal": {**SPARSE, "algorithm": "fednl-ls", "hessian": "diagonal"},
    "ls-cg": {**SYNTH, "algorithm": "fednl-ls", "compressor": "topk:k=6", "solver": "cg", "cg_iterations": 3},
    "pp-cg": {**SPARSE, "algorithm": "fednl-pp", "participation": 4, "solver": "cg", "cg_iterations": 5},
}


@pytest.mark.mpi
@pytest.mark.parametrize("names", batches(EVERY_OPTION))
def test_every_option_distributed_equals_serial(names, tmp_path):
    pairs = distributed_and_serial({name: {"rounds": 8, "tol": 0.0, "quiet": True, "reference_iterations": 3,
                                           **EVERY_OPTION[name]} for name in names}, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "bits_up", "bits_up_index", "bits_down", "exchanges"))
