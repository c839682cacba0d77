"""The composite L1 problem and its methods: soft-thresholding, the prox-gradient mapping, the proximal-Newton
reference against scipy, ProxSkip at p = 1 against proximal GD, the control variates' invariant, SPPM as the
proximal point method, bad input, and (``-m mpi``) the same traces at 1, 2 and 4 ranks."""
import numpy as np
import pytest
import scipy.optimize

from mpifed import config as cfgmod
from mpifed import driver
from mpifed.algorithms.proximal import proxskip, sampling
from mpifed.comm import MPIComm, SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError, MpifedError
from mpifed.federation import build_federation
from mpifed.plan import resolve
from mpifed.problems import l1

LAM1 = 0.01
BASE = {"quiet": True, "tol": 0.0, "reference_iterations": 20}


def _run(tmp_path, name, **values):
    return run({**BASE, "out": str(tmp_path / f"{name}.h5"), **values}, comm=SerialComm())


def _federation(**values):
    c = cfgmod.build({"algorithm": "proxgd", **values})
    return build_federation(resolve(c).data, SerialComm())


def _smooth(fed):
    """f(y) = (1/n) sum_i f_i(y) and its gradient, from the block (all clients on one rank)."""
    def f(y):
        loss, grad, _ = fed.block.derivatives(np.asarray(y), hessian=False)
        return float(loss.mean()), grad.mean(axis=0)
    return f


def test_soft_thresholding_is_the_prox_of_the_l1_norm():
    """Closed form sign(z) max(|z| - t, 0), and the minimiser of 1/2 (u - z)^2 + t |u| found by scipy."""
    z = np.array([-3.0, -0.5, -0.2, 0.0, 0.1, 0.2, 0.7, 5.0])
    t = 0.2
    expected = np.where(z > t, z - t, np.where(z < -t, z + t, 0.0))
    np.testing.assert_array_equal(l1.soft_threshold(z, t), expected)
    for zj, uj in zip(z, l1.soft_threshold(z, t)):
        best = scipy.optimize.minimize_scalar(lambda u: 0.5 * (u - zj) ** 2 + t * abs(u), bounds=(-10, 10),
                                              method="bounded", options={"xatol": 1e-12})
        assert abs(best.x - uj) < 1e-8


def test_reference_solution_satisfies_the_l1_optimality_conditions_and_matches_scipy():
    """x* of the proximal-Newton reference: KKT (0 in grad f + lam1 d||x||_1) to 1e-12, G_{1/L}(x*) ~ 0, and the
    same point as L-BFGS-B on the split x = u - v, u, v >= 0 (an independent solver)."""
    fed = _federation(l1=LAM1)
    prox = driver.composite(fed, LAM1)
    x_star, f_star = driver.reference_solution(fed, 20, prox)
    f = _smooth(fed)
    value, grad = f(x_star)
    assert np.max(l1.subgradient_residual(x_star, grad, LAM1)) < 1e-12
    assert np.linalg.norm(l1.gradient_mapping(x_star, grad, prox.gamma, LAM1)) < 1e-12
    assert f_star == pytest.approx(value + LAM1 * np.abs(x_star).sum(), rel=1e-14)
    assert 0 < np.count_nonzero(x_star) < fed.d  # the L1 term is active: a sparse x*
    moved = x_star + 1e-3 * np.ones(fed.d)
    assert np.linalg.norm(l1.gradient_mapping(moved, f(moved)[1], prox.gamma, LAM1)) > 1e-5

    d = fed.d

    def split(w):
        fv, g = f(w[:d] - w[d:])
        return fv + LAM1 * w.sum(), np.concatenate([g + LAM1, -g + LAM1])

    res = scipy.optimize.minimize(split, np.zeros(2 * d), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * d),
                                  options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    np.testing.assert_allclose(res.x[:d] - res.x[d:], x_star, atol=1e-5)
    assert res.fun >= f_star - 1e-12


