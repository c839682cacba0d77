"""FLOP models of the Hessian-free family (Newton-CG, DiSCO, L-BFGS) and of FedNL's options (diagonal Hessian, CG
solve, adaptive regularization) against hand counts; per-kind query costs charged by the clock, the driver and a
replay; short runs of each method with finite, increasing simulated time."""
import numpy as np
import pytest

from mpifed import compressors, network
from mpifed.algorithms.hessian_free import disco, lbfgs, newton_cg
from mpifed.algorithms.second_order import fednl, fednl_ls, fednl_pp
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.network import flops as fl
from mpifed.trace import load

from test_netsim import profile_file

E = fl.ELEMENTARY


def small_shape(tau=1, d=2):
    # one client, rows a_1 = (1, 2), a_2 = (0, 3), a_3 = (4, 0): m = 3, nnz = 4, pairs = 3 + 1 + 1 = 5
    return network.shape_of([[3, 4, 5]], d, tau)


GRAD = 8 + 6 * E + 8 + 6  # fl.loss_grad of small_shape: 2 nnz + 2 E m + 2 nnz + 3 d


def test_new_primitives_match_hand_counts():
    s = small_shape()
    assert fl.gradient_and_coefficients(s)[0] == GRAD + 3 * E + 3           # h_ij = phi''(t) / m_i per row
    assert fl.hvp(s)[0] == 8 + 3 + 8 + 4                                     # A v, times h, A^T, + lam v
    # a^T x, a^T p (16), three dots (12); per trial t (6), phi and sum (3 E + 3), phi' tp and sum (3 E + 6), 8
    assert fl.loss_along(s, 2)[0] == 16 + 12 + 2 * (6 + 3 * E + 3 + 3 * E + 6 + 8)
    assert fl.diagonal_hessian(s)[0] == 12 + 3 * E + 3 + 2                   # squares and adds, h / m, ridge
    assert fl.cg(2, 3, 8.0) == 3 * (8 + 20)


def test_newton_cg_counts_an_hvp_and_a_trial_differently():
    w = newton_cg.flops(newton_cg.Params(), small_shape())
    assert w.step[0] == GRAD + 3 * E + 3
    assert w.server == 3 + 2 + 8 + 8  # sum d + 1 floats, g / n, ||g|| and r^T r, -z, <g, d>, x + d
    assert w.query["hvp"][0] == 23 and w.query_server["hvp"] == 2 + 22
    assert w.query["loss"][0] == 8 + 3 * E + 4 and w.query_server["loss"] == 1 + 4 + 4
    # the FLOP vectors: setup, step, hvp, loss (QUERIES order)
    np.testing.assert_array_equal(w.vectors(1, newton_cg.QUERIES), [[0, GRAD + 3 * E + 3, 23, 8 + 3 * E + 4]])
    np.testing.assert_array_equal(w.servers(newton_cg.QUERIES), [0, 21, 24, 9])


def test_disco_counts_the_preconditioner_per_pcg_iteration():
    s = small_shape()  # m_1 = 3 >= d = 2: the Cholesky of M = B^T B + c I
    rows = 2 * 4 + (2 * E + 1) * 3 + 4                     # margins, phi'' and sqrt(h / m) per row, B = D A
    build, solve = 3 * 5 + 2 + 8 / 3, 2 * 4                  # B^T B (3 per pair), the shift, d^3 / 3; 2 d^2
    w = disco.flops(disco.Params(), s)
    assert w.step[0] == GRAD + 3 * E + 3
    assert w.server == pytest.approx(2 + 2 + 4 + (rows + build + solve) + 4 + 8)
    assert w.query[0] == 23
    assert w.query_server == pytest.approx(2 + 30 + solve)
    wide = small_shape(d=5)  # m_1 = 3 < d = 5: Woodbury on the 3 x 3 matrix
    assert disco.preconditioner_flops(wide, False) == 16 + 2 * 9 + 10          # B r, B^T, 2 m^2, 2 d
    assert disco.preconditioner_flops(wide, True) == pytest.approx(
        2 * 4 + (2 * E + 1) * 3 + 4 + 2 * 3 * 4 + 3 + 9 + 44)               # rows, B B^T, shift, m^3 / 3, solve


