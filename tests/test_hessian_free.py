"""The Hessian-free family (newton-cg, disco, lbfgs), its Hessian-vector products, the sparse synthetic federation
and the d x d state check, against finite differences, the packed Hessians, Newton's method and a plain
re-implementation of steepest descent with the same line search."""
import numpy as np
import pytest
import scipy.sparse

from rank_invariance import assert_same, batches, distributed_and_serial
from sparse_data import sparse_binary
from mpifed import footprint, tri
from mpifed.algorithms.hessian_free import common, lbfgs
from mpifed.comm import SerialComm
from mpifed.config import build
from mpifed.data import sparse_synthetic
from mpifed.driver import run
from mpifed.errors import ConfigError, MpifedError
from mpifed.problems.logistic import LogisticBlock, phi, phi_prime

SPARSE = {"dataset": sparse_binary(), "clients": 9, "samples_per_client": 40}
SYNTH = {"dataset": "synthetic", "clients": 7, "samples_per_client": 30, "features": 5}
BIG = {"dataset": "synthetic-sparse:nnz=8", "clients": 6, "samples_per_client": 20, "features": 3000,
       "reference_iterations": 0}


def blocks(dense: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    d, sizes = 12, np.array([5, 9, 3, 7])
    A = scipy.sparse.random(sizes.sum(), d, density=0.3, random_state=seed, format="csr")
    A.data = rng.standard_normal(A.nnz)
    b = np.where(rng.random(sizes.sum()) < 0.5, 1.0, -1.0)
    return LogisticBlock(A, b, np.concatenate([[0], np.cumsum(sizes)]), lam=1e-2, dense=dense), rng


@pytest.mark.parametrize("dense", [False, True])
def test_hvp_equals_the_packed_hessian_times_v_and_finite_differences_of_the_gradient(dense):
    block, rng = blocks(dense)
    x, v = rng.standard_normal(block.d), rng.standard_normal(block.d)
    _, grad, hess = block.derivatives(x)
    Hv = block.hvp(x, v).dense()
    for i in range(block.n):
        np.testing.assert_allclose(Hv[i], tri.unpack(hess[i], block.d) @ v, rtol=1e-12, atol=1e-14)
    eps = 1e-6  # central differences of the gradient: O(eps^2) error
    fd = (block.derivatives(x + eps * v, False)[1] - block.derivatives(x - eps * v, False)[1]) / (2 * eps)
    np.testing.assert_allclose(Hv, fd, rtol=1e-7, atol=1e-9)
    loss, grads, h = block.gradients(x)
    np.testing.assert_allclose(grads.dense(), grad, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(block.hvp(x, v, h).dense(), Hv, rtol=0, atol=0)


@pytest.mark.parametrize("dense", [False, True])
def test_block_sum_is_the_correctly_rounded_sum_of_the_client_vectors(dense):
    from fractions import Fraction
    block, rng = blocks(dense, seed=3)
    x, v = rng.standard_normal(block.d), rng.standard_normal(block.d)
    vectors = block.hvp(x, v)
    hi, lo = common.block_sum(vectors)
    rows = vectors.dense()
    exact = [float(sum(Fraction(float(r)) for r in rows[:, j])) for j in range(block.d)]
    np.testing.assert_allclose(hi + lo, exact, rtol=1e-15, atol=0)


def test_line_values_along_a_direction_match_the_loss_and_gradient():
    block, rng = blocks(False, seed=5)
    x, p = rng.standard_normal(block.d), rng.standard_normal(block.d)
    f, slope = block.along(x, p, [1.0, 0.25])
    for j, s in enumerate([1.0, 0.25]):
        loss, grad, _ = block.derivatives(x + s * p, False)
        np.testing.assert_allclose(f[:, j], loss, rtol=1e-13)
        np.testing.assert_allclose(slope[:, j], grad @ p, rtol=1e-11, atol=1e-14)


def quiet(**config):
    return {"quiet": True, "tol": 0.0, "out": None, **config}


def test_newton_cg_with_exact_cg_is_newtons_method(tmp_path):
    base = quiet(**SYNTH, rounds=6, reference_iterations=0)
    newton = run({**base, "algorithm": "newton", "out": str(tmp_path / "n.h5")}, comm=SerialComm())
    cg = run({**base, "algorithm": "newton-cg", "forcing": 1e-9, "cg_iterations": 50, "out": str(tmp_path / "c.h5")},
             comm=SerialComm())
    assert np.all(cg.metrics["step_length"][:-1] == 1.0)  # Armijo took every unit step
    np.testing.assert_allclose(cg.x, newton.x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cg.metrics["grad_norm"][:4], newton.metrics["grad_norm"][:4], rtol=1e-8)


def test_newton_cg_counts_its_exchanges_and_bits_by_hand(tmp_path):
    out = run(quiet(**SPARSE, algorithm="newton-cg", rounds=4, reference_iterations=0, out=str(tmp_path / "t.h5")),
              comm=SerialComm())
    m, d, fb = out.metrics, 40, 32
    cg, trials = m["cg_iterations"][:-1], m["backtracks"][:-1] + m["armijo_tested"][:-1]
    np.testing.assert_array_equal(np.diff(m["exchanges"]), 1 + cg + trials)
    np.testing.assert_allclose(np.diff(m["bits_up"]), fb * ((d + 1) + cg * d + trials))
    # down: x^k's d floats only when no trial was made; each CG vector d floats; first trial d, later ones 1
    down = fb * (d * (1 - m["armijo_tested"][:-1]) + cg * d + m["armijo_tested"][:-1] * d + m["backtracks"][:-1])
    np.testing.assert_allclose(np.diff(m["bits_down"]), down)
    assert out.status == "completed" and m["grad_norm"][-1] < m["grad_norm"][0] / 100


def test_disco_converges_in_few_outer_steps_and_pcg_needs_fewer_iterations_with_larger_shards(tmp_path):
    def mean_pcg(m):
        out = run(quiet(dataset="synthetic", clients=8, samples_per_client=m, features=10, algorithm="disco",
                        rounds=30, tol=1e-10, reference_iterations=0, out=str(tmp_path / f"{m}.h5")), comm=SerialComm())
        assert out.status == "converged" and out.rounds <= 12, (out.rounds, out.status)
        return np.mean(out.metrics["cg_iterations"][:-1]), out
    small, _ = mean_pcg(15)
    large, out = mean_pcg(2000)
    assert large < small
    m = out.metrics  # hand counts: 1 + T_k exchanges a round, d floats each way each
    np.testing.assert_array_equal(np.diff(m["exchanges"]), 1 + m["cg_iterations"][:-1])
    np.testing.assert_allclose(np.diff(m["bits_up"]), 32 * 10 * (1 + m["cg_iterations"][:-1]))


def steepest_descent(A, b, sizes, lam, x, rounds, steps=lbfgs.STEPS, c1=1e-4, c2=0.9):
    """Plain numpy: x <- x - a g with the largest a = 4^-j meeting Wolfe (else Armijo), P the mean of the f_i."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    w = 1.0 / (len(sizes) * sizes[owner])

    def P(x):
        z = b * (A @ x)
        return w @ phi(z) + 0.5 * lam * x @ x, A.T @ (w * phi_prime(z) * b) + lam * x
    for _ in range(rounds):
        f0, g = P(x)
        ok = [(P(x - a * g)[0] <= f0 - c1 * a * (g @ g), -(P(x - a * g)[1] @ g) >= -c2 * (g @ g)) for a in steps]
        wolfe = [arm and curv for arm, curv in ok]
        j = wolfe.index(True) if any(wolfe) else [arm for arm, _ in ok].index(True)
        x = x - steps[j] * g
    return x


def test_lbfgs_with_no_memory_is_steepest_descent_with_its_line_search(tmp_path):
    out = run(quiet(**SYNTH, algorithm="lbfgs", memory=0, rounds=12, reference_iterations=0,
                    out=str(tmp_path / "l.h5")), comm=SerialComm())
    from mpifed.data import synthetic_clients
    A, b = synthetic_clients(range(7), 30, 5, 0)
    np.testing.assert_allclose(out.x, steepest_descent(A.toarray(), b, np.full(7, 30), 1e-3, np.zeros(5), 12),
                               rtol=1e-10, atol=1e-13)
    m = out.metrics  # two exchanges a round: the gradient, then the 2J = 20 trial values
    np.testing.assert_array_equal(np.diff(m["exchanges"]), 2)
    np.testing.assert_allclose(np.diff(m["bits_up"]), 32 * (5 + 1 + 20))
    np.testing.assert_allclose(np.diff(m["bits_down"]), 32 * (5 + 1))


def test_lbfgs_with_memory_reaches_the_optimum_faster_than_without(tmp_path):
    config = quiet(**SPARSE, algorithm="lbfgs", rounds=200, tol=1e-9, reference_iterations=0)
    with_memory = run({**config, "out": str(tmp_path / "m.h5")}, comm=SerialComm())
    without = run({**config, "memory": 0, "out": str(tmp_path / "z.h5")}, comm=SerialComm())
    assert with_memory.status == "converged" and with_memory.rounds < without.rounds


def plain_lbfgs(A, b, lam, rounds, M=10, c1=1e-4, gamma=0.5):
    """Plain numpy L-BFGS with Armijo backtracking from 1 by gamma, f and grad P evaluated together at each trial
    (P the mean logistic loss over all rows, equal client sizes). Returns each round's first trial point
    x_a + p (x^0 first), P there, and the backtracks each accepted step needed."""
    def P(x):
        t = b * (A @ x)
        return np.mean(np.logaddexp(0.0, -t)) + 0.5 * lam * x @ x, A.T @ (-b / (1 + np.exp(t))) / len(b) + lam * x
    x = np.zeros(A.shape[1])
    f, g = P(x)
    pairs, points, losses, backtracks = [], [x], [f], []
    while len(points) <= rounds:
        q, alphas = g.copy(), []
        for s, y in reversed(pairs):
            alphas.append(s @ q / (y @ s))
            q -= alphas[-1] * y
        if pairs:
            q *= pairs[-1][0] @ pairs[-1][1] / (pairs[-1][1] @ pairs[-1][1])
        for (s, y), a in zip(pairs, reversed(alphas)):
            q += (a - y @ q / (y @ s)) * s
        t, tries = 1.0, 0
        while True:
            z = x - t * q
            fz, gz = P(z)
            if t == 1.0:
                points.append(z), losses.append(fz)
            if fz <= f + c1 * t * (g @ -q):
                break
            t, tries = t * gamma, tries + 1
        backtracks.append(tries)
        s, y = z - x, gz - g
        if s @ y > 1e-10 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs = (pairs + [(s, y)])[-M:]
        x, f, g = z, fz, gz
    return points, np.array(losses), np.array(backtracks)


@pytest.mark.data("a9a")
def test_one_exchange_lbfgs_on_a9a_is_plain_lbfgs_with_armijo_backtracking(tmp_path):
    """Row k is the trial x^k = x_a + p_a; 18 rounds include a step of 1/4 (two backtracks, two more exchanges)."""
    from mpifed.data import load, paper_split
    ds = load("a9a")
    rows = paper_split(ds.A.shape[0], 80, 407).rows
    points, losses, backtracks = plain_lbfgs(ds.A[rows], ds.b[rows], 1e-3, 18)
    out = run(quiet(dataset="a9a", algorithm="lbfgs", lbfgs_exchanges=1, rounds=18, reference_iterations=0),
              comm=SerialComm())
    m = out.metrics
    np.testing.assert_allclose(m["loss"], losses[:19], rtol=1e-12)
    np.testing.assert_allclose(out.x, points[18], rtol=0, atol=1e-12)
    # row k reports round k's acceptance: x^0 untested, then the step that was accepted after the trial x^k
    np.testing.assert_array_equal(m["backtracks"][1:-1], backtracks[:17])
    assert backtracks[:17].max() == 2
    np.testing.assert_array_equal(np.diff(m["exchanges"]), 1 + m["backtracks"][:-1])
    d, fb = 123, 32
    np.testing.assert_allclose(np.diff(m["bits_up"]), fb * (d + 1) * (1 + m["backtracks"][:-1]))
    np.testing.assert_allclose(np.diff(m["bits_down"]), fb * d * (1 + m["backtracks"][:-1]))


@pytest.mark.data("a9a")
def test_one_exchange_lbfgs_reaches_the_same_solution_on_a9a_with_fewer_exchanges(tmp_path):
    config = quiet(dataset="a9a", algorithm="lbfgs", rounds=400, tol=1e-10, reference_iterations=0)
    two = run(config, comm=SerialComm())
    one = run({**config, "lbfgs_exchanges": 1}, comm=SerialComm())
    assert two.status == one.status == "converged"
    # lam-strong convexity: ||x - x*|| <= ||grad P(x)|| / lam = 1e-7 for each
    assert np.linalg.norm(one.x - two.x) <= 2e-10 / 1e-3
    m, m2 = one.metrics, two.metrics
    per_round, accepted_at_once = np.diff(m["exchanges"]), m["backtracks"][:-1] == 0
    assert np.all(per_round[accepted_at_once] == 1) and accepted_at_once.mean() > 0.9
    np.testing.assert_array_equal(per_round, 1 + m["backtracks"][:-1])
    # two exchanges in every round that ran exchange A, one once its decrease is below P's resolution
    np.testing.assert_array_equal(np.diff(m2["exchanges"]), 1 + m2["armijo_tested"][:-1])
    assert m["exchanges"][-1] < 0.75 * m2["exchanges"][-1]
    # while every round of the two-exchange mode tests (||grad P|| > 1e-4 on a9a), about half its exchanges
    early = m2["armijo_tested"][:-1].astype(bool)
    reach = lambda mm, tol: mm["exchanges"][np.argmax(mm["grad_norm"] <= tol)]
    assert early[:np.argmax(m2["grad_norm"] <= 1e-4)].all()
    assert reach(m, 1e-4) <= 0.6 * reach(m2, 1e-4)


def test_one_exchange_lbfgs_resumes_with_its_trial_in_flight(tmp_path, monkeypatch):
    """The server state carries the trial x_a + p_a and P(x_a) across the checkpoint; round 5 backtracks."""
    from test_checkpoint import resume_equals_uninterrupted
    config = quiet(**SYNTH, condition=100.0, algorithm="lbfgs", memory=3, lbfgs_exchanges=1, rounds=8,
                   reference_iterations=0)
    full, _ = resume_equals_uninterrupted(config, tmp_path, monkeypatch, at=3)
    assert np.nansum(full.metrics["backtracks"]) >= 1


def test_sparse_synthetic_clients_are_the_same_in_any_layout_and_heavy_tailed():
    A, b = sparse_synthetic.sparse_clients(range(5), 40, 1000, 12, seed=3)
    assert A.shape == (200, 1000) and np.all(np.diff(A.indptr) == 12)  # K distinct columns a row
    np.testing.assert_allclose(scipy.sparse.linalg.norm(A, axis=1), 1.0)
    A3, b3 = sparse_synthetic.sparse_clients([3], 40, 1000, 12, seed=3)
    assert (A3 != A[120:160]).nnz == 0 and np.array_equal(b3, b[120:160])
    counts = np.bincount(A.indices, minlength=1000)
    assert counts[:10].sum() > 10 * counts[500:510].sum()  # Zipf: the first columns are far more frequent
    assert set(np.unique(b)) == {-1.0, 1.0}


def test_large_d_runs_hold_no_packed_hessian_structures(tmp_path):
    out = run(quiet(**BIG, algorithm="newton-cg", rounds=3, out=str(tmp_path / "b.h5")), comm=SerialComm())
    assert out.status == "completed" and out.metrics["grad_norm"][-1] < out.metrics["grad_norm"][0] / 10
    from mpifed.federation import build_federation
    from mpifed.plan import resolve
    fed = build_federation(resolve(build({**BIG, "algorithm": "newton-cg"})).data, SerialComm())
    fed.block.gradients(np.zeros(3000))
    assert not {"_M", "_G", "_diag", "_row_of_nnz"} & set(vars(fed.block))


def test_bad_input_is_refused_before_round_0():
    for config, message in [({"algorithm": "newton-cg", "cg_iterations": 0}, "--cg-iterations = 0 is out of range"),
                            ({"algorithm": "lbfgs", "memory": -1}, "--memory = -1 is out of range"),
                            ({"algorithm": "disco", "forcing": 0.0}, "--forcing = 0.0 is out of range"),
                            ({"algorithm": "lbfgs", "cg_iterations": 5}, "--cg-iterations does not apply"),
                            ({"algorithm": "lbfgs", "lbfgs_exchanges": 3}, "--lbfgs-exchanges = 3 is out of range"),
                            ({"algorithm": "newton-cg", "lbfgs_exchanges": 1}, "--lbfgs-exchanges does not apply"),
                            ({"algorithm": "fednl", "memory": 3}, "--memory does not apply")]:
        with pytest.raises(ConfigError, match=message):
            build(config)
    with pytest.raises(ConfigError, match="synthetic-sparse:nnz=K"):
        build({"dataset": "synthetic-sparse:nnz=0", "algorithm": "lbfgs"})


def test_a_dxd_state_that_cannot_fit_is_refused_in_one_line():
    # fednl: 8 bytes x d(d+1)/2 x (2 clients' H_i + 3 per rank) = 200 GB at d = 10^5
    with pytest.raises(ConfigError, match=r"fednl keeps a packed d\(d\+1\)/2 learned Hessian per client.*"
                                          r"200 GB for d = 100000 and 2 clients on this rank; this machine has 23 GB"):
        footprint.check("fednl", 100_000, 2, False, False, available=23 * 10**9)
    with pytest.raises(ConfigError, match="reference solve.*--reference-iterations 0"):
        footprint.check("newton-cg", 100_000, 2, True, True, available=23 * 10**9)
    footprint.check("newton-cg", 10**6, 500, True, False, available=10**9)  # O(d): never refused
    with pytest.raises(MpifedError, match="this machine has"):  # every rank raises it, before round 0
        run(quiet(**{**BIG, "features": 200_000}, algorithm="fednl"), comm=SerialComm())


HESSIAN_FREE = {
    "newton-cg": {**SPARSE, "algorithm": "newton-cg", "cg_iterations": 3},
    "disco": {**SYNTH, "algorithm": "disco"},
    "lbfgs": {**SPARSE, "algorithm": "lbfgs", "memory": 3},
    "newton-cg-large-d": {**BIG, "algorithm": "newton-cg"},
    "lbfgs-large-d": {**BIG, "algorithm": "lbfgs"},
    # one exchange a round; kappa = 100 makes round 5 backtrack (an in-round query)
    "lbfgs-one-exchange": {**SYNTH, "condition": 100.0, "algorithm": "lbfgs", "memory": 3, "lbfgs_exchanges": 1},
    "lbfgs-one-exchange-large-d": {**BIG, "algorithm": "lbfgs", "lbfgs_exchanges": 1},
}


@pytest.mark.mpi
@pytest.mark.parametrize("names", batches(HESSIAN_FREE))
def test_hessian_free_distributed_equals_serial(names, tmp_path):
    """Each method's trace is the same at 1, 2 and 4 ranks (bit for bit: the sums are double-double)."""
    pairs = distributed_and_serial({name: {"rounds": 6, "tol": 0.0, "quiet": True, "reference_iterations": 3,
                                           **HESSIAN_FREE[name]} for name in names}, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "bits_up", "bits_down", "exchanges"), exact=True)


def test_a_libsvm_file_of_large_d_loads_with_features(tmp_path):
    """--dataset PATH --features D at D = 300,000: rows load sparse and a Hessian-free run goes down."""
    A, b = sparse_synthetic.sparse_clients(range(4), 10, 200_000, 6, seed=2)
    lines = [" ".join([f"{int(y):+d}"] + [f"{j + 1}:{v:.17g}" for j, v in zip(A[i].indices, A[i].data)])
             for i, y in enumerate(b)]
    (tmp_path / "big.svm").write_text("\n".join(lines) + "\n")
    out = run(quiet(dataset=str(tmp_path / "big.svm"), features=300_000, clients=4, samples_per_client=10,
                    algorithm="lbfgs", rounds=4, reference_iterations=0, out=str(tmp_path / "l.h5")), comm=SerialComm())
    assert out.status == "completed" and len(out.x) == 300_000
    assert out.metrics["grad_norm"][-1] < out.metrics["grad_norm"][0]
