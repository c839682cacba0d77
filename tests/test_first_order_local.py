"""FedAvg, FedAvgM, FedProx, SCAFFOLD and FedAdam against a plain client-by-client loop written
here from the papers' update rules, and the hand-derived special cases (FedAvg with K = 1 is GD,
SCAFFOLD with one client is GD, FedProx with mu = 0 and FedAvgM with beta = 0 are FedAvg)."""
import numpy as np
import pytest

from mpifed import config as cfgmod
from mpifed.algorithms.first_order import fedavg, fedadam, fedavgm, fedprox, scaffold
from mpifed.comm import SerialComm
from mpifed.data import load, paper_split, synthetic_clients
from mpifed.driver import run
from mpifed.errors import ConfigError, MpifedError
from mpifed.federation import build_federation
from mpifed.rng import ClientStreams, participants
from mpifed.plan import resolve

LAM = 1e-3
SYN = {"dataset": "synthetic", "clients": 6, "samples_per_client": 25, "features": 5}
A9A_SMALL = {"dataset": "a9a", "clients": 6, "samples_per_client": 40}
BASE = {"quiet": True, "reference_iterations": 0, "out": None, "lam": LAM}


def client_data(cfg):
    """[(A_i dense, b_i)] for every client of a SYN or paper-split configuration."""
    n, m = cfg["clients"], cfg["samples_per_client"]
    if cfg["dataset"] == "synthetic":
        A, b = synthetic_clients(np.arange(n), m, cfg["features"], 0)
    else:
        ds = load(cfg["dataset"])
        rows = paper_split(ds.A.shape[0], n, m).rows
        A, b = ds.A[rows], ds.b[rows]
    A = A.toarray()
    return [(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m]) for i in range(n)]


def grad(A, b, x):
    return A.T @ (-b / (1 + np.exp(b * (A @ x)))) / len(b) + LAM * x


def plain(method, data, rounds, eta_l, K, tau=None, eta_g=1.0, beta=0.9, mu=0.0, option=2,
          beta1=0.9, beta2=0.99, eps=1e-3):
    """The methods client by client: returns x^0..x^R and the full gradient norms there."""
    n, d = len(data), data[0][0].shape[1]
    x = np.zeros(d)
    v, m1, v2, c = np.zeros(d), np.zeros(d), np.full(d, eps ** 2), np.zeros(d)
    c_i = [np.zeros(d) for _ in range(n)]
    xs = [x]
    for t in range(rounds):
        S = range(n) if tau is None else np.flatnonzero(participants(0, n, tau, t))
        ys, dcs = [], []
        for i in S:
            A, b = data[i]
            y = x.copy()
            for _ in range(K):
                g = grad(A, b, y)
                if method == "fedprox":
                    g = g + mu * (y - x)
                if method == "scaffold":
                    g = g - c_i[i] + c
                y = y - eta_l * g
            if method == "scaffold":
                new = grad(A, b, x) if option == 1 else c_i[i] - c + (x - y) / (K * eta_l)
                dcs.append(new - c_i[i])
                c_i[i] = new
            ys.append(y)
        D = np.mean(ys, axis=0) - x
        if method == "fedprox":
            x = np.mean(ys, axis=0)
        elif method == "fedavgm":
            v = beta * v + D
            x = x + eta_g * v
        elif method == "fedadam":
            m1 = beta1 * m1 + (1 - beta1) * D
            v2 = beta2 * v2 + (1 - beta2) * D ** 2
            x = x + eta_g * m1 / (np.sqrt(v2) + eps)
        else:
            x = x + eta_g * D
            if method == "scaffold":
                c = c + len(S) / n * np.mean(dcs, axis=0)
                np.testing.assert_allclose(c, np.mean(c_i, axis=0), atol=1e-14)  # c = mean c_i throughout
        xs.append(x)
    norms = [np.linalg.norm(np.mean([grad(A, b, z) for A, b in data], axis=0)) for z in xs]
    return xs, np.array(norms)


CASES = {
    "fedavg": ({"server_lr": 0.7}, {"eta_g": 0.7}),
    "fedavgm": ({"server_lr": 0.5, "momentum": 0.8}, {"eta_g": 0.5, "beta": 0.8}),
    "fedprox": ({"prox_mu": 0.3}, {"mu": 0.3}),
    "scaffold-1": ({"scaffold_option": 1, "server_lr": 0.8}, {"option": 1, "eta_g": 0.8}),
    "scaffold-2": ({"scaffold_option": 2}, {"option": 2}),
    "fedadam": ({"server_lr": 0.3, "beta1": 0.8, "beta2": 0.9, "adam_eps": 1e-2},
                {"eta_g": 0.3, "beta1": 0.8, "beta2": 0.9, "eps": 1e-2}),
}


