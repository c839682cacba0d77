"""The device and network model: FLOP counts against hand counts, simulated seconds against hand-computed rounds
(one exchange, several, partial participation, a straggler, a drop-out), replay against the live clock, every
method with a FLOP model, and the same simulated time at any number of ranks."""
import inspect

import numpy as np
import pytest
import scipy.sparse

from mpifed import network
from mpifed.algorithms import METHODS, NN_MODULES
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.federation.base import client_shape
from mpifed.network import flops as fl
from mpifed.network.profiles import Devices
from mpifed.rng import participants
from mpifed.trace import load

E = fl.ELEMENTARY


def profile_file(tmp_path, name="p", **values):
    """A profile TOML with the given keys (bandwidths in Mb/s, rtt in ms)."""
    values = {"up_mbps": 1.0, "down_mbps": 2.0, "rtt_ms": 100.0, "device": 1.0, "server": 10.0, **values}
    text = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in values.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(text + "\n")
    return str(path)


def small_shape(tau=1):
    # one client, d = 2, rows a_1 = (1, 2), a_2 = (0, 3), a_3 = (4, 0): m = 3, nnz = 4, pairs = 3 + 1 + 1 = 5
    return network.shape_of([[3, 4, 5]], 2, tau)


def test_client_shape_counts_rows_nonzeros_and_pairs():
    A = scipy.sparse.csr_matrix(np.array([[1, 2, 0], [0, 3, 0], [4, 0, 5], [0, 0, 6]], dtype=float))
    rows = client_shape(A, [0, 2, 4])
    # client 0: rows with 2 and 1 non-zeros -> pairs 3 + 1; client 1: 2 and 1 -> 3 + 1
    np.testing.assert_array_equal(rows, [[2, 3, 4], [2, 3, 4]])


def test_logistic_primitives_match_hand_counts():
    s = small_shape()
    # loss_grad: A x (4 mul + 4 add), phi and phi' per row (2 E each of 3 rows), A^T c (8), 1/m and lam x (3 d = 6)
    assert fl.loss_grad(s)[0] == 8 + 6 * E + 8 + 6
    # hessian: phi'' per row (3 E), 3 FLOPs per pair (5 pairs), the ridge on d = 2 diagonal entries
    assert fl.hessian(s)[0] == 3 * E + 15 + 2
    assert fl.cholesky_solve(3) == 9 + 18  # 27/3 + 2 * 9
    assert fl.eigen_solve(2) == 72 + 16


def test_method_flop_models_match_hand_counts():
    from mpifed import compressors
    from mpifed.algorithms.first_order import gd
    from mpifed.algorithms.second_order import fednl, newton

    s = small_shape()
    grad, hess = 8 + 6 * E + 8 + 6, 3 * E + 15 + 2
    w = gd.flops(gd.Params(), s)
    assert (w.step[0], w.server) == (grad, 1 * 2 + 2 * 2)          # sum of d floats, x - gamma g
    w = newton.flops(newton.Params(), s)
    T = 3
    assert w.step[0] == grad + hess
    assert w.server == pytest.approx((2 + T) + 4 + (8 / 3 + 8))  # sums, unpack d^2, Cholesky d^3/3 + 2 d^2
    topk = compressors.make("topk:k=1", 2)
    w = fednl.flops(fednl.Params(topk, 1.0), s)
    # gradient, Hessian, difference T, Frobenius 2T (option 2), Top-K one comparison per entry T, H_i += K = 1
    assert w.step[0] == grad + hess + T + 2 * T + T + 1
    assert w.init[0] == grad + hess
    assert w.server == pytest.approx((2 + 1 + 1) + T + 4 + (8 / 3 + 8) + 2)


