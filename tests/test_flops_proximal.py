"""FLOP models of the proximal family (proxgd, proxskip, sppm, bpm, bpm-lin), LCD1-3, and the L1 prox in
fedavg / dcgd / diana's server step: counts against hand counts on a 3-row client, ProxSkip's expected local
steps, compute time against the model on runs with queries, and short runs with a finite, increasing sim_time_s."""
import numpy as np
import pytest

from mpifed import network
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.network import flops as fl

E = fl.ELEMENTARY
D, T = 2, 3
GRAD = 8 + 6 * E + 8 + 6   # loss_grad on the 3-row client: A x (8), phi, phi' (6 E), A^T c (8), 1/m and lam x (3 d)
HESS = 3 * E + 15 + 2      # phi'' (3 E), 3 per pair (5 pairs), the ridge (d)


def small_shape(tau=1):
    # one client, d = 2, rows a_1 = (1, 2), a_2 = (0, 3), a_3 = (4, 0): m = 3, nnz = 4, pairs = 3 + 1 + 1 = 5
    return network.shape_of([[3, 4, 5]], D, tau)


def test_new_primitives_match_hand_counts():
    assert fl.soft_threshold(4, 0.1) == 12  # |z| - t, max(., 0), sign * (.): 3 per entry
    assert fl.soft_threshold(4, 0.0) == 0   # lam1 = 0: the prox is the identity
    assert fl.secular_root(3, 4.0) == fl.ROOT_EVALUATIONS * 12


def test_proxgd_is_gd_plus_the_soft_threshold():
    from mpifed.algorithms.proximal import proxgd

    w = proxgd.flops(proxgd.Params(lam1=0.1), small_shape())
    assert (w.step[0], w.server) == (GRAD, 1 * D + 2 * D + 3 * D)  # sum of d floats, x - gamma g, prox
    assert proxgd.flops(proxgd.Params(), small_shape()).server == 1 * D + 2 * D


def test_proxskip_counts_its_expected_local_steps():
    from mpifed.algorithms.proximal import proxskip

    p = proxskip.Params(gamma=0.1, p=0.25, lam1=0.1)
    w = proxskip.flops(p, small_shape())
    # h update (3d), 1/p = 4 local steps of (gradient, G += g, y - gamma (g - h): 4d), w = G + (1/p - t) h (2d)
    assert w.step[0] == pytest.approx(3 * D + 4 * (GRAD + 4 * D) + 2 * D)
    assert w.server == 1 * D + 2 * D + 3 * D
    assert proxskip.flops(proxskip.Params(gamma=0.1, p=1.0), small_shape()).step[0] == 3 * D + GRAD + 4 * D + 2 * D
    # the module's t_k is Geometric(p) on {1, 2, ...}: its mean is the 1/p the model charges
    t = [proxskip.local_steps(p, k) for k in range(4000)]
    assert min(t) >= 1 and np.mean(t) == pytest.approx(1 / p.p, rel=0.06)


def test_sppm_charges_k_inner_iterations_per_round():
    from mpifed.algorithms.proximal import sppm

    p = sppm.Params(gamma=1.0, K=3, kind="full", count=None, n=1, L_max=1.0, mu=0.1, lam1=0.1)
    w = sppm.flops(p, small_shape())
    inner = 1 * D + 3 * D + 2 * D + 3 * D  # sum, grad phi = g + (v - x)/gamma, v - eta grad phi, prox
    assert w.step[0] == GRAD + D and w.query[0] == GRAD + D  # w_i grad f_i(v_j)
    assert w.server == inner + 3 * D                          # v_1 = y_1 + beta (y_1 - y_0)
    assert w.query_server == pytest.approx(inner + 3 * D / 2)  # v_2 on the first query, none on the last
    assert w.server + 2 * w.query_server == pytest.approx(3 * inner + 2 * 3 * D)
    one = sppm.flops(sppm.Params(1.0, 1, "full", None, 1, 1.0, 0.1), small_shape())
    assert one.server == 1 * D + 5 * D  # K = 1, lam1 = 0: no momentum, no prox