@pytest.mark.parametrize("tau", [None, 3], ids=["full", "tau3"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_plain_client_loop(name, tau):
    method = name.split("-")[0]
    flags, kwargs = CASES[name]
    cfg = {**SYN, **BASE, "algorithm": method, "rounds": 6, "step_size": 0.9, "local_steps": 3, **flags}
    if tau:
        cfg["participation"] = tau
    r = run(cfg)
    xs, norms = plain(method, client_data(SYN), 6, 0.9, 3, tau=tau, **kwargs)
    np.testing.assert_allclose(r.x, xs[-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.metrics["grad_norm"], norms, rtol=1e-11)
    assert r.metrics["grad_norm"][-1] < 0.8 * norms[0]  # it moved towards x*
    share = (tau or 6) / 6
    vectors = 2 if method == "scaffold" else 1  # (Delta y, Delta c) and (x, c)
    per_round = share * vectors * 5 * 32
    np.testing.assert_allclose(r.metrics["bits_up"], per_round * np.arange(7))
    np.testing.assert_allclose(r.metrics["bits_down"], per_round * np.arange(7))
    np.testing.assert_array_equal(r.metrics["participants"], tau or 6)


@pytest.mark.parametrize("method", ["fedavg", "scaffold"])
@pytest.mark.data("a9a")
def test_sparse_block_with_participation_matches_the_plain_loop(method):
    cfg = {**A9A_SMALL, **BASE, "algorithm": method, "rounds": 4, "step_size": 1.5, "local_steps": 2,
           "participation": 4}
    r = run(cfg)
    xs, norms = plain(method, client_data(A9A_SMALL), 4, 1.5, 2, tau=4)
    np.testing.assert_allclose(r.x, xs[-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.metrics["grad_norm"], norms, rtol=1e-11)


@pytest.mark.data("a9a")
def test_fedavg_with_one_local_step_is_gd():
    """K = 1, eta_g = 1: x + mean_i((x - eta grad f_i(x)) - x) = x - eta grad P(x), on a9a 80 x 407."""
    common = {"dataset": "a9a", **BASE, "rounds": 12, "step_size": 1.3}
    gd = run({**common, "algorithm": "gd"})
    avg = run({**common, "algorithm": "fedavg", "local_steps": 1})
    np.testing.assert_allclose(avg.x, gd.x, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(avg.metrics["grad_norm"], gd.metrics["grad_norm"], rtol=1e-12)
    np.testing.assert_allclose(avg.metrics["bits_up"], gd.metrics["bits_up"])  # d floats a round, both
    assert avg.metrics["grad_norm"][-1] < 0.2 * avg.metrics["grad_norm"][0]


@pytest.mark.parametrize("option", [1, 2])
def test_scaffold_with_one_client_is_gd(option):
    """N = 1: c = c_1 after every round (c += (1/1) Delta c_1), so the correction c - c_1 is 0 and a
    round is K local GD steps; with eta_g = 1, SCAFFOLD's x^t is GD's iterate tK."""
    one = {"dataset": "synthetic", "clients": 1, "samples_per_client": 60, "features": 5, **BASE, "step_size": 1.7}
    K, R = 3, 5
    gd = run({**one, "algorithm": "gd", "rounds": K * R})
    sc = run({**one, "algorithm": "scaffold", "rounds": R, "local_steps": K, "scaffold_option": option})
    np.testing.assert_allclose(sc.x, gd.x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sc.metrics["grad_norm"], gd.metrics["grad_norm"][::K], rtol=1e-11)
    assert gd.metrics["grad_norm"][-1] < 0.5 * gd.metrics["grad_norm"][0]


@pytest.mark.parametrize("tau", [None, 4])
def test_fedprox_without_prox_and_fedavgm_without_momentum_are_fedavg(tau):
    cfg = {**SYN, **BASE, "rounds": 5, "step_size": 0.8, "local_steps": 4}
    if tau:
        cfg["participation"] = tau
    avg = run({**cfg, "algorithm": "fedavg"})
    prox = run({**cfg, "algorithm": "fedprox", "prox_mu": 0.0})
    mom = run({**cfg, "algorithm": "fedavgm", "momentum": 0.0})
    for other in (prox, mom):
        np.testing.assert_array_equal(other.x, avg.x)
        np.testing.assert_array_equal(other.metrics["grad_norm"], avg.metrics["grad_norm"])
        np.testing.assert_array_equal(other.metrics["bits_up"], avg.metrics["bits_up"])
    assert not np.array_equal(run({**cfg, "algorithm": "fedprox", "prox_mu": 0.5}).x, avg.x)


def test_only_participants_change_state_and_send_bits():
    config = cfgmod.build({**SYN, "algorithm": "scaffold", "step_size": 0.5, "local_steps": 2})
    fed = build_federation(resolve(config).data, SerialComm())
    p = scaffold.Params.from_options(resolve(config).method, fed)
    rng = np.random.default_rng(1)
    state = scaffold.ClientState(rng.standard_normal((6, 5)), rng.standard_normal(5))
    active = np.array([True, False, False, True, False, True])
    streams = ClientStreams(0, np.arange(6), 3, active)
    x = rng.standard_normal(5)
    new, up = scaffold.client_step(p, fed.block, state, x, streams)
    np.testing.assert_array_equal(new.c_i[~active], state.c_i[~active])
    assert np.all(new.c_i[active] != state.c_i[active])
    for name in ("dy", "dc"):
        np.testing.assert_array_equal(up.fields[name][~active], 0.0)
        assert np.all(up.fields[name][active] != 0.0)
    np.testing.assert_array_equal(up.value_bits, np.where(active, 2 * 5 * 32, 0))
    # the metrics still see every client's f_i(x), grad f_i(x)
    data = client_data(SYN)
    np.testing.assert_allclose(up.grad, [grad(A, b, x) for A, b in data], rtol=1e-12)
    # FedAvg's uplink: only the participants' moves
    _, up = fedavg.client_step(fedavg.Params(0.5, 2, n=6, tau=3), fed.block, None, x, streams)
    np.testing.assert_array_equal(up.fields["delta"][~active], 0.0)
    np.testing.assert_array_equal(up.value_bits, np.where(active, 5 * 32, 0))


@pytest.mark.parametrize("cfg", [SYN, pytest.param(A9A_SMALL, marks=pytest.mark.data("a9a"))], ids=["dense", "sparse"])
def test_default_local_step_is_one_over_the_largest_local_smoothness(cfg):
    config = cfgmod.build({**cfg, "algorithm": "fedprox", "prox_mu": 0.2})
    fed = build_federation(resolve(config).data, SerialComm())
    L = max(np.linalg.eigvalsh(A.T @ A / len(b))[-1] / 4 + LAM for A, b in client_data(cfg))
    assert fedprox.Params.from_options(resolve(config).method, fed).eta_l == pytest.approx(1 / (L + 0.2), rel=1e-12)
    config = cfgmod.build({**cfg, "algorithm": "fedavg"})
    p = fedavg.Params.from_options(resolve(config).method, fed)
    n = cfg["clients"]
    assert (p.eta_l, p.K, p.eta_g, p.tau, p.n) == (pytest.approx(1 / L, rel=1e-12), 5, 1.0, n, n)


@pytest.mark.parametrize("build, message", [
    (lambda: fedavg.Params(0.0), "step_size eta_l = 0.0 is out of range; valid: eta_l > 0"),
    (lambda: fedavg.Params(0.1, K=0), "local_steps K = 0 is out of range; valid: an integer K >= 1"),
    (lambda: fedavg.Params(0.1, tau=5, n=4),
     "participation tau = 5 clients per round is out of range; valid: 1 <= tau <= n = 4"),
    (lambda: fedavgm.Params(0.1, beta=1.0), "momentum beta = 1.0 is out of range; valid: 0 <= beta < 1"),
    (lambda: fedprox.Params(0.1, mu=-1.0), "prox_mu mu = -1.0 is out of range; valid: mu >= 0"),
    (lambda: scaffold.Params(0.1, option=3), "scaffold_option = 3 is out of range"),
    (lambda: fedadam.Params(0.1, beta2=1.0), "beta2 = 1.0 is out of range; valid: 0 <= beta2 < 1"),
    (lambda: fedadam.Params(0.1, eps=0.0), "adam_eps tau = 0.0 is out of range; valid: tau > 0"),
])
def test_bad_hyper_parameters_get_one_line_errors(build, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        build()
    assert "\n" not in str(err.value)


def test_config_refuses_a_field_the_method_does_not_use():
    with pytest.raises(MpifedError, match="--prox-mu does not apply to algorithm 'fedavg'"):
        cfgmod.build({"algorithm": "fedavg", "prox_mu": 0.1})
    with pytest.raises(MpifedError, match="--momentum does not apply to algorithm 'scaffold'"):
        cfgmod.build({"algorithm": "scaffold", "momentum": 0.5})