@pytest.mark.parametrize("lam1", [0.0, LAM1])
def test_proxskip_with_p_one_is_proximal_gd_bit_for_bit(tmp_path, lam1):
    """p = 1: one local step, then the prox of the average, every round: ProxGD (GD when lam1 = 0) exactly."""
    common = {"rounds": 15, "step_size": 0.5, "l1": lam1, "reference_iterations": 3}
    skip = _run(tmp_path, "skip", algorithm="proxskip", skip_probability=1.0, **common)
    reference = _run(tmp_path, "gd", algorithm="proxgd" if lam1 else "gd", **common)
    np.testing.assert_array_equal(skip.x, reference.x)
    for key in ("loss", "grad_norm", "dist_to_opt", "bits_up", "bits_down", "exchanges"):
        np.testing.assert_array_equal(skip.metrics[key], reference.metrics[key], err_msg=key)


def test_proxgd_without_l1_is_gd_and_prox_baselines_are_proxgd_at_their_gd_settings(tmp_path):
    """ProxGD at lam1 = 0 is GD bit for bit; prox-FedAvg (K = 1) and prox-DCGD / prox-DIANA (identity) equal ProxGD."""
    common = {"rounds": 12, "step_size": 0.5, "reference_iterations": 0}
    gd = _run(tmp_path, "gd", algorithm="gd", **common)
    np.testing.assert_array_equal(_run(tmp_path, "pgd0", algorithm="proxgd", **common).x, gd.x)
    pgd = _run(tmp_path, "pgd", algorithm="proxgd", l1=LAM1, **common)
    for name, extra in {"fedavg": {"local_steps": 1}, "dcgd": {"compressor": "identity"},
                        "diana": {"compressor": "identity"}}.items():
        out = _run(tmp_path, name, algorithm=name, l1=LAM1, **common, **extra)
        np.testing.assert_allclose(out.x, pgd.x, rtol=0, atol=1e-13, err_msg=name)
        np.testing.assert_array_equal(out.x == 0, pgd.x == 0, err_msg=name)


def _scaffnew(fed, p, rounds):
    """The driver's round by hand: (x, client state) after ``rounds`` rounds and the h update of the last one."""
    state, _ = proxskip.client_init(p, fed.block, None, fed.streams(-1))
    server, x = proxskip.server_init(p, None, None), np.zeros(fed.d)
    for k in range(rounds):
        state, up = proxskip.client_step(p, fed.block, state, x, fed.streams(k))
        server, x, _ = proxskip.server_step(p, server, x, driver.exchange(fed, up))
    state, _ = proxskip.client_step(p, fed.block, state, x, fed.streams(rounds))  # h_i <- h_i + (p/gamma)(x - xhat_i)
    return x, state


@pytest.mark.parametrize("lam1", [0.0, LAM1])
def test_scaffnew_control_variates_keep_their_mean(lam1):
    """lam1 = 0: sum_i h_i = 0 (to rounding); lam1 > 0: mean_i h_i in -lam1 d||x||_1 (the prox's subgradient)."""
    fed = _federation(l1=lam1)
    p = proxskip.Params(gamma=0.5, p=0.3, lam1=lam1, seed=3)
    x, state = _scaffnew(fed, p, 30)
    h = state.h
    mean = h.mean(axis=0)
    scale = np.abs(h).max()
    assert scale > 1e-3  # the h_i are not all zero: the check is not empty
    if lam1 == 0:
        assert np.abs(h.sum(axis=0)).max() <= 1e-13 * scale * fed.n_clients
    else:
        on = x != 0
        np.testing.assert_allclose(mean[on], -lam1 * np.sign(x[on]), rtol=0, atol=1e-13 * scale)
        assert np.all(np.abs(mean[~on]) <= lam1 * (1 + 1e-12))