def test_bpm_counts_a_projected_newton_iteration_per_exchange():
    from mpifed.algorithms.proximal import bpm

    s = small_shape()
    ball_l2 = (9 * 8 + 4 * 4) + fl.ROOT_EVALUATIONS * 4 * D + 8 * D  # eigh + V products, Brent, s(nu) and rescaling
    test = 9 * D + 3 * D  # z - x, ||s||, ||g||, s - g, s - Pi, its norm; Pi on the l2 ball (norm, scaling)
    newton = 2 * D * D + D  # q = g - H s
    w = bpm.flops(bpm.Params(), s)
    sums = (D + 1 + T) + (D + 1) + T + D * D  # received floats, means, the Hessian's mean and unpacking
    assert w.step[0] == GRAD + HESS and w.query[0] == GRAD + HESS
    assert w.server == w.query_server == sums + test + newton + ball_l2 + D + 3 * D
    assert np.all(w.init == 0)
    exact = bpm.flops(bpm.Params(exact=True), s)
    assert exact.step[0] == GRAD and np.all(exact.query == 0)
    assert exact.server == (D + 1) + (D + 1) + test + newton + ball_l2 + D
    assert exact.init[0] == GRAD + HESS and exact.init_server == T + T + D * D
    # linf: eigh, 100 APG iterations (three H products 6 d^2, 18 d, a clip 2d), the polish (LU, projection,
    # two residuals)
    linf = 9 * 8 + 2 * D + 100 * (6 * 4 + 18 * D + 2 * D) + (2 * 8 / 3 + 2 * 4 + 2 * D + 2 * (2 * 4 + 5 * D + 2 * D))
    assert bpm.ball_quadratic_flops("linf", D) == pytest.approx(linf)
    assert bpm.ball_quadratic_flops("l1", 4) > bpm.ball_quadratic_flops("linf", 4)  # the sort


def test_bpm_lin_counts_the_lmo_step():
    from mpifed.algorithms.proximal import bpm_lin

    s = small_shape()
    for norm, lmo in (("l2", 3 * D), ("linf", D), ("l1", D)):
        w = bpm_lin.flops(bpm_lin.Params(norm=norm), s)
        assert (w.step[0], w.server) == (GRAD, D + D + lmo + 2 * D), norm


def test_lcd_counts_the_step_in_the_eigenbasis():
    from mpifed.algorithms.first_order import lcd

    s = small_shape()
    products = 2 * D * D + 2 * D * D + D  # V^T g, x - V step
    w1 = lcd.flops(lcd.Params(1), s)
    assert (w1.step[0], w1.server) == (GRAD, 2 * D + products + 2 * D)  # sum and mean of d floats, gh/(w + L)
    w2 = lcd.flops(lcd.Params(2), s)
    assert w2.server == 2 * (D + 1) + products + 4 * D + fl.ROOT_EVALUATIONS * 8 * D  # d + 1 floats; mu by Brent
    w3 = lcd.flops(lcd.Params(3), s)
    assert w3.server == 2 * (D + 1) + products + 4 * D
    assert np.all(w1.init == 0) and w1.init_server == 0  # logistic: the Gram matrices are not an exchange
    ls = lcd.flops(lcd.Params(1, exact=True), s)
    assert ls.init[0] == 2 * 5 + T  # A_i^T A_i / m_i: 2 per pair, T divisions
    assert ls.init_server == T + T + D * D + D + 9 * 8  # sum, mean, unpack, + lam I, eigh


def test_l1_prox_is_charged_on_the_server_of_fedavg_dcgd_diana():
    from mpifed import compressors
    from mpifed.algorithms.first_order import dcgd, diana, fedavg

    s, C = small_shape(), compressors.make("topk:k=1", D)
    for module, params in ((fedavg, dict(eta_l=0.1, K=2)), (dcgd, dict(C=C, gamma=0.1, lam=0.0, tau=1, n=1)),
                           (diana, dict(C=C, alpha=0.5, gamma=0.1, lam=0.0, tau=1, n=1))):
        plain, prox = (module.flops(module.Params(**params, lam1=lam1), s) for lam1 in (0.0, 0.1))
        assert prox.server - plain.server == 3 * D, module.__name__
        np.testing.assert_array_equal(prox.step, plain.step)