def test_lbfgs_counts_the_two_loop_and_the_trials():
    s = small_shape()
    w = lbfgs.flops(lbfgs.Params(M=10), s)
    assert w.step[0] == GRAD + 3 * E + 3
    assert w.server == 3 + 2 + 4 + 12 + 8 * 10 * 2 + 10 + 4  # sums, g, pair, test, two-loop 8 M d, H^0, <g, p>
    assert w.query[0] == 28 + 10 * (23 + 6 * E)             # J = 10 trial points in one pass
    assert w.query_server == 20 + 80 + 4
    assert lbfgs.flops(lbfgs.Params(M=0), s).server == w.server - 160


def test_one_exchange_lbfgs_counts_a_gradient_per_trial():
    s = small_shape()
    w = lbfgs.flops(lbfgs.Params(M=10, exchanges=1), s)
    assert w.step[0] == GRAD + 3 * E + 3
    # sums, g, pair, test, two-loop, H^0, <g, p>; then the Armijo test (4), <grad P(z), p_a> (2 d), z + p (d)
    assert w.server == 3 + 2 + 4 + 12 + 8 * 10 * 2 + 10 + 4 + 4 + 4 + 2
    assert w.query[0] == GRAD + 3 * E + 3                    # a backtrack: the gradient at x_a + t p_a
    assert w.query_server == 3 + 2 + 4 + 4 + 1 + 4           # sums, g, test, <g, p_a>, t gamma, x_a + t p_a
    np.testing.assert_array_equal(w.vectors(1, lbfgs.QUERIES), [[0, GRAD + 3 * E + 3, GRAD + 3 * E + 3]])


def test_fednl_options_follow_the_params():
    s, T, d = small_shape(), 3, 2
    hess = 3 * E + 15 + 2
    topk = compressors.make("topk:k=1", 2)
    full = fednl.flops(fednl.Params(topk, 1.0), s)
    assert full.query == 0.0  # no adaptive regularization: no query
    # CG: the cholesky solve (8/3 + 8) becomes 20 iterations of a dense product with the shift (12) + 10 d
    cg = fednl.flops(fednl.Params(topk, 1.0, solver="cg", cg_iterations=20), s)
    assert cg.step[0] == full.step[0]
    assert cg.server == pytest.approx(full.server - (8 / 3 + 8) + 20 * (8 + 4 + 20))
    # the diagonal: O(nnz) diagonal, difference d, l_i 2d, Top-K on d entries (d), H_i += K (1)
    vec = compressors.make("topk:k=1", 2, vector=True)
    diag = fednl.flops(fednl.Params(vec, 1.0, hessian="diagonal"), s)
    assert diag.step[0] == GRAD + (12 + 3 * E + 3 + 2) + d + 2 * d + d + 1
    assert diag.init[0] == GRAD + 12 + 3 * E + 3 + 2 and diag.init_server == d
    assert diag.server == (d + 1 + 1) + 2 * d + 2 * d + d  # sums of g, l, K; update; shift and divide; x - s
    # adaptive: pred (H s, two dots, 3) and x + s on the server; one query, f_i at the trial point
    lm = fednl.flops(fednl.Params(vec, 1.0, hessian="diagonal", adaptive=True), s)
    assert lm.server == diag.server + d + 4 * d + 3 + d
    assert lm.query[0] == 8 + 3 * E + 4 and lm.query_server == 1 + 6
    lm_full = fednl.flops(fednl.Params(topk, 1.0, adaptive=True), s)
    assert lm_full.server == full.server + 2 * d * d + 4 * d + 3 + d
    assert full.init[0] == GRAD + hess


def test_fednl_ls_and_pp_follow_the_options():
    s, d = small_shape(), 2
    vec = compressors.make("topk:k=1", 2, vector=True)
    base = fednl.Params(vec, 1.0, option=1, hessian="diagonal")
    ls = fednl_ls.flops(fednl_ls.Params(base), s)
    assert ls.step[0] == fednl.client_work(base, s)[0]
    assert ls.server == fednl.server_work(base, s) + 2 * d and ls.init_server == d
    topk = compressors.make("topk:k=1", 2)
    pp = fednl_pp.flops(fednl_pp.Params(fednl.Params(topk, 1.0), 1, 1), s)
    pp_cg = fednl_pp.flops(fednl_pp.Params(fednl.Params(topk, 1.0, solver="cg", cg_iterations=5), 1, 1), s)
    assert pp_cg.server == pytest.approx(pp.server - (8 / 3 + 8) + 6 * (8 + 4 + 20))  # 5 + the warm start