def test_proxskip_coins_are_geometric_and_shared():
    """t_k ~ Geometric(p): mean 1/p over many rounds; the same draw for the same (seed, round)."""
    p = proxskip.Params(gamma=1.0, p=0.2, seed=7)
    draws = np.array([proxskip.local_steps(p, k) for k in range(2000)])
    assert draws.min() >= 1 and abs(draws.mean() - 5.0) < 0.4  # std of the mean: sqrt(1 - p) / (p sqrt(2000)) = 0.1
    assert [proxskip.local_steps(p, k) for k in range(50)] == list(draws[:50])


@pytest.mark.parametrize("problem", ["logistic", "least-squares"])
def test_sppm_full_sampling_is_the_proximal_point_method(tmp_path, problem):
    """Full sampling, lam1 = 0, many inner steps: x_1 = argmin P(y) + ||y - x_0||^2/(2 gamma) (scipy), and every
    step contracts the distance to x* by 1/(1 + gamma mu) at least (logistic, and ridge regression)."""
    gamma, lam = 100.0, 1e-3
    out = _run(tmp_path, "sppm", algorithm="sppm", sampling="full", inner_rounds=150, step_size=gamma, rounds=1,
               problem=problem)
    f = _smooth(_federation(problem=problem))
    res = scipy.optimize.minimize(lambda y: (f(y)[0] + y @ y / (2 * gamma), f(y)[1] + y / gamma), np.zeros(len(out.x)),
                                  jac=True, method="L-BFGS-B", options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 5000})
    np.testing.assert_allclose(out.x, res.x, atol=1e-8)
    long = _run(tmp_path, "sppm4", algorithm="sppm", sampling="full", inner_rounds=150, step_size=gamma, rounds=4,
                problem=problem)
    dist = long.metrics["dist_to_opt"]
    assert np.all(dist[1:] <= dist[:-1] / (1 + gamma * lam) * (1 + 1e-9))
    assert np.all(np.diff(long.metrics["exchanges"]) == 150)


def test_sppm_samplings_have_unbiased_weights():
    """E f_S = P: the mean of w_i over many rounds is 1/n for every client, and sum_{i in S} w_i = 1."""
    n = 12
    for spec in ("full", "nice:tau=5", "block:b=5", "stratified:b=5"):
        kind, count = sampling.parse(spec)
        w = np.array([sampling.cohort(kind, count, n, 1, k) for k in range(1500)])
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(w.mean(axis=0), 1.0 / n, rtol=0.16, err_msg=spec)  # about 4 standard deviations


def test_l1_runs_report_the_prox_gradient_norm_and_the_support(tmp_path):
    out = run({**BASE, "algorithm": "proxgd", "l1": LAM1, "rounds": 400, "tol": 1e-10,
               "out": str(tmp_path / "pgd.h5")}, comm=SerialComm())
    m = out.metrics
    assert out.status == "converged" and m["prox_grad_norm"][-1] <= 1e-10
    assert m["support_recall"][-1] == m["support_precision"][-1] == 1.0
    assert m["nnz"][-1] == np.count_nonzero(out.x)
    assert m["loss"][-1] == pytest.approx(m["f_gap"][-1] + (m["loss"][-1] - m["f_gap"][-1]))


