"""FLOP models of DANE, GIANT, Fed-Sophia and FedCurv (logistic regression and networks) against hand counts on
small shapes, and short runs of each that now carry a finite, increasing simulated wall-clock."""
import numpy as np
import pytest

from mpifed import network
from mpifed.algorithms.approx_newton import dane, fedsophia, giant
from mpifed.algorithms.first_order import fedcurv
from mpifed.algorithms.networks import fedcurv as nn_fedcurv
from mpifed.algorithms.networks import fedsophia as nn_fedsophia
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.network import flops as fl

E = fl.ELEMENTARY
# one client, d = 2, rows a_1 = (1, 2), a_2 = (0, 3), a_3 = (4, 0): m = 3, nnz = 4, pairs = 5
GRAD = 8 + 6 * E + 8 + 6  # A x, phi and phi' per row, A^T c, 1/m and lam x (test_netsim's hand count)
COEF = GRAD + 3 * E       # and phi'' per row
HVP = 8 + 3 + 8 + 4       # A v, times h, A^T (.) with 1/m, lam v and the sum


def small_shape():
    return network.shape_of([[3, 4, 5]], 2, 1)


def cg(q, product):
    return 4 + q * (product + 10 * 2)  # ||r||^2 once; per iteration the product and five 2d vector operations


def test_new_primitives_match_hand_counts():
    s = small_shape()
    assert fl.hvp(s)[0] == HVP
    assert fl.squared_rows(s)[0] == 8 + 3  # a_ij^2 times the weight and the sum per non-zero, c_ij / m per row
    nn = network.shape_of([[2, 8, 0]], 8, 1, layers=((1, 4, 2),), batch=2)
    assert fl.network_gradient(nn, ridge=False) == 3 * 2 * 16  # forward 2 * 4 * 2 per sample, backward twice that, b = 2
    assert fl.network_step(nn) == fl.network_gradient(nn, ridge=False) + 3 * 8


def test_giant_counts_gradient_cg_and_line_search():
    s = small_shape()
    w = giant.flops(giant.Params(q=2, line_search=False), s)
    assert (w.step[0], w.server) == (COEF, 2 + 2)                 # sum of d floats, / n
    assert w.query[0] == cg(2, HVP) == 90
    assert w.query_server == 2 + 2 + 2                            # sum of p_i, / n, x - p
    # the search: margins of x and p (16), <x, p> and ||p||^2 (8), b t and phi' once (3 + 3E); per trial and row
    # -alpha s, b delta, the product, the sum (4 each of 3 rows) and expm1, log1p (2E each row), the ridge (6)
    search = 16 + 8 + 3 + 3 * E + 10 * (12 + 6 * E + 6)
    assert search == 207 + 63 * E
    w = giant.flops(giant.Params(q=2, line_search=True), s)
    assert w.query[0] == pytest.approx((90 + search) / 2)         # the two queries share their total
    # server: the mean of p (4); slope 2d, sum of 10, mean 10, Armijo test 3 x 10, x - alpha p 2d (58)
    assert w.query_server == pytest.approx((4 + 58) / 2)


def test_dane_counts_newton_cg_steps():
    s = small_shape()
    p = dane.Params(mu=0.5, T=2, q=1)
    w = dane.flops(p, s)
    assert (w.step[0], w.server) == (COEF, 4)
    newton_step = cg(1, HVP + 4) + 2          # (H + mu I) v: mu v and the sum (2d); z - p (d)
    # eta g (d); T = 2 steps; the second step's gradient and coefficients at z and its right-hand side (6d)
    assert w.query[0] == 2 + 2 * newton_step + COEF + 12 == 142 + 9 * E
    assert w.query_server == 4                # sum of the w_i and / n
    one = dane.flops(dane.Params(T=1, q=3, line_search=True), s)
    assert one.query[0] == pytest.approx((2 + cg(3, HVP + 4) + 2 + 207 + 63 * E) / 2)
    assert one.query_server == pytest.approx((4 + 2 + 58) / 2)  # with the search, also x - w


def test_fedsophia_counts_diagonal_and_clipped_server_step():
    s = small_shape()
    w = fedsophia.flops(fedsophia.Params(), s)
    assert w.step[0] == COEF + (8 + 3) + 2                        # squared rows and lam
    # sums of 2d floats (4), means (4), m and h averages (12), gamma h, max, divide, clip 2d, eta, x - (14)
    assert w.server == 4 + 4 + 12 + 14
    w = fedsophia.flops(fedsophia.Params(diagonal="hutchinson"), s)
    assert w.step[0] == COEF + 2 + HVP + 2                        # draw d, H u, u * (H u)
    assert w.query == 0.0