def test_network_primitives_match_hand_counts():
    # a dense layer 3 -> 2 (d_in + 1 = 4) and a conv layer with 5 output locations, 10 -> 4
    s = network.shape_of([[10, 7840, 0]], 8 + 44, 1, layers=((1, 4, 2), (5, 10, 4)), batch=2)
    assert fl.forward(s) == 2 * 4 * 2 + 2 * 5 * 10 * 4
    assert fl.network_step(s) == 3 * 2 * (16 + 400) + 3 * (8 + 40)
    assert fl.foof_factors(s) == 2 * (2 * 16 + 2 * 5 * 100)
    assert fl.factor_inverses(s) == 64 + 1000
    one = network.shape_of([[2, 8, 0]], 8, 1, layers=((1, 4, 2),), batch=2)
    # dense: 4^3 + 2 * 16 * 2 = 128; Woodbury on R = 2 rows: 2 * 4 * 4 + 8 / 3 + 4 * 2 * 4 * 2 = 98.67 (cheaper)
    assert fl.foof_solve(one) == pytest.approx(32 + 8 / 3 + 64)
    assert fl.foof_solve(one, stacked=4) == 128  # 8 rows: dense is cheaper


def test_every_registered_method_has_a_flop_model():
    """A method without ``flops(p, shape)`` has no simulated wall-clock: every registered module must define it."""
    for registry in (METHODS, NN_MODULES):
        for name in registry:
            module = registry[name]
            assert callable(getattr(module, "flops", None)), f"{name} ({module.__name__}) has no flops(p, shape)"
            assert list(inspect.signature(module.flops).parameters) == ["p", "s"], name


@pytest.mark.parametrize("network_run", [False, True], ids=["logistic", "networks"])
def test_every_flop_model_gives_finite_counts_on_a_federation(network_run):
    """Each method's flops(p, shape) on a small federation: one non-negative count per client and phase."""
    from mpifed.config import build
    from mpifed.federation import build_federation
    from mpifed.plan import resolve

    registry = NN_MODULES if network_run else METHODS
    base = ({"dataset": "mnist-synthetic", "model": "softmax", "clients": 3, "samples_per_client": 20}
            if network_run else {"clients": 3, "samples_per_client": 20})
    feds = {}  # one federation per problem: each method on the first problem it solves (Params.problems)
    for name in registry:
        problem = "logistic" if network_run else getattr(registry[name].Params, "problems", ("logistic",))[0]
        plan = resolve(build({**base, "algorithm": name, **({} if problem == "logistic" else {"problem": problem})}))
        if problem not in feds:
            feds[problem] = build_federation(plan.data, SerialComm())
        fed = feds[problem]
        params = registry[name].Params.from_options(plan.method, fed)
        shape = network.shape_of(fed.client_shape, fed.d, fed.tau, fed.layers, fed.batch)
        work = network.work_of(registry[name], params, shape)
        assert work.vectors(3).shape == (3, 2 + len(work.kinds())) and work.step.min() > 0 and work.server >= 0, name


def test_a_module_without_flops_is_refused():
    import types

    with pytest.raises(Exception, match="has no flops"):
        network.work_of(types.ModuleType("mpifed.algorithms.second_order.new"), None, small_shape())


def clock(tmp_path, n=3, tau=0, flops=None, server=(0.0, 0.0, 0.0), **profile):
    p = network.load(profile_file(tmp_path, **profile))
    return network.Clock(p, np.ones((n, 3)) * 0 if flops is None else flops, server, 0, tau)


def test_one_exchange_is_the_slowest_participants_download_compute_upload(tmp_path):
    flops = np.array([[0, 2e9, 0], [0, 1e9, 0], [0, 0, 0]], dtype=float)
    c = clock(tmp_path, flops=flops, server=(0, 5e10, 0))
    c.dev = Devices(np.array([1e6, 1e6, 1e5]), np.array([2e6, 2e6, 2e6]), np.full(3, 0.1), np.array([1e9, 1e8, 1e9]))
    # client 0: 0.1 + 1e6/2e6 + 2 + 1e6/1e6 = 3.6; client 1: 0.1 + 0.5 + 10 + 1 = 11.6; client 2: 0.1 + 0.5 + 10
    # the server: 5e10 / 1e10 = 5 s
    t, comm, comp = c.exchange(0, 0, network.simulate.STEP, 1e6, 1e6)
    assert (t, comm, comp) == pytest.approx((16.6, 1.6, 15.0))