@pytest.mark.parametrize("values, words", [
    ({"l1": -1.0}, "--l1 = -1.0 is out of range"),
    ({"l1": 0.1, "algorithm": "gd"}, "proxgd, proxskip, sppm"),
    ({"algorithm": "proxskip", "skip_probability": 0.0}, "--skip-probability"),
    ({"algorithm": "sppm", "sampling": "nice"}, "--sampling"),
    ({"algorithm": "sppm", "sampling": "cohort:tau=3"}, "--sampling"),
    ({"algorithm": "sppm", "inner_rounds": 0}, "--inner-rounds"),
    ({"algorithm": "proxgd", "sampling": "full"}, "does not apply"),
    ({"algorithm": "proxgd", "step_size": "auto"}, "applies to sppm only"),
    ({"algorithm": "sppm", "step_size": "auto", "tol": 0.0}, "--tol = 0.0 is out of range; valid: tol > 0"),
    ({"algorithm": "sppm", "step_size": "auto", "tol": 1e-6, "reference_iterations": 0}, "needs x*"),
    ({"algorithm": "sppm", "step_size": "auto", "tol": 1e-6, "lam": 0.0}, "mu_i = lam = 0.0"),
    ({"algorithm": "sppm", "step_size": "fast"}, "--step-size must be a finite number"),
])
def test_bad_input_is_a_one_line_error(values, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")) as err:
        cfgmod.build(values)
    assert "\n" not in str(err.value)


def test_a_cohort_larger_than_the_federation_fails_before_round_0(tmp_path):
    out = tmp_path / "big.h5"
    with pytest.raises(MpifedError, match="tau clients per cohort = 40 is out of range; valid: 1 <= tau <= n = 32"):
        run({**BASE, "algorithm": "sppm", "sampling": "nice:tau=40", "out": str(out)}, comm=SerialComm())
    assert not out.exists()


EVERY = {
    "proxgd": {"algorithm": "proxgd"},
    "proxskip": {"algorithm": "proxskip", "skip_probability": 0.3},
    "sppm-nice": {"algorithm": "sppm", "sampling": "nice:tau=7", "inner_rounds": 3},
    "sppm-stratified": {"algorithm": "sppm", "sampling": "stratified:b=4", "inner_rounds": 2},
    "sppm-block": {"algorithm": "sppm", "sampling": "block:b=3", "inner_rounds": 2},
    "sppm-auto": {"algorithm": "sppm", "sampling": "nice:tau=7", "inner_rounds": 3, "step_size": "auto", "tol": 1e-4,
                  "lam": 0.05},
    "sppm-auto-ridge": {"algorithm": "sppm", "sampling": "stratified:b=4", "inner_rounds": 2, "step_size": "auto",
                        "tol": 1e-4, "problem": "least-squares"},
    "fedavg": {"algorithm": "fedavg", "local_steps": 3},
    "diana": {"algorithm": "diana"},
    "dcgd": {"algorithm": "dcgd"},
}


@pytest.mark.mpi
@pytest.mark.parametrize("name", sorted(EVERY))
def test_proximal_methods_distributed_equal_serial(name, tmp_path):
    """With the L1 term, each method's trace (and ProxSkip's shared coins) is the same at 1, 2 and 4 ranks."""
    config = {**BASE, "rounds": 8, "reference_iterations": 10, "l1": LAM1, "out": str(tmp_path / "mpi.h5"), **EVERY[name]}
    assert MPIComm().size > 1
    distributed = run(config, comm=MPIComm())
    if distributed.metrics:
        serial = run({**config, "out": str(tmp_path / "serial.h5")}, comm=SerialComm())
        assert distributed.status == serial.status != "failed", serial.message
        for key in ("loss", "prox_grad_norm", "dist_to_opt", "nnz", "bits_up", "bits_down", "exchanges"):
            np.testing.assert_allclose(distributed.metrics[key], serial.metrics[key], rtol=1e-12, atol=0, err_msg=key)
        if name == "proxskip":
            np.testing.assert_array_equal(distributed.metrics["local_steps"], serial.metrics["local_steps"])
        np.testing.assert_allclose(distributed.x, serial.x, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["proxskip", "sppm-nice", "sppm-auto"])
def test_a_suspended_run_resumes_to_the_uninterrupted_trace(name, tmp_path, monkeypatch):
    """ProxSkip's control variates and last local iterates, SPPM's round-keyed cohorts and its auto step (set again
    from the checkpoint's x*) survive a checkpoint."""
    from mpifed import checkpoint, trace
    from test_checkpoint import resume_equals_uninterrupted

    config = {**BASE, "rounds": 8, "reference_iterations": 5, "l1": LAM1, **EVERY[name]}
    full, part = resume_equals_uninterrupted(config, tmp_path, monkeypatch)
    assert not checkpoint.path_for(part).exists() and trace.load(part).attrs["status"] == full.status
