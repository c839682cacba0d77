"""FLOP models of the LMO methods (lmo-momentum, lmo-hcm: logistic and networks) and of the monotone-inclusion
methods (sppm-vi, sppm-vi-vr, extragradient) against hand counts on small shapes, the saddle federation's shape,
and short runs of each method with finite, increasing simulated wall-clock."""
import numpy as np
import pytest

from mpifed import config, network
from mpifed.algorithms.inclusion import extragradient, sppm_vi, sppm_vi_vr
from mpifed.algorithms.lmo import hcm, momentum
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.federation import build_federation
from mpifed.network import flops as fl
from mpifed.plan import resolve

E = fl.ELEMENTARY
SADDLE = {"problem": "saddle", "clients": 5, "features": 3, "lam": 0.5, "similarity": 0.3, "tol": 0.0, "quiet": True}
LOGISTIC = {"clients": 3, "samples_per_client": 20, "tol": 0.0, "quiet": True, "reference_iterations": 0}
NN = {"dataset": "mnist-synthetic", "model": "softmax", "clients": 3, "samples_per_client": 20, "batch_size": 4,
      "tol": 0.0, "quiet": True}


def logistic_shape():
    # one client, d = 2, rows a_1 = (1, 2), a_2 = (0, 3), a_3 = (4, 0): m = 3, nnz = 4, pairs = 5
    return network.shape_of([[3, 4, 5]], 2, 1)


def network_shape():
    # one dense layer 3 -> 2 (d_in + 1 = 4, d_out = 2, 8 parameters), batch 2
    return network.shape_of([[2, 8, 0]], 8, 1, layers=((1, 4, 2),), batch=2)


def saddle_shape():
    # two clients, d = 3: one dense 3 x 3 operator each (nnz = 9)
    return network.shape_of([[1, 9, 0], [1, 9, 0]], 3, 2)


def test_the_new_primitives_match_hand_counts():
    assert fl.lu_solve(3) == 18 + 18                        # 2 * 27 / 3, two triangular solves 2 * 9
    # 4 x 2: Golub-Reinsch 14 * 4 * 4 + 8 * 8 = 288, R-SVD 6 * 4 * 4 + 20 * 8 = 256; the same for 2 x 4
    assert fl.thin_svd(4, 2) == fl.thin_svd(2, 4) == 256
    assert fl.thin_svd(3, 3) == min(14 * 27 + 8 * 27, 6 * 27 + 20 * 27)
    # A v (8), phi'' per row (3 E), h (a^T v) (3), A^T w (8), 1/m and lam v (6)
    assert fl.glm_hvp(logistic_shape())[0] == 8 + 3 * E + 3 + 8 + 6
    # forward 2 * 4 * 2 = 16 per sample, 3 passes of 2 samples, the ridge 2 per parameter
    assert fl.network_gradient(network_shape()) == 3 * 2 * 16 + 2 * 8


def test_lmo_momentum_on_the_logistic_problem_matches_hand_counts():
    s, grad = logistic_shape(), 8 + 6 * E + 8 + 6
    w = momentum.flops(momentum.Params(norm="l2"), s)
    assert w.step[0] == grad + 2                              # (1 - beta) g: d
    # sum of d floats from tau = 1; the mean d, beta m + mean 2d, ||m|| 2d and -m/||m|| d, x + t s 2d
    assert w.server == 2 + 2 + 4 + 6 + 4
    assert momentum.flops(momentum.Params(norm="linf"), s).server == 2 + 2 + 4 + 2 + 4
    assert np.all(w.vectors(1)[:, [0, 2]] == 0) and w.query_server == w.init_server == 0


def test_lmo_hcm_on_the_logistic_problem_adds_the_exact_hvp():
    s, grad, hvp = logistic_shape(), 8 + 6 * E + 8 + 6, 8 + 3 * E + 3 + 8 + 6
    w = hcm.flops(hcm.Params(norm="l2"), s)
    # (1 - beta) g (2), x^k - x^{k-1} (2), H d (hvp), beta H d (2) and its sum into c (2)
    assert w.step[0] == grad + 2 + 2 + hvp + 4
    assert w.server == momentum.flops(momentum.Params(norm="l2"), s).server


def test_lmo_hcm_on_a_network_counts_a_second_gradient_and_the_spectral_svd():
    s = network_shape()
    gradient = 3 * 2 * 16 + 2 * 8
    p = hcm.Params(norm="spectral", network=True)
    w = hcm.flops(p, s)
    # g (112), (1 - beta) g (8), d^k (8), the difference quotient: ||v||, ||x|| (32), x + eps v (16), a second
    # gradient on the batch (112), (moved - g) / eps (16), beta H d and the sum (16)
    assert w.step[0] == gradient + 8 + 8 + (32 + 16 + gradient + 16) + 16
    # sum (8), mean (8), beta m + mean (16), the layer's 4 x 2 thin SVD (256), U V^T 2 * 4 * 2 * 2 (32), the sign (8),
    # x + t s (16)
    assert w.server == 8 + 8 + 16 + (256 + 32 + 8) + 16
    plain = momentum.flops(momentum.Params(norm="spectral", network=True), s)
    assert plain.step[0] == gradient + 8 and plain.server == w.server


