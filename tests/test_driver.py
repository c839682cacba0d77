"""The round loop's extensions, against plain re-implementations: in-round queries and gathered
payloads (a backtracking GD written out in numpy), participation sampling, the start point."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import toy_methods  # noqa: E402

from mpifed import config as cfgmod
from mpifed.comm import SerialComm
from mpifed.data import synthetic_clients
from mpifed.driver import iterate, run
from mpifed.federation import build_federation
from mpifed.rng import participants
from mpifed.plan import participants as plan_participants, resolve



def toy_run(comm, rounds=6):
    cfg = cfgmod.build({"dataset": "synthetic", "clients": 7, "samples_per_client": 20, "features": 4,
                        "quiet": True, "reference_iterations": 0})
    fed = build_federation(resolve(cfg).data, comm)
    rows = []

    def record(k, agg, x, timing, bits):
        rows.append((agg.loss / agg.n, bits["up"], bits["down"], bits.get("exchanges", 0)))

    x, status, _, k = iterate(fed, toy_methods, toy_methods.Params(), np.zeros(fed.d), rounds, 0.0,
                              record if comm.is_root else None)
    return fed, x, rows, status


def test_queries_and_gathered_payloads_reproduce_plain_backtracking_gd():
    fed, x, rows, status = toy_run(SerialComm())
    assert status == "completed"
    A, b = synthetic_clients(range(7), 20, 4, 0)  # the same data, written out here (equal m: mean over rows)
    A = A.toarray()
    P = lambda z: np.logaddexp(0.0, -b * (A @ z)).mean() + 0.5e-3 * z @ z  # noqa: E731
    grad = lambda z: A.T @ (-b / (1.0 + np.exp(b * (A @ z)))) / len(b) + 1e-3 * z  # noqa: E731
    z, up, down, trials_total, exchanges = np.zeros(fed.d), 0.0, 0.0, 0, 0
    for k in range(6):
        assert rows[k][0] == pytest.approx(P(z), rel=1e-12)
        assert rows[k][1] == up and rows[k][2] == down  # bits spent to reach x^k
        assert rows[k][3] == exchanges
        g, t, trials = grad(z), 512.0, 1
        while P(z - t * g) > P(z) - 0.5 * t * g @ g:
            t, trials = t / 2, trials + 1
        up += 32 * fed.d + 32 * trials  # gradient, then one float per trial
        down += 32 * trials + 32        # one float per trial point, then x^{k+1}
        z = z - t * g
        trials_total += trials
        exchanges += 1 + trials  # the round's gradient exchange, then one per trial point
    np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-15)
    assert trials_total > 6  # the line search did backtrack, so the query loop was exercised


def test_participants_are_tau_clients_drawn_uniformly_and_independent_of_blocks():
    n, tau = 50, 12
    masks = np.array([participants(7, n, tau, k) for k in range(2000)])
    assert (masks.sum(axis=1) == tau).all()
    freq = masks.mean(axis=0)  # each client takes part with probability tau/n
    sd = np.sqrt(tau / n * (1 - tau / n) / 2000)
    assert np.abs(freq - tau / n).max() < 5 * sd
    assert len({m.tobytes() for m in masks[:50]}) == 50  # rounds draw different sets
    assert not np.array_equal(participants(7, n, tau, 3), participants(8, n, tau, 3))  # the seed matters
    assert participants(7, n, n, 5).all()


@pytest.mark.parametrize("value, tau", [(0.5, 16), (1.0, 32), (5, 5), (0.01, 1)])
def test_participation_fraction_or_count(value, tau):
    assert plan_participants(value, 32) == tau


@pytest.mark.parametrize("value", [0.0, -1.0, 2.5])
def test_participation_out_of_range_is_refused(value):
    with pytest.raises(cfgmod.ConfigError, match="participation"):
        cfgmod.build({"participation": value})


def test_participation_above_n_is_refused():
    with pytest.raises(cfgmod.ConfigError, match="at most n = 32"):
        plan_participants(40, 32)


def test_start_point_near_the_solution(tmp_path):
    """x0 = x* + 0.1 N(0, I): the trace keeps x0, and row 0's distance to x* is |x0 - x*|."""
    import h5py

    out = tmp_path / "t.h5"
    r = run({"dataset": "synthetic", "clients": 4, "samples_per_client": 30, "features": 40, "algorithm": "newton",
             "rounds": 2, "x0_noise": 0.1, "seed": 3, "quiet": True, "out": str(out)})
    with h5py.File(out, "r") as f:
        x0, x_star = f["x/start"][()], f["x/star"][()]
    noise = (x0 - x_star) / 0.1
    assert abs(noise.mean()) < 4 / np.sqrt(40) and 0.6 < noise.std() < 1.4
    assert r.metrics["dist_to_opt"][0] == pytest.approx(np.linalg.norm(x0 - x_star), rel=1e-12)
    with pytest.raises(cfgmod.ConfigError, match="x0-noise"):
        cfgmod.build({"x0_noise": 0.1, "reference_iterations": 0})
