"""Defaults that depend on the kind of run: a bare command works for a convex problem, an image dataset and
every network method, and stops where the documented default says."""
import numpy as np
import pytest

from mpifed import config
from mpifed.algorithms import NN_METHODS, NN_MODULES
from mpifed.algorithms.networks.local import DEFAULT_K, FEDRCO_K, FEDRCO_STEP, FOOF_STEP, SGD_STEP, SOPHIA_STEP
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.plan import resolve

DEFAULT_STEP = {"localnewton": FOOF_STEP, "fedpm": FOOF_STEP, "fedrco": FEDRCO_STEP, "fedrco-ori": FEDRCO_STEP,
                "fedsophia": SOPHIA_STEP}


def test_a_convex_run_stops_at_the_papers_tolerance_and_solves_for_x_star():
    c = config.build({})
    assert (c.dataset, c.algorithm, c.partition, c.reference_iterations, c.tol) == ("synthetic", "fednl", "paper", 20, 1e-14)
    assert resolve(c).data.clients == 32 and resolve(c).data.samples_per_client == 100


def test_a_network_run_defaults_to_iid_clients_no_reference_solve_and_every_round():
    c = config.build({"dataset": "mnist", "model": "cnn", "algorithm": "fedrco"})
    assert (c.partition, c.reference_iterations, c.tol) == ("iid", 0, 0.0)
    assert resolve(c).data.clients == 100 and resolve(c).data.tau == 100
    bare = config.build({"dataset": "mnist"})  # an image dataset alone trains FedRCO's CNN with FedAvg
    assert (bare.model, bare.algorithm, bare.partition) == ("cnn", "fedavg", "iid")


def test_given_values_win_over_the_run_defaults():
    c = config.build({"dataset": "mnist-synthetic", "model": "mlp:hidden=8", "partition": "dirichlet:alpha=0.5",
                      "tol": 1e-3, "algorithm": "fedpm"})
    assert (c.partition, c.tol, c.algorithm) == ("dirichlet:alpha=0.5", 1e-3, "fedpm")
    with pytest.raises(ConfigError, match="needs a convex problem"):
        config.build({"dataset": "mnist", "model": "cnn", "reference_iterations": 20})
    with pytest.raises(ConfigError, match="'paper' does not apply to image datasets"):
        config.build({"dataset": "mnist", "model": "cnn", "partition": "paper"})


@pytest.mark.parametrize("algorithm", NN_METHODS)
def test_every_network_method_runs_with_its_defaults(algorithm, tmp_path):
    """No step size, partition, reference solve, tolerance or local steps given: the run completes with finite
    numbers, the method's documented default step (FedRCO: its paper's, App. E.3; the others calibrated on
    FedRCO's CNN) and its default K (FedRCO: 20, the others 5)."""
    conf = {"dataset": "mnist-synthetic", "model": "softmax", "clients": 4, "algorithm": algorithm, "rounds": 2,
            "batch_size": 8, "quiet": True, "out": str(tmp_path / "t.h5")}
    result = run(conf, comm=SerialComm())
    assert result.status == "completed" and result.rounds == 2, result.message
    assert np.all(np.isfinite(result.metrics["loss"])) and np.all(np.isfinite(result.x))
    plan = resolve(config.build(conf))
    module = NN_MODULES[algorithm]
    from mpifed.federation import build_federation

    params = module.Params.from_options(plan.method, build_federation(plan.data, SerialComm()))
    if algorithm.startswith("lmo-"):  # no local steps: the documented radius and momentum
        assert (params.t, params.beta, params.norm) == (0.1, 0.9, "l2")
        return
    eta_l = params.base.eta_l if hasattr(params, "base") else params.eta_l
    assert eta_l == DEFAULT_STEP.get(algorithm, SGD_STEP)
    K = params.base.K if hasattr(params, "base") else params.K
    assert K == (FEDRCO_K if algorithm.startswith("fedrco") else DEFAULT_K)
    if algorithm.startswith("fedrco"):  # App. E.3: eps = 0.03, alpha = 0.95; sec. 6.3: T_inv = 200
        assert (params.eta_l, params.K, params.eps, params.alpha, params.T_inv) == (0.00625, 20, 0.03, 0.95, 200)
