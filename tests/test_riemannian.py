"""PCA on the sphere and the Riemannian methods: the problem against explicit second moments, the reference
eigenvector against scipy, the methods against each other and against RGD's eigengap rate, the bit ledger against
hand counts, the errors, and (under mpiexec) rank invariance."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse

from rank_invariance import batches, distributed_and_serial
from sparse_data import sparse_binary
from mpifed import config as cfgmod
from mpifed.algorithms import METHODS, RIEMANNIAN_METHODS
from mpifed.algorithms.riemannian import sphere
from mpifed.comm import SerialComm
from mpifed.data import pca_spectrum, synthetic_pca_clients
from mpifed.driver import iterate, reference_solution, run, start_point
from mpifed.errors import ConfigError
from mpifed.federation import build_federation
from mpifed.plan import resolve
from mpifed.problems.pca import PCABlock
from mpifed.rng import ClientStreams

SYNTH = {"dataset": "synthetic", "problem": "pca", "clients": 6, "samples_per_client": 12, "features": 8}
SPARSE = {"dataset": sparse_binary(), "problem": "pca", "clients": 8, "samples_per_client": 40}
BASE = {"tol": 0.0, "quiet": True}


def second_moments(rows, offsets):
    """A_i = Z_i^T Z_i / m_i of each client, from the rows (the oracle)."""
    Z = rows.toarray()
    return np.stack([Z[a:b].T @ Z[a:b] / (b - a) for a, b in zip(offsets[:-1], offsets[1:])])


def setup(values):
    """(federation, method module, params, x0) of a serial run of ``values``."""
    c = cfgmod.build({**BASE, **values})
    plan = resolve(c)
    fed = build_federation(plan.data, SerialComm())
    method = METHODS[c.algorithm]
    return fed, method, method.Params.from_options(plan.method, fed), start_point(c, fed.d, None)


def iterates(values, rounds):
    """Every x^k and the trace rows of a serial run, from the driver's loop."""
    fed, method, params, x0 = setup(values)
    xs, rows = [], []
    iterate(fed, method, params, x0, rounds, 0.0,
            lambda k, agg, x, timing, bits: (xs.append(x.copy()), rows.append(dict(bits, n=agg.participants))))
    return np.array(xs), rows


@pytest.mark.parametrize("dense", [True, False])
def test_block_products_losses_gradients_match_the_second_moments(dense):
    rng = np.random.default_rng(1)
    rows = scipy.sparse.random(30, 7, density=0.4, random_state=2, format="csr")
    offsets = np.array([0, 5, 5 + 11, 30])
    A = second_moments(rows, offsets)
    block = PCABlock(rows, np.ones(30), offsets, dense=dense)
    x, X = rng.standard_normal(7), rng.standard_normal((3, 7))
    np.testing.assert_allclose(block.products(x), A @ x, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(block.products(X), np.einsum("ijk,ik->ij", A, X), rtol=1e-13, atol=1e-15)
    loss, grad, _ = block.derivatives(x)
    np.testing.assert_allclose(loss, -np.einsum("j,ijk,k->i", x, A, x), rtol=1e-13)
    h, e = 1e-6, np.eye(7)  # central differences of f_i along each axis
    fd = np.stack([(block.loss(x + h * e[j]) - block.loss(x - h * e[j])) / (2 * h) for j in range(7)], axis=1)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-8)
    top = block.top_eigenvalues(x, 200)
    np.testing.assert_allclose(top, np.linalg.eigvalsh(A)[:, -1], rtol=1e-8)


def test_synthetic_federation_has_the_set_spectrum_and_heterogeneous_clients():
    n, m, d, gap = 5, 9, 6, 0.03
    rows = synthetic_pca_clients(range(n), n, m, d, gap, seed=3)
    A = second_moments(rows, np.arange(n + 1) * m)
    w = np.linalg.eigvalsh(A.mean(axis=0))[::-1]
    np.testing.assert_allclose(w, pca_spectrum(d, gap), atol=1e-13)
    assert abs(w[0] - w[1] - gap) < 1e-13
    assert np.ptp(np.linalg.eigvalsh(A)[:, -1]) > 0.1  # the clients' top eigenvalues differ
    # a client's rows do not depend on which clients are generated with it
    np.testing.assert_array_equal(synthetic_pca_clients([3], n, m, d, gap, 3).toarray(), rows[3 * m:4 * m].toarray())