def test_fedcurv_counts_penalty_and_fisher():
    s = small_shape()
    fisher = 8 + 3 * E + 3 + (8 + 3)          # margins at theta, l' per row, its square, squared rows
    w = fedcurv.flops(fedcurv.Params(eta_l=0.1, K=2, lam_c=0.01), s)
    # K = 2 steps of gradient, y - eta g (2d) and the penalty (4d); U - u, V - v once (2d); the move Delta (d);
    # v = u theta, du, dv (3d)
    assert w.step[0] == 2 * (GRAD + 4 + 8) + 4 + 2 + fisher + 6
    assert w.server == 3 * 2 + 4 + 4                               # sums of 3d floats, the step, U and V
    w0 = fedcurv.flops(fedcurv.Params(eta_l=0.1, K=2, lam_c=0.0), s)
    assert w0.step[0] == 2 * (GRAD + 4) + 2 + fisher + 6          # lambda = 0: no penalty, the Fisher still
    assert w.query == 0.0                                          # U and V broadcasts: empty replies


def nn_shape():
    return network.shape_of([[2, 8, 0]], 8, 1, layers=((1, 4, 2),), batch=2)


def test_network_fedcurv_counts_sgd_penalty_and_fisher():
    s = nn_shape()
    grad = 96
    w = nn_fedcurv.flops(nn_fedcurv.Params(eta_l=0.1, K=2, lam_c=1.0), s)
    # 2 SGD steps (gradient, update 3P, penalty 4P), the move (P), U - u and V - v (2P), the Fisher's 2 gradients
    # squared and summed (2P each), its mean (P), v, du, dv (3P)
    assert w.step[0] == 2 * (grad + 24 + 32) + 8 + 16 + 2 * (grad + 16) + 8 + 24
    assert w.server == 24 + 16 + 16


def test_network_fedsophia_counts_steps_and_expected_estimates():
    s = nn_shape()
    w = nn_fedsophia.flops(nn_fedsophia.Params(eta_l=0.1, K=4, every=2), s)
    step = 96 + 3 * 8 + 7 * 8                # gradient, m's average, the clipped update
    estimate = 96 + 8 + 16 + 24 + 24         # draw, y + delta u, a gradient, (g' - g) / delta and u *, h's average
    assert w.step[0] == 4 * step + 2 * estimate + 8  # K / tau = 2 estimates, the move
    assert w.server == 8 + 16


def sim_time(out):
    t = np.asarray(out.metrics["sim_time_s"], dtype=float)
    assert np.all(np.isfinite(t)) and t[0] >= 0, t
    assert np.all(np.diff(t) > 0), t
    return t


LOGISTIC = {"rounds": 3, "tol": 0.0, "quiet": True, "clients": 3, "samples_per_client": 20,
            "reference_iterations": 0, "out": None}


@pytest.mark.parametrize("cfg", [
    {"algorithm": "giant"},
    {"algorithm": "giant", "line_search": False},
    {"algorithm": "dane", "local_steps": 2, "cg_iterations": 5, "mu": 0.01, "line_search": True},
    {"algorithm": "fedsophia"},
    {"algorithm": "fedsophia", "diagonal": "hutchinson"},
    {"algorithm": "fedcurv", "local_steps": 2},
], ids=["giant", "giant-nosearch", "dane-search", "fedsophia", "fedsophia-hutchinson", "fedcurv"])
def test_short_logistic_runs_have_an_increasing_simulated_clock(cfg):
    t = sim_time(run({**LOGISTIC, **cfg}, comm=SerialComm()))
    assert len(t) == 4


@pytest.mark.parametrize("algorithm", ["fedcurv", "fedsophia"])
def test_short_network_runs_have_an_increasing_simulated_clock(algorithm):
    cfg = dict(dataset="mnist-synthetic", model="mlp:hidden=8", partition="iid", reference_iterations=0,
               batch_size=8, local_steps=3, lam=0.0, quiet=True, seed=3, out=None, clients=3, rounds=3,
               eval_every=100, algorithm=algorithm)
    assert len(sim_time(run(cfg, comm=SerialComm()))) == 4
