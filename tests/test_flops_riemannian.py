"""FLOP models of the Riemannian methods (rgd, r-lsvrg, r-page, r-marina) on PCA: the sphere's primitives and each
method's expected count against hand counts on a small federation, the compute time of an RGD run against the
data's own non-zeros, and a short run of every method with finite, increasing simulated seconds."""
import numpy as np
import pytest
import scipy.sparse

from mpifed import compressors, network
from mpifed.algorithms import RIEMANNIAN_METHODS
from mpifed.algorithms.riemannian import r_lsvrg, r_marina, r_page, rgd
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.federation.base import client_shape
from mpifed.network import flops as fl

E = fl.ELEMENTARY


def two_clients(tau):
    """d = 2; client 0: rows (1, 2), (0, 3), (4, 0) (m = 3, nnz = 4); client 1: rows (5, 6), (0, 7) (m = 2, nnz = 3)."""
    A = scipy.sparse.csr_matrix(np.array([[1, 2], [0, 3], [4, 0], [5, 6], [0, 7]], dtype=float))
    rows = client_shape(A, [0, 3, 5])
    np.testing.assert_array_equal(rows[:, :2], [[3, 4], [2, 3]])
    return network.shape_of(rows, 2, tau)


# Hand counts, d = 2:
# f_i and the Riemannian gradient: Z x and Z^T t (2 nnz each), 1/m (2), x^T (A x) (4), -2 (2), P_x (dot 4, <x,v> x
# and the difference 4) -> 4 nnz + 16: client 0 32, client 1 28.
GRAD = np.array([32.0, 28.0])
# a kept point's gradient, its projection, the transport to x^k and the difference: 4 nnz + 4 + 8 + 8 + 2
OLD = np.array([16.0 + 22, 12.0 + 22])
# the step: -eta g (2), x + v (2), the norm (4) and its square root (E), the scaling (2)
STEP = 10 + E


def test_sphere_primitives_match_hand_counts():
    s = two_clients(2)
    np.testing.assert_array_equal(fl.pca_loss_grad(s), [16 + 2 + 4 + 2, 12 + 2 + 4 + 2])
    np.testing.assert_array_equal(fl.pca_grad(s), [16 + 2 + 2, 12 + 2 + 2])
    assert fl.tangent_projection(2) == 4 + 4
    assert fl.retraction(2) == 2 + 4 + E + 2


def test_rgd_counts():
    w = rgd.flops(rgd.Params(), two_clients(2))
    np.testing.assert_array_equal(w.step, GRAD)
    assert w.server == 2 * 2 + 2 + STEP  # the sum of n = 2 gradients, 1/n, the step
    assert (np.all(w.vectors(2)[:, [0, 2]] == 0), w.init_server, w.query_server) == (True, 0, 0)


def test_r_page_counts_expected_over_the_coin():
    s = two_clients(1)  # b = 1 of n = 2
    w = r_page.flops(r_page.Params(1, 0.25, None, 2, 0), s)
    # the correction with probability 3/4
    np.testing.assert_allclose(w.step, GRAD + 0.75 * OLD)
    np.testing.assert_allclose(w.step, [60.5, 53.5])
    # full: n d + 1/n = 6; partial: b d = 2, T_k g (8), 1/b and the sum (4) = 14
    assert w.server == pytest.approx(0.25 * 6 + 0.75 * 14 + STEP)
    # p = 1 with every client: RGD's counts (R-PAGE is RGD there)
    full = r_page.flops(r_page.Params(2, 1.0, None, 2, 0), two_clients(2))
    same = rgd.flops(rgd.Params(), two_clients(2))
    np.testing.assert_array_equal(full.step, same.step)
    assert full.server == same.server


def test_r_lsvrg_counts_expected_over_the_refresh():
    w = r_lsvrg.flops(r_lsvrg.Params(1, 0.5, None, 2, 0), two_clients(1))
    np.testing.assert_allclose(w.step, GRAD + OLD)
    np.testing.assert_allclose(w.step, [70, 62])
    # corrections: b d = 2, T_k mu (8), 1/b and the sum (4); the refresh's n d + 1/n = 6 with probability 1/2
    assert w.server == pytest.approx(14 + 0.5 * 6 + STEP)