@pytest.mark.parametrize("values", [SYNTH, SPARSE], ids=["dense", "sparse"])
def test_reference_is_the_leading_eigenvector_of_the_mean_second_moment(values):
    fed, _, _, _ = setup({**values, "algorithm": "rgd"})
    v, f_star = reference_solution(fed, 1)
    block = fed.block
    A = np.stack([block.products(e) for e in np.eye(fed.d)], axis=2).mean(axis=0)  # (1/n) sum_i A_i
    w, V = scipy.linalg.eigh(A)
    assert abs(f_star + w[-1]) <= 1e-12 * w[-1]
    assert 1.0 - abs(v @ V[:, -1]) < 1e-12
    assert abs(np.linalg.norm(v) - 1.0) < 1e-14


def test_run_records_pca_gap_and_a_sign_aligned_distance(tmp_path):
    out = run({**BASE, **SYNTH, "algorithm": "rgd", "rounds": 40, "out": str(tmp_path / "t.h5")}, comm=SerialComm())
    m = out.metrics
    v = np.array(__import__("h5py").File(out.path)["x/star"])
    x = out.x
    assert m["pca_gap"][-1] == pytest.approx(1.0 - (x @ v) ** 2, abs=1e-15)
    assert m["dist_to_opt"][-1] == pytest.approx(min(np.linalg.norm(x - v), np.linalg.norm(x + v)), rel=1e-12)
    assert m["f_gap"][-1] >= -1e-14 and m["pca_gap"][-1] < m["pca_gap"][0]


@pytest.mark.parametrize("method, step", [("r-marina", {}), ("r-page", {"step_size": 0.05})])
def test_p_one_is_riemannian_gd_bit_for_bit(method, step, tmp_path):
    """R-MARINA's default step at p = 1 is RGD's 1/L; R-PAGE's is 1/L_tilde, so it gets RGD's step here."""
    base = {**BASE, **SPARSE, "rounds": 25, **step}
    rgd = run({**base, "algorithm": "rgd", "out": str(tmp_path / "rgd.h5")}, comm=SerialComm())
    other = run({**base, "algorithm": method, "grad_probability": 1.0, "out": str(tmp_path / "o.h5")},
                comm=SerialComm())
    np.testing.assert_array_equal(other.x, rgd.x)
    for key in ("loss", "grad_norm", "pca_gap", "bits_up", "bits_down", "exchanges"):
        np.testing.assert_array_equal(other.metrics[key], rgd.metrics[key], err_msg=key)


