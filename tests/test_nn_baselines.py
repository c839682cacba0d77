"""Neural-network FedAvgM, FedProx, SCAFFOLD and FedAdam against plain re-implementations.

Oracle: one client at a time on the same mini-batches (``fed.block.batch(fed.streams(t), k, active)``) and the
block's ``loss_grad``, with the update rules written out from the papers (Hsu et al. 2019; Li et al. 2020;
Karimireddy et al. 2020, Algorithm 1, options I and II; Reddi et al. 2021, Algorithm 2), compared with
``driver.run``; plus the closed-form special cases FedAvgM(beta = 0) = FedProx(mu = 0) = FedAvg.
All runs are small (mnist-synthetic, 3 clients, batch 8, K = 2, 2 rounds).
"""
import numpy as np
import pytest

from mpifed import config as cfgmod
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.problems.nn import build_model
from mpifed.federation import build_federation
from mpifed.plan import resolve

CNN = "cnn:conv=2-3,dense=6-5"
MLP = "mlp:hidden=16"
BASE = dict(dataset="mnist-synthetic", partition="iid", reference_iterations=0, batch_size=8, local_steps=2,
            lam=0.0, quiet=True, seed=3, overwrite=True, clients=3, rounds=2)


def _setup(conf):
    fed = build_federation(resolve(cfgmod.build(conf)).data, SerialComm())
    return fed, fed.block, np.array(fed.x0, dtype=float)


def _local(fed, x, t, K, eta, mu=0.0, corr=None):
    """The round's participants (indices) and each one's y^K, one client at a time:
    y <- y - eta (grad f_i(y; batch k) + mu (y - x) + corr_i)."""
    s = fed.streams(t)
    on = np.ones(fed.block.n, bool) if s.active is None else np.asarray(s.active, bool)
    who = np.flatnonzero(on)
    batches = [fed.block.batch(s, k, on) for k in range(K)]
    ys = []
    for j, i in enumerate(who):
        y = x.copy()
        for X, lab in batches:
            g = fed.block.loss_grad(y, X[j], lab[j])[1]
            if corr is not None:
                g = g + corr[i]
            y = y - eta * (g + mu * (y - x))
        ys.append(y)
    return who, np.array(ys), s, on


def oracle_fedavgm(conf):
    fed, _, x = _setup(conf)
    v = np.zeros_like(x)
    for t in range(conf["rounds"]):
        _, ys, _, _ = _local(fed, x, t, conf["local_steps"], conf["step_size"])
        v = conf["momentum"] * v + np.mean(ys - x, axis=0)
        x = x + conf["server_lr"] * v
    return x


def oracle_fedprox(conf):
    fed, _, x = _setup(conf)
    for t in range(conf["rounds"]):
        _, ys, _, _ = _local(fed, x, t, conf["local_steps"], conf["step_size"], mu=conf["prox_mu"])
        x = np.mean(ys, axis=0)
    return x


def oracle_fedadam(conf):
    fed, _, x = _setup(conf)
    b1, b2, tau, eta = conf["beta1"], conf["beta2"], conf["adam_eps"], conf["server_lr"]
    m, v = np.zeros_like(x), np.full_like(x, tau ** 2)
    for t in range(conf["rounds"]):
        _, ys, _, _ = _local(fed, x, t, conf["local_steps"], conf["step_size"])
        d = np.mean(ys - x, axis=0)
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


def oracle_scaffold(conf):
    fed, block, x = _setup(conf)
    K, eta, N = conf["local_steps"], conf["step_size"], block.n
    c, ci = np.zeros_like(x), np.zeros((N, len(x)))
    for t in range(conf["rounds"]):
        who, ys, s, on = _local(fed, x, t, K, eta, corr=c - ci)
        dy, dc = [], []
        if conf["scaffold_option"] == 1:
            X, lab = block.batch(s, "control", on)  # a fresh mini-batch at x (stream "batchcontrol")
        for j, i in enumerate(who):
            if conf["scaffold_option"] == 1:
                new = block.loss_grad(x, X[j], lab[j])[1]
            else:
                new = ci[i] - c + (x - ys[j]) / (K * eta)
            dy.append(ys[j] - x)
            dc.append(new - ci[i])
            ci[i] = new
        x = x + conf["server_lr"] * np.mean(dy, axis=0)
        c = c + np.sum(dc, axis=0) / N
    return x