def test_r_marina_counts_expected_over_the_coin():
    Q = compressors.make("randk:k=1", 2, vector=True)  # one draw, one entry sent
    w = r_marina.flops(r_marina.Params(Q, 0.5, None, 2, 0), two_clients(2))
    # with probability 1/2: the transport (8), the difference (2), Rand-K's K = 1 draw
    np.testing.assert_allclose(w.step, GRAD + 0.5 * (8 + 2 + 1))
    np.testing.assert_allclose(w.step, [37.5, 33.5])
    # dense: n d + 1/n = 6; compressed: n K = 2, 1/n and + g (4), P_x (8) = 14
    assert w.server == pytest.approx(0.5 * 6 + 0.5 * 14 + STEP)
    ident = compressors.make("identity", 2, vector=True)  # nothing to compress, d entries to add
    w = r_marina.flops(r_marina.Params(ident, 0.5, None, 2, 0), two_clients(2))
    np.testing.assert_allclose(w.step, GRAD + 0.5 * 10)
    assert w.server == pytest.approx(0.5 * 6 + 0.5 * (4 + 4 + 8) + STEP)
    # p = 1: RGD's counts
    w = r_marina.flops(r_marina.Params(Q, 1.0, None, 2, 0), two_clients(2))
    same = rgd.flops(rgd.Params(), two_clients(2))
    np.testing.assert_array_equal(w.step, same.step)
    assert w.server == same.server


def no_network(tmp_path):
    path = tmp_path / "compute.toml"
    path.write_text("up_mbps = 1e12\ndown_mbps = 1e12\nrtt_ms = 0.0\ndevice = 1.0\nserver = 10.0\n")
    return str(path)


def test_rgd_compute_time_is_the_model_on_the_datas_non_zeros(tmp_path):
    """No network: an RGD round costs the slowest client's 4 nnz_i + 8 d FLOPs at 1 GFLOP/s plus the server's."""
    from mpifed.data import synthetic_pca_clients

    n, m, d = 4, 10, 6
    out = run({"algorithm": "rgd", "problem": "pca", "dataset": "synthetic", "clients": n, "samples_per_client": m,
               "features": d, "eigengap": 0.1, "rounds": 3, "tol": 0.0, "quiet": True, "network": no_network(tmp_path),
               "out": str(tmp_path / "rgd.h5")}, comm=SerialComm())
    A = synthetic_pca_clients(range(n), n, m, d, 0.1, 0)
    nnz = np.diff(A.indptr).reshape(n, m).sum(1)
    client = 4 * nnz + 8 * d
    server = n * d + d + (d + 4 * d + E)
    np.testing.assert_allclose(np.diff(out.metrics["sim_compute_s"]), client.max() / 1e9 + server / 1e10, rtol=1e-9)


RUNS = {
    "rgd": {},
    "r-lsvrg": {"participation": 2, "grad_probability": 0.3},
    "r-page": {"participation": 2},
    "r-marina": {"compressor": "randk:k=2", "grad_probability": 0.3},
}


@pytest.mark.parametrize("algorithm", RIEMANNIAN_METHODS)
def test_a_short_run_has_finite_increasing_simulated_time(algorithm, tmp_path):
    out = run({"algorithm": algorithm, "problem": "pca", "dataset": "synthetic", "clients": 6,
               "samples_per_client": 12, "features": 8, "rounds": 5, "tol": 0.0, "quiet": True,
               "network": "mixed-3g-4g", "out": str(tmp_path / "r.h5"), **RUNS[algorithm]}, comm=SerialComm())
    assert out.status == "completed", out.message
    for key in network.SIM_COLUMNS:
        t = out.metrics[key]
        assert len(t) == 6 and np.all(np.isfinite(t)), key
    t = out.metrics["sim_time_s"]
    assert t[0] == 0 and np.all(np.diff(t) > 0)
    assert np.all(np.diff(out.metrics["sim_compute_s"]) > 0)