@pytest.mark.parametrize("values", [
    {"algorithm": "r-marina", "compressor": "identity", "grad_probability": 0.3},
    {"algorithm": "r-page", "participation": 1.0},
    {"algorithm": "r-lsvrg", "participation": 1.0},
], ids=["marina-identity", "page-full-batch", "lsvrg-full-batch"])
def test_exact_estimators_follow_riemannian_gd(values):
    """The identity compressor, or every client in the mini-batch: g^k = grad f(x^k) up to rounding."""
    step = {"step_size": 0.2}
    x_rgd, _ = iterates({**SYNTH, "algorithm": "rgd", **step}, 30)
    x, _ = iterates({**SYNTH, **values, **step}, 30)
    np.testing.assert_allclose(x, x_rgd, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", RIEMANNIAN_METHODS)
def test_iterates_stay_on_the_sphere(algorithm):
    xs, _ = iterates({**SPARSE, "algorithm": algorithm, "compressor": "natural"} if algorithm == "r-marina"
                     else {**SPARSE, "algorithm": algorithm}, 60)
    assert np.max(np.abs(np.linalg.norm(xs, axis=1) - 1.0)) <= 1e-12


def test_rgd_converges_to_v1_at_the_rate_of_the_eigengap():
    """tan(theta_{k+1}) <= (1 - 2 eta delta / (1 + 2 eta (lambda_1 - lambda_d))) tan(theta_k) every round, and
    the ratio tends to 1 - 2 eta delta (the bound of mpifed.algorithms.riemannian.rgd), oracle: scipy's eigh."""
    values = {**SYNTH, "eigengap": 0.05, "algorithm": "rgd", "step_size": 0.3}
    fed, *_ = setup(values)
    A = np.stack([fed.block.products(e) for e in np.eye(fed.d)], axis=2).mean(axis=0)
    w, V = scipy.linalg.eigh(A)
    delta, spread, eta = w[-1] - w[-2], w[-1] - w[0], 0.3
    assert eta <= 1.0 / (2.0 * spread)
    xs, _ = iterates(values, 400)
    v = V[:, -1]
    cos = np.abs(xs @ v)
    tan = np.linalg.norm(xs - np.outer(xs @ v, v), axis=1) / cos  # no cancellation near v_1
    bound = 1.0 - 2.0 * eta * delta / (1.0 + 2.0 * eta * spread)
    ok = tan[:-1] > 1e-9  # above rounding
    assert np.all(tan[1:][ok] <= bound * tan[:-1][ok] * (1 + 1e-9))
    late = np.flatnonzero(ok)[-20:]
    np.testing.assert_allclose(tan[late + 1] / tan[late], 1.0 - 2.0 * eta * delta, rtol=2e-3)
    assert tan[-1] ** 2 < 1e-12


def coins(name, seed, n, p, rounds):
    """The shared coins, re-drawn here from the pseudo-client stream (seed, name, n, k)."""
    return np.array([k == 0 or ClientStreams(seed, [n], k).uniform(name, 1)[0, 0] < p for k in range(rounds)])


def increments(rows, key):
    return np.diff([r[key] for r in rows])


def test_bits_per_round_match_hand_counts():
    d, n, fb, R = 8, 6, 32, 30
    _, rows = iterates({**SYNTH, "algorithm": "rgd"}, R)
    np.testing.assert_array_equal(increments(rows, "up"), d * fb)
    np.testing.assert_array_equal(increments(rows, "down"), d * fb)
    np.testing.assert_array_equal(increments(rows, "exchanges"), 1)
    # R-MARINA, Rand-K with K = 2 of d = 8: K floats + K indices of ceil(log2 8) = 3 bits, or d floats
    _, rows = iterates({**SYNTH, "algorithm": "r-marina", "compressor": "randk:k=2", "grad_probability": 0.4}, R)
    c = coins("r-marina-coin", 0, n, 0.4, R)
    np.testing.assert_array_equal(increments(rows, "up"), np.where(c, d * fb, 2 * (fb + 3)))
    np.testing.assert_array_equal(increments(rows, "up_index"), np.where(c, 0, 2 * 3))
    assert 0 < c.sum() < len(c)
    # R-PAGE with b = 2 of n = 6: a full round costs d floats per client, else the b participants' d floats
    _, rows = iterates({**SYNTH, "algorithm": "r-page", "participation": 2, "grad_probability": 0.3}, R)
    c = coins("r-page-coin", 0, n, 0.3, R)
    np.testing.assert_allclose(increments(rows, "up"), np.where(c, d * fb, 2 / n * d * fb), rtol=1e-12)
    # R-LSVRG: the participants' corrections after round 0, plus d floats from everyone when w moves
    _, rows = iterates({**SYNTH, "algorithm": "r-lsvrg", "participation": 3, "grad_probability": 0.25}, R)
    c = coins("r-lsvrg-coin", 0, n, 0.25, R)
    expected = np.where(c, d * fb, 0.0) + np.where(np.arange(R) > 0, 3 / n * d * fb, 0.0)
    np.testing.assert_allclose(increments(rows, "up"), expected, rtol=1e-12)
    np.testing.assert_array_equal(increments(rows, "down"), d * fb)


def test_theoretical_defaults():
    fed, method, params, _ = setup({**SYNTH, "algorithm": "r-marina"})
    assert (params.Q.spec(), params.p) == ("randk:k=2", pytest.approx(2 * (32 + 3) / (8 * 32)))
    fed, method, params, _ = setup({**SYNTH, "algorithm": "r-page"})
    assert (params.b, params.p) == (1, pytest.approx(1 / 7))  # a tenth of 6 clients, at least one
    fed, method, params, _ = setup({**SYNTH, "algorithm": "r-lsvrg", "participation": 3})
    assert (params.b, params.p) == (3, 0.5)


@pytest.mark.parametrize("values, words", [
    ({"problem": "pca", "algorithm": "gd"}, ["'gd'", "rgd, r-lsvrg, r-page, r-marina"]),
    ({"algorithm": "rgd"}, ["'rgd'", "--problem pca"]),
    ({"problem": "pca", "algorithm": "rgd", "intercept": True}, ["--intercept"]),
    ({"problem": "pca", "algorithm": "rgd", "eigengap": 1.5}, ["--eigengap", "1.5"]),
    ({"algorithm": "gd", "eigengap": 0.1}, ["--eigengap"]),
    ({"problem": "pca", "algorithm": "rgd", "dataset": "a9a", "eigengap": 0.1}, ["--eigengap", "a9a"]),
    ({"problem": "pca", "algorithm": "rgd", "features": 50, "samples_per_client": 20}, ["--samples-per-client", "50"]),
    ({"problem": "pca", "algorithm": "rgd", "x0_noise": 0.1}, ["--x0-noise"]),
    ({"problem": "pca", "algorithm": "rgd", "participation": 0.5}, ["--participation", "rgd"]),
    ({"problem": "pca", "algorithm": "r-page", "compressor": "natural"}, ["--compressor", "r-page"]),
    ({"problem": "pca", "algorithm": "r-marina", "grad_probability": 0.0}, ["--grad-probability"]),
    ({"problem": "kmeans", "algorithm": "rgd"}, ["--problem", "kmeans", "pca"]),
])
def test_bad_input_is_one_line_config_error(values, words):
    with pytest.raises(ConfigError) as err:
        cfgmod.build(values)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_biased_compressor_is_refused_before_round_0():
    with pytest.raises(ConfigError, match="biased"):
        setup({**SYNTH, "algorithm": "r-marina", "compressor": "topk:k=2"})


@pytest.mark.parametrize("name", ["r-lsvrg", "r-page", "r-marina"])
def test_a_suspended_run_resumes_to_the_uninterrupted_trace(name, tmp_path, monkeypatch):
    """The client states (w, x^{k-1}, the previous gradients) and the coins survive a checkpoint."""
    from test_checkpoint import resume_equals_uninterrupted

    config = {**BASE, "rounds": 8, **MPI_RUNS[name]}
    resume_equals_uninterrupted(config, tmp_path, monkeypatch)


MPI_RUNS = {
    "rgd": {**SPARSE, "algorithm": "rgd"},
    "r-lsvrg": {**SPARSE, "algorithm": "r-lsvrg", "participation": 3, "grad_probability": 0.3},
    "r-page": {**SYNTH, "algorithm": "r-page", "participation": 2},
    "r-marina": {**SPARSE, "algorithm": "r-marina", "compressor": "randk:k=5", "grad_probability": 0.3},
    "r-marina-natural": {**SYNTH, "algorithm": "r-marina", "compressor": "natural"},
}


@pytest.mark.mpi
@pytest.mark.parametrize("names", batches(MPI_RUNS))
def test_every_riemannian_trace_is_the_same_at_any_rank_count(names, tmp_path):
    pairs = distributed_and_serial({name: {**BASE, "rounds": 12, **MPI_RUNS[name]} for name in names}, tmp_path)
    if pairs is None:
        return
    for name, (distributed, serial) in pairs.items():
        assert distributed.status == serial.status != "failed", (name, serial.message)
        # the ledger to the bit; the numbers to rounding (a dense block's batched products may round differently
        # with its rows' alignment, as in tests/test_mpi.py)
        for key in ("bits_up", "bits_up_index", "bits_down", "exchanges", "participants"):
            np.testing.assert_array_equal(distributed.metrics[key], serial.metrics[key], err_msg=f"{name}: {key}")
        for key in ("loss", "grad_norm", "dist_to_opt"):
            np.testing.assert_allclose(distributed.metrics[key], serial.metrics[key], rtol=1e-12, atol=0,
                                       err_msg=f"{name}: {key}")
        for key in ("pca_gap", "f_gap"):  # near 0 at the end
            np.testing.assert_allclose(distributed.metrics[key], serial.metrics[key], rtol=1e-9, atol=1e-15,
                                       err_msg=f"{name}: {key}")
        np.testing.assert_allclose(distributed.x, serial.x, rtol=1e-12, atol=1e-15, err_msg=name)
