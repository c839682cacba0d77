"""The saddle problem (--problem saddle) and the monotone-inclusion methods sppm-vi, sppm-vi-vr, extragradient:
the operators against finite differences of L_i, the proximal point method's closed-form contraction, SPPM's
plateau proportional to gamma against the variance-reduced method's linear convergence, exact exchange and bit
counts, one-line errors before round 0, and (under mpiexec) the same trace at 1, 2 and 4 ranks."""
import numpy as np
import pytest

from method_loop import rounds
from rank_invariance import assert_same, distributed_and_serial
from mpifed import config
from mpifed.algorithms.inclusion import extragradient, sppm_vi, sppm_vi_vr
from mpifed.algorithms.inclusion.common import coin
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.problems.saddle import SaddleBlock

SADDLE = {"problem": "saddle", "clients": 5, "features": 3, "lam": 0.5, "similarity": 0.3, "tol": 0.0, "quiet": True}


def test_the_operators_are_the_saddle_gradients_and_z_star_zeroes_their_mean():
    block = SaddleBlock(np.arange(4), 4, 3, 0.3, 0.5, seed=7)
    z, h = np.random.default_rng(1).standard_normal(6), 1e-6
    fd = np.array([(block.values(z + h * e) - block.values(z - h * e)) / (2 * h) for e in np.eye(6)]).T
    fd[:, 3:] *= -1  # A_i = (grad_x L_i, -grad_y L_i)
    np.testing.assert_allclose(block.operator(z), fd, rtol=1e-7, atol=1e-7)
    z_star, L_star = block.solution()
    np.testing.assert_allclose(block.operator(z_star).mean(axis=0), 0.0, atol=1e-12)
    assert L_star == pytest.approx(block.values(z_star).mean(), rel=1e-12)
    M_bar = block.M.mean(axis=0)
    assert block.similarity() == pytest.approx(max(np.linalg.norm(M - M_bar, 2) for M in block.M), rel=1e-12)
    assert block.similarity() <= 2 * 0.3 + 1e-12
    # a client's operator depends on (seed, client) only, not on the block that hosts it
    part = SaddleBlock(np.array([2, 3]), 4, 3, 0.3, 0.5, seed=7)
    np.testing.assert_array_equal(part.M, block.M[2:]) and np.testing.assert_array_equal(part.q, block.q[2:])
    zero = SaddleBlock(np.arange(4), 4, 3, 0.0, 0.5, seed=7)
    assert zero.similarity() == pytest.approx(0.0, abs=1e-15)


def test_sppm_with_one_client_is_the_proximal_point_method_with_its_closed_form_contraction():
    gamma, mu = 0.7, 0.5
    block = SaddleBlock(np.arange(1), 1, 3, 0.3, mu, seed=3)
    z_star, _ = block.solution()
    xs = rounds(sppm_vi, sppm_vi.Params(gamma, 1, 0), block, np.zeros(6), 6)
    M, q = block.M[0], block.q[0]
    sigma = np.linalg.svd(M[:3, 3:], compute_uv=False)  # (I + gamma M) = (1 + gamma mu) I + gamma S, S skew
    lo, hi = (1 / np.sqrt((1 + gamma * mu) ** 2 + gamma**2 * s**2) for s in (sigma.max(), sigma.min()))
    for x, x_next in zip(xs, xs[1:]):
        np.testing.assert_allclose(x_next, np.linalg.solve(np.eye(6) + gamma * M, x - gamma * q), rtol=1e-13, atol=1e-15)
        ratio = np.linalg.norm(x_next - z_star) / np.linalg.norm(x - z_star)
        assert lo - 1e-12 <= ratio <= hi + 1e-12 and hi <= 1 / (1 + gamma * mu)