def _run(tmp_path, name, **extra):
    cfg = {"algorithm": name, "rounds": 3, "tol": 0.0, "quiet": True, "clients": 3, "samples_per_client": 10,
           "features": 5, "reference_iterations": 0, "out": str(tmp_path / f"{name}.h5"), **extra}
    return run(cfg, comm=SerialComm())


@pytest.mark.parametrize("name, extra", [
    ("proxgd", {"l1": 0.01}), ("proxskip", {"l1": 0.01, "skip_probability": 0.5}),
    ("sppm", {"l1": 0.01, "sampling": "nice:tau=2", "inner_rounds": 3}), ("bpm", {}), ("bpm", {"ball_norm": "linf"}),
    ("bpm", {"problem": "least-squares"}), ("bpm-lin", {}), ("lcd1", {}), ("lcd2", {"f_star": 0.3}),
    ("lcd3", {"f_star": 0.3}),
    ("lcd1", {"problem": "least-squares"}), ("fedavg", {"l1": 0.01}), ("diana", {"l1": 0.01}),
], ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_a_short_run_has_a_finite_increasing_simulated_time(tmp_path, name, extra):
    t = np.asarray(_run(tmp_path, name, **extra).metrics["sim_time_s"], dtype=float)
    assert len(t) == 4 and np.all(np.isfinite(t)) and np.all(np.diff(t) > 0), t


def _client_counts(d=5, m=10, n=3):
    """Per-client nnz and row pairs of the synthetic data the runs below use."""
    from mpifed.data import synthetic_clients

    A, _ = synthetic_clients(range(n), m, d, 0)
    nnz = np.diff(A.indptr).reshape(n, m)
    return nnz.sum(1), (nnz * (nnz + 1) / 2).sum(1)


def _compute_profile(tmp_path):
    """No network (rtt 0, 1e12 Mb/s links), clients at 1 GFLOP/s, the server at 10 (as tests/test_netsim.py)."""
    values = {"up_mbps": 1e12, "down_mbps": 1e12, "rtt_ms": 0.0, "device": 1.0, "server": 10.0}
    path = tmp_path / "compute.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return str(path)


def test_sppm_compute_time_pays_k_gradients_per_round(tmp_path):
    """Full sampling, K = 3, no network: a round costs three gradients on the slowest client and the server's
    three inner steps (two momenta)."""
    out = _run(tmp_path, "sppm", network=_compute_profile(tmp_path), inner_rounds=3)
    nnz, _ = _client_counts()
    d, K = 5, 3
    client = 4 * nnz + 2 * E * 10 + 3 * d + d
    server = K * (3 * d + 5 * d) + (K - 1) * 3 * d
    np.testing.assert_allclose(np.diff(out.metrics["exchanges"]), K)
    np.testing.assert_allclose(np.diff(out.metrics["sim_compute_s"]), K * client.max() / 1e9 + server / 1e10,
                               rtol=1e-9)


def test_bpm_compute_time_is_one_newton_iteration_per_exchange(tmp_path):
    out = _run(tmp_path, "bpm", network=_compute_profile(tmp_path))
    nnz, pairs = _client_counts()
    d, T, m = 5, 15, 10
    client = 4 * nnz + 2 * E * m + 3 * d + 3 * pairs + E * m + d
    sums = 3 * (d + 1 + T) + (d + 1) + T + d * d
    server = sums + (9 * d + 3 * d) + (2 * d * d + d) + (9 * d**3 + 4 * d * d + fl.ROOT_EVALUATIONS * 4 * d + 8 * d) \
        + d + 3 * d
    ex = np.asarray(out.metrics["exchanges"], dtype=float)
    assert ex[-1] > 3  # some inner queries
    np.testing.assert_allclose(out.metrics["sim_compute_s"], ex * (client.max() / 1e9 + server / 1e10), rtol=1e-9)