def test_a_round_with_one_hvp_and_one_trial_is_charged_per_kind(tmp_path):
    """Hand-computed: free network, client 1e9 FLOP/s, server 1e10; the round's exchanges cost their own FLOPs."""
    flops = np.array([[0.0, 2e9, 3e9, 1e9], [0.0, 1e9, 4e9, 5e8]])  # setup, step, hvp, loss
    server = np.array([0.0, 1e10, 2e10, 5e9])
    prof = network.load(profile_file(tmp_path, up_mbps=1e12, down_mbps=1e12, rtt_ms=0.0, device=1.0, server=10.0))
    clock = network.Clock(prof, flops, server, 0, 0)
    total = clock.round(0, 0.0, 0.0, [0, 1])
    assert total[0] == pytest.approx((2 + 1) + (4 + 2) + (1 + 0.5))
    assert total[2] == pytest.approx(total[0])
    assert clock.round(0, 0.0, 0.0, 2)[0] == pytest.approx(3 + 6 + 6)  # an int: all of the first kind
    # a replay of that round from trace-like columns: 2 queries, one of kind 1
    metrics = {"exchanges": np.array([0.0, 3.0]), "net_queries_1": np.array([0.0, 1.0]),
               **{c: np.zeros(2) for c in network.NET_COLUMNS}}
    assert network.replay(metrics, flops, server, 0, 0, prof)[1, 0] == pytest.approx(total[0])


def test_newton_cg_run_charges_hvps_and_trials_and_replays(tmp_path):
    prof = profile_file(tmp_path, up_mbps=1e12, down_mbps=1e12, rtt_ms=0.0, device=1.0, server=10.0)
    cfg = {"algorithm": "newton-cg", "rounds": 4, "tol": 0.0, "quiet": True, "network": prof, "clients": 3,
           "samples_per_client": 20, "reference_iterations": 0, "out": str(tmp_path / "ncg.h5")}
    out = run(cfg, comm=SerialComm())
    t = load(cfg["out"])
    F, S = t.arrays["netsim/flops"], t.arrays["netsim/server_flops"]
    assert F.shape == (3, 4) and S.shape == (4,)
    m = out.metrics
    queries = np.diff(m["exchanges"]) - 1
    trials = m["net_queries_1"][1:]
    assert trials.sum() > 0 and (queries - trials).sum() > 0
    per = [F[:, c].max() / 1e9 + S[c] / 1e10 for c in (1, 2, 3)]
    expected = per[0] + (queries - trials) * per[1] + trials * per[2]
    np.testing.assert_allclose(np.diff(m["sim_compute_s"]), expected, rtol=1e-9)
    ns = t.attrs["netsim"]
    again = network.replay(t.metrics, F, S, ns["seed"], ns["tau"], network.load(prof))
    np.testing.assert_allclose(again, np.stack([t.metrics[c] for c in network.SIM_COLUMNS], axis=1), rtol=1e-12)


@pytest.mark.parametrize("extra", [
    {"algorithm": "newton-cg"}, {"algorithm": "disco"}, {"algorithm": "lbfgs"},
    {"algorithm": "lbfgs", "lbfgs_exchanges": 1},
    {"algorithm": "fednl", "hessian": "diagonal"}, {"algorithm": "fednl", "solver": "cg"},
    {"algorithm": "fednl", "adaptive_regularization": True},
    {"algorithm": "fednl-ls", "hessian": "diagonal"}, {"algorithm": "fednl-pp", "solver": "cg"}],
    ids=lambda e: "-".join(str(v) for v in e.values()))
def test_short_runs_have_finite_increasing_simulated_time(tmp_path, extra):
    cfg = {"rounds": 3, "tol": 0.0, "quiet": True, "clients": 3, "samples_per_client": 20,
           "reference_iterations": 0, "out": str(tmp_path / "r.h5"), **extra}
    out = run(cfg, comm=SerialComm())
    sim = np.asarray(out.metrics["sim_time_s"])
    assert out.status in ("completed", "converged") and len(sim) >= 2
    assert np.all(np.isfinite(sim)) and np.all(np.diff(sim) > 0)