CASES = {
    "fedavgm": (dict(algorithm="fedavgm", step_size=0.05, momentum=0.9, server_lr=0.7), oracle_fedavgm),
    "fedprox": (dict(algorithm="fedprox", step_size=0.05, prox_mu=0.3), oracle_fedprox),
    "fedadam": (dict(algorithm="fedadam", step_size=0.05, server_lr=0.01, beta1=0.8, beta2=0.95, adam_eps=1e-3),
                oracle_fedadam),
    "scaffold-II": (dict(algorithm="scaffold", step_size=0.05, scaffold_option=2, server_lr=0.8), oracle_scaffold),
    "scaffold-I": (dict(algorithm="scaffold", step_size=0.05, scaffold_option=1, server_lr=1.0), oracle_scaffold),
}


@pytest.mark.parametrize("name,spec,participation", [(name, CNN, 1.0) for name in CASES] + [
    ("fedavgm", MLP, 0.67), ("fedprox", MLP, 0.67), ("fedadam", MLP, 0.67), ("scaffold-II", MLP, 0.67),
    ("scaffold-I", MLP, 0.67)])
def test_method_matches_plain_reimplementation(name, spec, participation, tmp_path):
    extra, oracle = CASES[name]
    # 3 rounds under partial participation, so that a client that sat out a round takes part again (SCAFFOLD's
    # c_i kept across rounds)
    rounds = 2 if participation == 1.0 else 3
    conf = {**BASE, **extra, "model": spec, "participation": participation, "rounds": rounds,
            "out": str(tmp_path / "t.h5")}
    result = run(conf, comm=SerialComm())
    assert result.status == "completed", result.message
    x = oracle(conf)
    assert not np.allclose(x, build_model(spec, (28, 28), 10).init(conf["seed"]))  # the model moved
    np.testing.assert_allclose(result.x, x, rtol=1e-9, atol=1e-12)
    # Uplink: each participant sends P floats per field (SCAFFOLD: Delta y and Delta c, 2P); the ledger is the
    # mean over all n clients, so a round with 2 of 3 participants costs 2/3 of that per client.
    floats = 2 if extra["algorithm"] == "scaffold" else 1
    share = 1.0 if participation == 1.0 else 2 / 3
    np.testing.assert_allclose(np.diff(result.metrics["bits_up"]), share * floats * len(x) * 32)


def test_partial_participation_leaves_clients_out():
    """The 0.67 cases do exercise partial participation: 2 of 3 clients per round, not always the same."""
    fed, _, _ = _setup({**BASE, "model": MLP, "algorithm": "fedavg", "step_size": 0.05, "participation": 0.67})
    masks = [tuple(np.asarray(fed.streams(t).active, bool)) for t in range(3)]
    assert all(sum(m) == 2 for m in masks) and len(set(masks)) > 1


@pytest.mark.parametrize("extra", [dict(algorithm="fedavgm", momentum=0.0), dict(algorithm="fedprox", prox_mu=0.0)])
def test_special_cases_equal_fedavg(extra, tmp_path):
    """FedAvgM with beta = 0 and FedProx with mu = 0 are FedAvg (eta_g = 1), bit for bit."""
    conf = {**BASE, "model": CNN, "step_size": 0.05, "participation": 0.67}
    ref = run({**conf, "algorithm": "fedavg", "out": str(tmp_path / "a.h5")}, comm=SerialComm())
    got = run({**conf, **extra, "out": str(tmp_path / "b.h5")}, comm=SerialComm())
    assert ref.status == got.status == "completed"
    np.testing.assert_array_equal(got.x, ref.x)


@pytest.mark.parametrize("change,words", [
    (dict(algorithm="fedavgm", momentum=1.0), ["momentum", "1.0"]),
    (dict(algorithm="fedprox", prox_mu=-0.1), ["prox", "-0.1", "mu >= 0"]),
    (dict(algorithm="scaffold", scaffold_option=3), ["scaffold", "3"]),
    (dict(algorithm="scaffold", step_decay=0.1), ["step"]),
    (dict(algorithm="fedadam", beta2=1.5), ["beta2", "1.5"]),
    (dict(algorithm="fedadam", step_size=-0.1), ["--step-size", "-0.1", "step_size > 0"]),
])
def test_bad_input_is_a_one_line_error(change, words, tmp_path):
    with pytest.raises(ConfigError) as e:
        run({**BASE, "model": MLP, "step_size": 0.05, **change, "out": str(tmp_path / "t.h5")}, comm=SerialComm())
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
