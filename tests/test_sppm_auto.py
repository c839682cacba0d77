"""SPPM's ``--step-size auto`` (the SPPM-AS theorem's step for the run's target): mu_AS and sigma^2 against a brute-force
enumeration of every cohort of a small federation, gamma against a root of the neighbourhood equation (scipy's
brentq), full sampling as the exact proximal point method at the auto step, and a nice-sampling run that settles in
the neighbourhood the theorem predicts, a zero mu_AS refused before round 0. In test_proximal.py: the one-line errors
of bad ``auto`` input, and the same trace at 1, 2 and 4 ranks (``sppm-auto``, ``sppm-auto-ridge``)."""
import dataclasses
import itertools
import math

import numpy as np
import pytest
import scipy.optimize

from mpifed import config as cfgmod
from mpifed import driver, tri
from mpifed.algorithms.proximal import sppm
from mpifed.comm import SerialComm
from mpifed.errors import MpifedError
from mpifed.federation import build_federation
from mpifed.plan import resolve


def _setup(**values):
    """(federation, x*, the auto Params after the setup exchange) of a serial run."""
    c = cfgmod.build({"quiet": True, "algorithm": "sppm", "step_size": "auto", "rounds": 10 ** 18, **values})
    fed = build_federation(resolve(c).data, SerialComm())
    prox = driver.composite(fed, c.l1)
    x_star, _ = driver.reference_solution(fed, 20, prox)
    params = sppm.Params.from_options(resolve(c).method, fed)
    return fed, x_star, driver._from_reference(fed, sppm, params, x_star, np.zeros(fed.d))