def test_several_exchanges_pay_one_round_trip_each(tmp_path):
    c = clock(tmp_path, n=2, up_mbps=1.0, down_mbps=1.0, rtt_ms=50.0)
    # main exchange: 0.05 + 1e5/1e6 (down) + 2e5/1e6 (up); two queries sharing 4e5 bits down, 2e5 up
    t = c.round(3, 1e5, 2e5, queries=2, query_down=4e5, query_up=2e5)
    assert t[0] == pytest.approx((0.05 + 0.1 + 0.2) + 2 * (0.05 + 0.2 + 0.1))


def test_partial_participation_waits_for_the_slowest_participant_only(tmp_path):
    c = clock(tmp_path, n=4, tau=2, rtt_ms=0.0)
    c.dev = Devices(np.array([1e6, 2e6, 4e6, 8e6]), np.full(4, 1e9), np.zeros(4), np.full(4, 1e9))
    for k in range(6):
        on = participants(0, 4, 2, k)
        slowest = min(np.array([1e6, 2e6, 4e6, 8e6])[on])
        assert c.exchange(k, 0, network.simulate.STEP, 0.0, 8e6)[0] == pytest.approx(8e6 / slowest)


def test_a_straggler_is_slowed_down_and_a_dropout_waits_then_redoes(tmp_path):
    slow = clock(tmp_path, n=2, straggler_probability=1.0, straggler_slowdown=3.0, rtt_ms=0.0)
    assert slow.exchange(0, 0, network.simulate.STEP, 0.0, 1e6)[0] == pytest.approx(3.0)  # 1 s, three times
    lost = clock(tmp_path, n=2, dropout=0.999999, dropout_timeout_s=7.0, rtt_ms=0.0)
    assert lost.exchange(0, 0, network.simulate.STEP, 0.0, 1e6)[0] == pytest.approx(7.0 + 2 * 1.0)


def test_a_run_without_computation_costs_hand_computed_rounds(tmp_path):
    """GD on synthetic data (d = 20), free compute: round k costs the rtt, x^k down (none for x^0) and d floats up."""
    prof = profile_file(tmp_path, device=1e12, server=1e12)
    out = run({"algorithm": "gd", "rounds": 4, "tol": 0.0, "quiet": True, "network": prof, "clients": 4,
               "samples_per_client": 20, "reference_iterations": 0, "out": str(tmp_path / "gd.h5")}, comm=SerialComm())
    d, up, down = 20, 1e6, 2e6
    rounds = [0.1 + (0 if k == 0 else 32 * d / down) + 32 * d / up for k in range(4)]
    np.testing.assert_allclose(out.metrics["sim_time_s"], np.concatenate([[0], np.cumsum(rounds)]), rtol=1e-6)
    np.testing.assert_allclose(out.metrics["sim_comm_s"], out.metrics["sim_time_s"], rtol=1e-6)


def test_a_line_search_pays_a_round_trip_per_trial(tmp_path):
    prof = profile_file(tmp_path, up_mbps=1e9, down_mbps=1e9, device=1e12, server=1e12, rtt_ms=1000.0)
    out = run({"algorithm": "fednl-ls", "rounds": 6, "tol": 0.0, "quiet": True, "network": prof, "clients": 4,
               "samples_per_client": 20, "reference_iterations": 0, "out": str(tmp_path / "ls.h5")}, comm=SerialComm())
    np.testing.assert_allclose(out.metrics["sim_time_s"], out.metrics["exchanges"], rtol=1e-4)  # 1 s each, setup too
    assert out.metrics["exchanges"][-1] > 7  # some rounds made trials