def test_extragradient_matches_hand_counts():
    w = extragradient.flops(extragradient.Params(0.1), saddle_shape())
    # both exchanges: M_i z + q_i (9 mul + 6 add + 3 add = 18); the server sums 2 x 3 floats and z - (gamma/n) sum (6)
    np.testing.assert_array_equal(w.step, [18, 18])
    assert (w.server, w.query_server) == (12, 12)
    np.testing.assert_array_equal(np.broadcast_to(w.query, (2,)), [18, 18])


def test_sppm_vi_charges_the_sampled_clients_lu_solve():
    w = sppm_vi.flops(sppm_vi.Params(0.1, 2, 0), saddle_shape())
    # I + gamma M (9 + 3), z - gamma q (6), LU 2 * 27 / 3 = 18 and two triangular solves 18
    np.testing.assert_array_equal(w.step, [54, 54])
    assert w.server == 0


def test_sppm_vi_vr_is_the_expected_round_over_the_anchor_coin():
    w = sppm_vi_vr.flops(sppm_vi_vr.Params(0.1, 0.25, 2, 0), saddle_shape())
    answer = 18 + 3 + 6 + 54  # A_xi(w), a - A_xi(w), z - gamma shift, the resolvent
    np.testing.assert_array_equal(w.step, [0.25 * 18 + 0.75 * answer] * 2)
    assert w.server == 0.25 * (2 * 3 + 3)  # a = (1/n) sum A_i(w), full rounds only
    np.testing.assert_array_equal(w.query, [answer] * 2)
    assert w.query_server == 0
    always = sppm_vi_vr.flops(sppm_vi_vr.Params(0.1, 1.0, 2, 0), saddle_shape())
    np.testing.assert_array_equal(always.step, [18, 18])


def test_the_saddle_federation_has_a_dense_operator_shape():
    fed = build_federation(resolve(config.build({**SADDLE, "algorithm": "sppm-vi"})).data, SerialComm())
    np.testing.assert_array_equal(fed.client_shape, np.tile([1, 36, 0], (5, 1)))  # d = 6, nnz = d^2


def profile(tmp_path, **values):
    values = {"up_mbps": 1.0, "down_mbps": 2.0, "rtt_ms": 100.0, "device": 1.0, "server": 10.0, **values}
    path = tmp_path / "p.toml"
    path.write_text("\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n")
    return str(path)


def increasing(m):
    t = np.asarray(m["sim_time_s"])
    assert np.all(np.isfinite(t)) and t[0] >= 0 and np.all(np.diff(t) > 0)
    assert np.all(np.diff(m["sim_compute_s"]) > 0)


@pytest.mark.parametrize("conf", [
    {**LOGISTIC, "algorithm": "lmo-momentum"},
    {**LOGISTIC, "algorithm": "lmo-hcm", "lmo_norm": "linf"},
    {**NN, "algorithm": "lmo-momentum", "lmo_norm": "linf"},
    {**NN, "algorithm": "lmo-hcm", "lmo_norm": "spectral"},
    {**SADDLE, "algorithm": "extragradient"},
    {**SADDLE, "algorithm": "sppm-vi"},
    {**SADDLE, "algorithm": "sppm-vi-vr"},
], ids=["lmo-momentum", "lmo-hcm", "lmo-momentum-nn", "lmo-hcm-nn", "extragradient", "sppm-vi", "sppm-vi-vr"])
def test_a_short_run_has_finite_increasing_simulated_time(conf, tmp_path):
    m = run({**conf, "rounds": 3, "out": str(tmp_path / "t.h5")}, comm=SerialComm()).metrics
    increasing(m)


@pytest.mark.parametrize("algorithm", ["extragradient", "sppm-vi-vr"])
def test_the_saddle_runs_compute_time_is_the_flop_model(algorithm, tmp_path):
    """Free links, homogeneous devices (1 GFLOP/s, the server 10): each exchange costs its FLOPs over the speeds."""
    prof = profile(tmp_path, up_mbps=1e12, down_mbps=1e12, rtt_ms=0.0)
    result = run({**SADDLE, "algorithm": algorithm, "rounds": 6, "grad_probability": 0.5, "network": prof,
                  "out": str(tmp_path / "s.h5")} if algorithm == "sppm-vi-vr" else
                 {**SADDLE, "algorithm": algorithm, "rounds": 6, "network": prof, "out": str(tmp_path / "s.h5")},
                 comm=SerialComm())
    m = result.metrics
    fed = build_federation(resolve(config.build({**SADDLE, "algorithm": algorithm})).data, SerialComm())
    s = network.shape_of(fed.client_shape, fed.d, fed.tau)
    module = {"extragradient": extragradient, "sppm-vi-vr": sppm_vi_vr}[algorithm]
    p = (sppm_vi_vr.Params(0.1, 0.5, 5, 0) if algorithm == "sppm-vi-vr" else extragradient.Params(0.1))
    w = module.flops(p, s)
    queries = np.diff(m["exchanges"]) - 1
    expected = (w.step.max() / 1e9 + w.server / 1e10) + queries * (np.max(w.query) / 1e9 + w.query_server / 1e10)
    np.testing.assert_allclose(np.diff(m["sim_compute_s"]), expected, rtol=1e-9)
    if algorithm == "extragradient":
        assert np.all(queries == 1)
    else:
        assert queries[0] == 1 and set(queries) <= {0, 1}