def _plateau(gamma: float, count: int = 1500) -> float:
    block = SaddleBlock(np.arange(8), 8, 3, 0.2, 0.5, seed=0)
    z_star, _ = block.solution()
    xs = np.array(rounds(sppm_vi, sppm_vi.Params(gamma, 8, 0), block, np.zeros(6), count))
    return float(np.mean(np.sum((xs[count // 3:] - z_star) ** 2, axis=1)))


def test_sppm_plateaus_in_proportion_to_gamma_while_the_variance_reduced_method_reaches_z_star():
    """E||z - z*||^2 at stationarity is O(gamma) for small gamma: a 4x smaller step gives a 2.5x-6x lower level
    (the ratio of the averages over the last two thirds of 1500 rounds; 4 in the limit)."""
    big, small = _plateau(0.2), _plateau(0.05)
    assert 2.5 < big / small < 6.0 and small > 1e-3
    block = SaddleBlock(np.arange(8), 8, 3, 0.2, 0.5, seed=0)
    z_star, _ = block.solution()
    xs = rounds(sppm_vi_vr, sppm_vi_vr.Params(0.2, 1 / 8, 8, 0), block, np.zeros(6), 400)
    dist = [np.linalg.norm(x - z_star) for x in xs]
    assert dist[400] < 1e-10 * dist[0]
    assert dist[200] < 1e-4 * dist[0]  # linear: the second half gains as much again


def test_extragradient_is_the_two_step_method_on_the_mean_operator():
    block = SaddleBlock(np.arange(4), 4, 3, 0.3, 0.5, seed=5)
    M, q, gamma = block.M.mean(axis=0), block.q.mean(axis=0), 0.3
    xs = rounds(extragradient, extragradient.Params(gamma), block, np.ones(6), 5)
    z = np.ones(6)
    for x in xs[1:]:
        half = z - gamma * (M @ z + q)
        z = z - gamma * (M @ half + q)
        np.testing.assert_allclose(x, z, rtol=1e-13)


@pytest.mark.parametrize("algorithm", ["sppm-vi", "sppm-vi-vr", "extragradient"])
def test_exchanges_and_bits_are_counted_exactly(algorithm, tmp_path):
    R, n, d, fb = 12, SADDLE["clients"], 2 * SADDLE["features"], 32
    extra = {"grad_probability": 0.3} if algorithm == "sppm-vi-vr" else {}
    m = run({**SADDLE, "algorithm": algorithm, "rounds": R, "out": str(tmp_path / "t.h5"), **extra},
            comm=SerialComm()).metrics
    k = np.arange(R + 1)
    if algorithm == "sppm-vi":  # per round: x down to one client, its answer up (the ledger: d/n floats each)
        exchanges, up, down = k, k * d * fb / n, k * d * fb / n
    elif algorithm == "extragradient":  # two full exchanges per round
        exchanges, up, down = 2 * k, 2 * k * d * fb, 2 * k * d * fb
    else:  # a full round adds A_i(w) up from all and a to all (a second exchange)
        full = np.array([r == 0 or coin(0, r - 1) < 0.3 for r in range(R + 1)])
        per_up = np.where(full, d * fb + d * fb / n, d * fb / n)[:-1]
        per_down = np.where(full[1:], d * fb, d * fb / n) + np.where(full[:-1], d * fb, 0.0)
        exchanges = np.concatenate([[0], np.cumsum(1 + full[:-1])])
        up, down = np.concatenate([[0], np.cumsum(per_up)]), np.concatenate([[0], np.cumsum(per_down)])
        assert 1 < full.sum() < R  # both kinds of round occur
    np.testing.assert_array_equal(m["exchanges"], exchanges)
    np.testing.assert_allclose(m["bits_up"], up, rtol=1e-15)
    np.testing.assert_allclose(m["bits_down"], down, rtol=1e-15)


@pytest.mark.parametrize("values, match", [
    ({**SADDLE, "algorithm": "sppm-vi", "similarity": -0.1}, "--similarity = -0.1 is out of range"),
    ({**SADDLE, "algorithm": "fednl"}, "--problem saddle does not apply to algorithm 'fednl'"),
    ({"algorithm": "sppm-vi"}, "--problem logistic does not apply to algorithm 'sppm-vi'"),
    ({**SADDLE, "algorithm": "extragradient", "dataset": "a9a"}, "--problem saddle generates its own operators"),
    ({"algorithm": "gd", "similarity": 0.2}, "--similarity applies to --problem saddle only"),
    ({**SADDLE, "algorithm": "sppm-vi-vr", "grad_probability": 0.0}, "--grad-probability = 0.0 is out of range"),
])
def test_bad_input_is_a_one_line_error_before_round_0(values, match):
    with pytest.raises(ConfigError, match=match) as err:
        config.build(values)
    assert "\n" not in str(err.value)


@pytest.mark.mpi
def test_the_trace_is_the_same_at_any_rank_count(tmp_path):
    pairs = distributed_and_serial({algorithm: {**SADDLE, "algorithm": algorithm, "rounds": 10}
                                    for algorithm in ("sppm-vi", "sppm-vi-vr", "extragradient")}, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "dist_to_opt", "bits_up", "bits_down", "exchanges"))