def test_compute_time_is_the_flop_model_over_the_device_speed(tmp_path):
    """Newton, no network: a round costs the clients' FLOPs (from the data's own non-zeros) plus the server's."""
    from mpifed.data import synthetic_clients

    prof = profile_file(tmp_path, up_mbps=1e12, down_mbps=1e12, rtt_ms=0.0, device=1.0, server=10.0)
    out = run({"algorithm": "newton", "rounds": 2, "tol": 0.0, "quiet": True, "network": prof, "clients": 3,
               "samples_per_client": 10, "features": 5, "reference_iterations": 0, "out": str(tmp_path / "n.h5")},
              comm=SerialComm())
    A, _ = synthetic_clients(range(3), 10, 5, 0)
    nnz = np.diff(A.indptr).reshape(3, 10)
    d, T = 5, 15
    client = 4 * nnz.sum(1) + 2 * E * 10 + 3 * d + 3 * (nnz * (nnz + 1) / 2).sum(1) + E * 10 + d
    server = 3 * (d + T) + d * d + d**3 / 3 + 2 * d * d
    per_round = client.max() / 1e9 + server / 1e10
    np.testing.assert_allclose(np.diff(out.metrics["sim_compute_s"]), per_round, rtol=1e-9)


def test_replay_under_the_run_profile_equals_the_live_clock(tmp_path):
    cfg = {"algorithm": "fednl-pp", "participation": 0.5, "rounds": 6, "tol": 0.0, "quiet": True,
           "network": "mixed-3g-4g", "clients": 8, "samples_per_client": 20, "reference_iterations": 0,
           "out": str(tmp_path / "pp.h5")}
    run(cfg, comm=SerialComm())
    t = load(cfg["out"])
    ns = t.attrs["netsim"]
    again = network.replay(t.metrics, t.arrays["netsim/flops"], t.arrays["netsim/server_flops"], ns["seed"],
                           ns["tau"], network.load("mixed-3g-4g"))
    np.testing.assert_array_equal(again, np.stack([t.metrics[c] for c in network.SIM_COLUMNS], axis=1))


def test_profiles_load_and_bad_ones_fail_in_one_line(tmp_path):
    for name in network.NAMES:
        p = network.load(name)
        d = p.devices(0, 5)
        assert np.all(d.up > 0) and np.all(d.speed > 0), name
    assert set(network.NAMES) >= {"datacenter", "lan", "4g", "3g", "mixed-3g-4g"}
    mixed = network.load("mixed-3g-4g").devices(0, 400)
    assert 0.4 < np.mean(mixed.rtt == 0.15) < 0.6  # about half on 3G
    with pytest.raises(ConfigError, match="--network = '5g' is out of range"):
        network.load("5g")
    with pytest.raises(ConfigError, match="rtt_ms is out of range"):
        network.load(profile_file(tmp_path, rtt_ms=-1.0))
    from mpifed.config import build

    with pytest.raises(ConfigError, match="--device = 'watch' is out of range"):
        build({"device": "watch"})


def test_devices_do_not_depend_on_the_federation_size_seen_so_far():
    a, b = network.load("mixed-3g-4g").devices(3, 10), network.load("mixed-3g-4g").devices(3, 20)
    np.testing.assert_array_equal(a.up, b.up[:10])


@pytest.mark.mpi
def test_simulated_time_is_the_same_at_any_rank_count(tmp_path):
    from rank_invariance import distributed_and_serial

    base = {"rounds": 6, "tol": 0.0, "quiet": True, "clients": 7, "samples_per_client": 20, "reference_iterations": 0}
    pairs = distributed_and_serial({
        "fednl-ls": {**base, "algorithm": "fednl-ls", "network": "mixed-3g-4g"},
        "fedavg-partial": {**base, "algorithm": "fedavg", "participation": 0.5, "network": "mixed-3g-4g"},
    }, tmp_path)
    if pairs is None:
        return
    for name, (out, serial) in pairs.items():
        for key in network.SIM_COLUMNS + network.NET_COLUMNS + ("exchanges",):
            np.testing.assert_array_equal(out.metrics[key], serial.metrics[key], err_msg=f"{name}: {key}")