def _cohorts(spec: str, n: int):
    """Every cohort of the sampling with its probability and weights w_i = 1/(n p_i), written out from the definitions:
    nice: all T-subsets, w = 1/T; block: block C_j (sizes differing by at most one, ids in order) with probability
    |C_j|/n, w = 1/|C_j|; stratified: one client of each block, w_i = |C_j|/n."""
    kind, _, rest = spec.partition(":")
    count = int(rest.split("=")[1]) if rest else None
    if kind == "full":
        return [(1.0, list(range(n)), np.full(n, 1.0 / n))]
    if kind == "nice":
        subsets = list(itertools.combinations(range(n), count))
        return [(1.0 / len(subsets), list(S), np.full(count, 1.0 / count)) for S in subsets]
    strata = [[i for i in range(n) if (i * count) // n == j] for j in range(count)]
    if kind == "block":
        return [(len(C) / n, C, np.full(len(C), 1.0 / len(C))) for C in strata]
    sizes = np.array([len(C) for C in strata])
    return [(1.0 / np.prod(sizes), list(S), sizes / n) for S in itertools.product(*strata)]


def _expected(spec, n, g, mu, eps):
    """(mu_AS, sigma^2 = E||grad f_S(x*) - grad f(x*)||^2, gamma) by enumeration, and gamma as the largest root of
    gamma sigma^2 / (gamma mu_AS^2 + 2 mu_AS) = eps/2 (brentq), at most 1/mu_AS."""
    cohorts = _cohorts(spec, n)
    assert math.isclose(sum(p for p, _, _ in cohorts), 1.0)
    mu_AS = min(float(w @ mu[S]) for _, S, w in cohorts)
    gbar = g.mean(axis=0)
    sigma2 = sum(p * float(np.sum((w @ g[S] - gbar) ** 2)) for p, S, w in cohorts)
    excess = lambda gamma: gamma * sigma2 / (gamma * mu_AS ** 2 + 2 * mu_AS) - eps / 2  # noqa: E731
    cap = 1.0 / mu_AS
    gamma = cap if excess(cap) <= 0 else scipy.optimize.brentq(excess, 0.0, cap, xtol=1e-300, rtol=1e-15)
    return mu_AS, sigma2, gamma


@pytest.mark.parametrize("spec", ["full", "nice:tau=1", "nice:tau=3", "block:b=3", "stratified:b=3"])
@pytest.mark.parametrize("tol", [1e-2, 10.0])
def test_auto_step_equals_the_theorem_by_enumeration_on_ridge(spec, tol):
    """Least squares, 7 clients (blocks of 3, 2, 2): mu_i = lam + lambda_min(hess f_i) from each client's Hessian,
    L = lambda_max of the mean Hessian, eps = (tol / L)^2."""
    lam = 1e-3
    fed, x_star, p = _setup(problem="least-squares", clients=7, samples_per_client=40, lam=lam, tol=tol, sampling=spec)
    _, g, hess = fed.block.derivatives(x_star)
    H = tri.unpack(np.asarray(hess), fed.d)
    mu = np.linalg.eigvalsh(H)[:, 0]
    assert np.all(mu > 2 * lam) and np.ptp(mu) > 0.5 * mu.min()  # the clients' constants differ: the min matters
    L = np.linalg.eigvalsh(H.mean(axis=0))[-1]
    mu_AS, sigma2, gamma = _expected(spec, 7, g, mu, (tol / L) ** 2)
    a = p.auto
    assert a.eps == pytest.approx((tol / L) ** 2, rel=1e-10)
    assert a.mu_AS == pytest.approx(mu_AS, rel=1e-10)
    if spec == "full":
        assert a.sigma2 == 0.0 and a.capped and p.gamma == 1.0 / a.mu_AS
    else:
        assert a.sigma2 == pytest.approx(sigma2, rel=1e-9) and sigma2 > 0
    assert p.gamma == pytest.approx(gamma, rel=1e-9)
    assert a.capped == (tol == 10.0 or spec == "full")  # tol = 1e-2: the neighbourhood decides; 10: the cap


@pytest.mark.parametrize("spec", ["nice:tau=2", "stratified:b=2"])
def test_auto_step_with_the_l1_term_takes_the_variance_form(spec):
    """L1-logistic: mu_i = lam, sigma^2 = E||grad f_S(x*) - grad f(x*)||^2 with grad f(x*) != 0 (= -lam1 s*),
    eps = (tol / (2L))^2 with GD's L = lam + lambda_max(G)/4."""
    lam, tol = 1e-2, 1e-3
    fed, x_star, p = _setup(clients=6, samples_per_client=30, lam=lam, l1=0.05, tol=tol, sampling=spec)
    _, g, _ = fed.block.derivatives(x_star, hessian=False)
    assert np.linalg.norm(g.mean(axis=0)) > 1e-3  # the smooth gradient at x* is far from 0
    G = tri.unpack(np.asarray(fed.block.gram()), fed.d).mean(axis=0)
    L = lam + np.linalg.eigvalsh(G)[-1] / 4
    mu_AS, sigma2, gamma = _expected(spec, 6, g, np.full(6, lam), (tol / (2 * L)) ** 2)
    assert (p.auto.mu_AS, p.auto.sigma2, p.gamma) == pytest.approx((mu_AS, sigma2, gamma), rel=1e-9)
    assert p.auto.mu_AS == pytest.approx(lam, rel=1e-14)


def test_full_sampling_at_the_auto_step_is_the_exact_proximal_point_method(tmp_path):
    """Ridge, full sampling: sigma^2 = 0, gamma = 1/mu_AS (mu_AS = mean_i mu_i); with an exact inner solve
    x_{t+1} - x* = (I + gamma H)^{-1} (x_t - x*), H the Hessian of P, so ||x_t - x*|| follows that recursion and contracts
    by 1/(1 + gamma mu_AS) at least."""
    values = {"problem": "least-squares", "clients": 8, "samples_per_client": 40, "lam": 0.01, "tol": 1e-8}
    fed, x_star, p = _setup(**values)
    assert p.auto.capped and p.gamma == 1.0 / p.auto.mu_AS
    out = driver.run({"quiet": True, "algorithm": "sppm", "step_size": "auto", "inner_rounds": 200, "rounds": 5,
                      "out": str(tmp_path / "auto.h5"), **values, "tol": 1e-8}, comm=SerialComm())
    H = tri.unpack(np.asarray(fed.block.derivatives(x_star)[2]), fed.d).mean(axis=0)
    e, expected = -x_star, []
    for _ in range(6):
        expected.append(np.linalg.norm(e))
        e = np.linalg.solve(np.eye(fed.d) + p.gamma * H, e)
    dist = out.metrics["dist_to_opt"]
    np.testing.assert_allclose(dist, expected[:len(dist)], rtol=1e-7)
    assert np.all(dist[1:] <= dist[:-1] / (1 + p.gamma * p.auto.mu_AS))


def test_nice_sampling_at_the_auto_step_settles_in_the_predicted_neighbourhood():
    """Ridge with lam = 1 (every f_S nearly lam-strongly convex: the theorem's bound is nearly tight), nice:tau=4 of 16,
    tol chosen so that gamma mu_AS = 2/9: after 100 rounds the mean of ||x_t - x*||^2 over the last 50 rounds and 4
    cohort seeds is within [0.6, 1.2] of gamma sigma^2 / (gamma mu_AS^2 + 2 mu_AS) = eps/2 (measured: 0.91). A step
    from a sigma^2 off by 2 in either direction lands outside."""
    values = {"problem": "least-squares", "clients": 16, "samples_per_client": 50, "lam": 1.0, "sampling": "nice:tau=4",
              "inner_rounds": 8}
    fed, x_star, p = _setup(**values, tol=1.0)
    L = 1.0 / math.sqrt(p.auto.eps)
    fed, x_star, p = _setup(**values, tol=L * math.sqrt(0.2) * math.sqrt(p.auto.sigma2) / p.auto.mu_AS)
    a = p.auto
    assert not a.capped and p.gamma * a.mu_AS == pytest.approx(2 / 9, rel=1e-9)
    bound = p.gamma * a.sigma2 / (p.gamma * a.mu_AS ** 2 + 2 * a.mu_AS)
    assert bound == pytest.approx(a.eps / 2, rel=1e-9)
    settled = []
    for seed in range(4):
        dist = []
        driver.iterate(fed, sppm, dataclasses.replace(p, seed=seed), np.zeros(fed.d), 100, 0.0,
                       lambda k, agg, x, timing, bits: dist.append(np.sum((x - x_star) ** 2)))
        assert dist[0] > 5 * bound
        settled.append(np.mean(dist[50:]))
    assert 0.6 <= np.mean(settled) / bound <= 1.2, np.array(settled) / bound


def test_auto_refuses_a_zero_mu_AS_before_round_0(tmp_path):
    """Ridge with lam = 0 and clients of 10 rows in d = 20: every client's Gram matrix is singular, mu_AS = 0."""
    out = tmp_path / "zero.h5"
    with pytest.raises(MpifedError, match="needs mu_AS > 0") as err:
        driver.run({"quiet": True, "algorithm": "sppm", "step_size": "auto", "tol": 1e-6, "problem": "least-squares",
                    "lam": 0.0, "samples_per_client": 10, "clients": 8, "sampling": "nice:tau=2",
                    "out": str(out)}, comm=SerialComm())
    assert "\n" not in str(err.value) and not out.exists()


def test_the_command_line_takes_auto_and_info_prints_the_step(tmp_path, capsys):
    """``mpifed run --step-size auto``: the console's first line and ``mpifed info``'s method line give gamma, mu_AS
    and sigma^2, the numbers of the setup (the trace's method attribute)."""
    from mpifed import cli, load_trace

    out = tmp_path / "auto.h5"
    assert cli.main(["run", "--algorithm", "sppm", "--step-size", "auto", "--tol", "1e-3", "--sampling", "nice:tau=4",
                     "--lam", "1", "--rounds", "2", "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("sppm: --step-size auto: gamma = ") and "mu_AS = 1.000000e+00" in first
    method = load_trace(out).attrs["method"]
    assert "auto=Auto(tol=0.001" in method and "sigma2=" in method
    assert cli.main(["info", str(out)]) == 0
    assert f"method     {method}" in capsys.readouterr().out


def test_a_budget_too_short_for_the_target_takes_the_step_with_the_least_bound_after_the_budget(tmp_path):
    """nice:tau=2 of 8 at tol 1e-2: --tol's step needs 2385 rounds, more than 50 (the count checked against the
    contraction term directly), so auto takes the step whose theorem bound after 50 rounds is least (checked against a
    grid of 20,001 log-spaced steps up to 1/mu_AS); a resume with another --rounds is refused in one line."""
    values = {"problem": "least-squares", "clients": 8, "samples_per_client": 30, "lam": 0.1, "sampling": "nice:tau=2"}
    fed, x_star, p = _setup(**values, tol=1e-2)
    a, dist0 = p.auto, float(np.sum(x_star ** 2))
    t = sppm.rounds_to_target(p.gamma, a.mu_AS, dist0, a.eps)
    term = lambda k: (1 + p.gamma * a.mu_AS) ** (-2 * k) * dist0  # noqa: E731
    assert a.rule == "target" and t > 50 and term(t) <= a.eps / 2 < term(t - 1)
    _, _, short = _setup(**values, tol=1e-2, rounds=50)
    assert short.auto.rule == "budget" and short.gamma > p.gamma
    grid = np.exp(np.linspace(math.log(1 / a.mu_AS) - 40, math.log(1 / a.mu_AS), 20001))
    bounds = [sppm.theorem_bound(g, 50, a.mu_AS, a.sigma2, dist0) for g in grid]
    assert sppm.theorem_bound(short.gamma, 50, a.mu_AS, a.sigma2, dist0) <= min(bounds) * (1 + 1e-9)
    assert short.gamma == pytest.approx(grid[int(np.argmin(bounds))], rel=2e-3)


def test_a_resume_that_changes_the_auto_step_is_refused(tmp_path, monkeypatch):
    """The budget's step depends on --rounds: a run suspended at round 3 resumes with its own --rounds, and is refused
    in one line with another (the step would change half-way)."""
    from test_checkpoint import signal_at_round

    out = tmp_path / "auto.h5"
    run = {"quiet": True, "algorithm": "sppm", "step_size": "auto", "tol": 1e-6, "rounds": 50, "problem": "least-squares",
           "clients": 8, "samples_per_client": 30, "lam": 0.1, "sampling": "nice:tau=2", "out": str(out)}
    signal_at_round(monkeypatch, 3)
    assert driver.run(run, comm=SerialComm()).status == "suspended"
    monkeypatch.undo()
    with pytest.raises(MpifedError, match="this resume changes the method's parameters") as err:
        driver.run({"rounds": 60}, comm=SerialComm(), resume=out)
    assert "\n" not in str(err.value)
    assert driver.run({}, comm=SerialComm(), resume=out).status == "completed"


def test_auto_refuses_a_budget_in_which_the_theorem_promises_no_progress():
    """Ridge with lam = 1e-3 and cohorts of 1 of 8: sigma^2 / (3 mu_AS^2) far above ||x0 - x*||^2, so after 5 rounds every
    step's bound is at least ||x0 - x*||^2 (checked on a grid here); refused in one line before round 0."""
    values = {"problem": "least-squares", "clients": 8, "samples_per_client": 30, "lam": 1e-3, "sampling": "nice:tau=1"}
    _, x_star, p = _setup(**values, tol=1e-6)
    a, dist0 = p.auto, float(np.sum(x_star ** 2))
    grid = np.exp(np.linspace(math.log(1 / a.mu_AS) - 60, math.log(1 / a.mu_AS), 2001))
    assert min(sppm.theorem_bound(g, 5, a.mu_AS, a.sigma2, dist0) for g in grid) >= dist0 * (1 - 1e-9)
    with pytest.raises(MpifedError, match="promises no progress in --rounds 5") as err:
        _setup(**values, tol=1e-6, rounds=5)
    assert "\n" not in str(err.value)
