"""LCD1/2/3 and BPM / bpm-lin against closed forms, scipy and plain numpy re-implementations written here from the
update rules; bits and exchanges; rank invariance; bad input."""
import math

import numpy as np
import pytest
import scipy.optimize

from rank_invariance import assert_same, batches, distributed_and_serial
from mpifed.algorithms.first_order import lcd
from mpifed.algorithms.proximal import balls
from mpifed.backend import NUMPY
from mpifed.comm import SerialComm
from mpifed.data import synthetic_clients
from mpifed.driver import iterate, run
from mpifed.errors import MpifedError
from mpifed.federation import Federation
from mpifed.problems import LeastSquaresBlock

N_CLIENTS, M, D, LAM = 8, 40, 6, 1e-3
SMALL = {"clients": N_CLIENTS, "samples_per_client": M, "features": D, "quiet": True, "tol": 0.0}


def data(condition=None):
    A, b = synthetic_clients(range(N_CLIENTS), M, D, seed=0, condition=condition)
    return A.toarray(), b


def logistic(A, b, lam=LAM):
    f = lambda x: np.mean(np.logaddexp(0.0, -b * (A @ x))) + 0.5 * lam * x @ x  # noqa: E731
    g = lambda x: A.T @ (-b / (1.0 + np.exp(b * (A @ x)))) / len(b) + lam * x  # noqa: E731
    return f, g


def ridge(A, b, lam=LAM):
    f = lambda x: 0.5 * np.mean((A @ x - b) ** 2) + 0.5 * lam * x @ x  # noqa: E731
    g = lambda x: A.T @ (A @ x - b) / len(b) + lam * x  # noqa: E731
    return f, g, A.T @ A / len(b) + lam * np.eye(A.shape[1])


def go(tmp_path, **values):
    out = run({**SMALL, "out": str(tmp_path / "t.h5"), "overwrite": True, **values})
    assert out.status in ("completed", "converged"), out.message
    return out


def iterates(tmp_path, **values):
    """x^0..x^R of a run, by reruns with rounds = 0..R (the trace keeps only the final x)."""
    rounds = values.pop("rounds")
    return [go(tmp_path, rounds=k, **values).x for k in range(rounds + 1)]


# ------------------------------------------------------------------------------------------------------ LCD
def test_lcd_on_consistent_least_squares_is_one_newton_step():
    """b = A x_true, lam = 0, f* = 0: LCD1 lands on x_true in one step (C = A^T A / N, L = 0: Newton); LCD2 and
    LCD3 (Q_0 = {x_true}) too, up to the rounding of f(x^0) - f*, and exactly after a second step."""
    A, _ = data()
    x_true = np.random.default_rng(1).standard_normal(D)
    b = A @ x_true
    offsets = np.arange(N_CLIENTS + 1) * M
    block = LeastSquaresBlock(A, b, offsets, 0.0, m_max=M)
    fed = Federation(0, SerialComm(), NUMPY, block, np.arange(N_CLIENTS), N_CLIENTS, D, "test", m_min=M, m_max=M)
    for variant, rounds, rtol in [(1, 1, 1e-10), (2, 1, 1e-6), (3, 1, 1e-6), (2, 2, 1e-10), (3, 2, 1e-10)]:
        params = lcd.Params(variant, f_star=0.0, exact=True, lam=0.0, bound=1.0)
        x, status, message, _ = iterate(fed, lcd, params, np.zeros(D), rounds, 0.0)
        assert status in ("completed", "converged"), message
        np.testing.assert_allclose(x, x_true, rtol=rtol, err_msg=f"lcd{variant}, {rounds} step(s)")


@pytest.mark.parametrize("problem", ["logistic", "least-squares"])
def test_lcd_with_zero_curvature_is_gd_and_polyak_gd(problem, tmp_path):
    """C = 0: LCD1 is GD (step 1/L), LCD2 is GD with the Polyak step x - (P(x) - f*) g / ||g||^2 (plain numpy)."""
    gd = go(tmp_path, problem=problem, algorithm="gd", rounds=6)
    lcd1 = go(tmp_path, problem=problem, algorithm="lcd1", local_curvature=False, rounds=6)
    np.testing.assert_allclose(lcd1.x, gd.x, rtol=1e-12)
    np.testing.assert_allclose(lcd1.metrics["grad_norm"], gd.metrics["grad_norm"], rtol=1e-12)
    A, b = data()
    f, g = logistic(A, b) if problem == "logistic" else ridge(A, b)[:2]
    f_star = gd.metrics["loss"][0] - gd.metrics["f_gap"][0]
    x = np.zeros(D)
    for _ in range(5):
        x = x - (f(x) - f_star) * g(x) / (g(x) @ g(x))
    polyak = go(tmp_path, problem=problem, algorithm="lcd2", local_curvature=False, rounds=5)
    np.testing.assert_allclose(polyak.x, x, rtol=1e-9)


def test_lcd1_on_logistic_equals_gd(tmp_path):
    """Logistic: C = lam I and L = lambda_max(G)/4, so (C + L I)^{-1} = 1 / (lam + lambda_max(G)/4): GD's step."""
    gd = go(tmp_path, algorithm="gd", rounds=5)
    lcd1 = go(tmp_path, algorithm="lcd1", rounds=5)
    np.testing.assert_allclose(lcd1.x, gd.x, rtol=1e-12)


def test_lcd2_and_lcd3_match_plain_numpy_on_ill_conditioned_ridge(tmp_path):
    """kappa = 1e3 ridge, f* given 1e-3 below the true one (so the steps are not the one-step limit):
    LCD2 = projection onto Q (mu by scipy's brentq on the direct formula), LCD3 = x - s C^{-1} g (closed form)."""
    A, b = data(condition=1e3)
    f, g, C = ridge(A, b)
    x_star = np.linalg.solve(C, A.T @ b / len(b))
    f_star = f(x_star) - 1e-3
    for variant in (2, 3):
        x = np.zeros(D)
        for _ in range(3):
            gx, gap = g(x), f(x) - f_star
            if variant == 3:
                Cg = np.linalg.solve(C, gx)
                x = x - (1.0 - math.sqrt(max(1.0 - 2.0 * gap / (gx @ Cg), 0.0))) * Cg
                continue
            d = lambda mu: -mu * np.linalg.solve(np.eye(D) + mu * C, gx)  # noqa: E731
            q = lambda mu: gap + gx @ d(mu) + 0.5 * d(mu) @ C @ d(mu)  # noqa: E731
            hi = 1.0
            while q(hi) > 0 and hi < 1e12:
                hi *= 2.0
            x = x + d(scipy.optimize.brentq(q, 0.0, hi, xtol=1e-14, rtol=1e-15) if q(hi) <= 0 else hi)
        out = go(tmp_path, problem="least-squares", condition=1e3, algorithm=f"lcd{variant}", f_star=f_star, rounds=3)
        np.testing.assert_allclose(out.x, x, rtol=1e-7, err_msg=f"lcd{variant}")


def test_lcd_bits_and_exchanges(tmp_path):
    """One exchange per round; up d floats (LCD1) or d + 1 (LCD2, LCD3: f_i too), down d; least squares pays its
    A_i^T A_i / m_i once at setup (counted, row 0)."""
    T = D * (D + 1) // 2
    for algorithm, up in [("lcd1", D), ("lcd2", D + 1), ("lcd3", D + 1)]:
        out = go(tmp_path, problem="least-squares", algorithm=algorithm, rounds=3)
        k = np.arange(len(out.metrics["round"]))
        np.testing.assert_array_equal(out.metrics["bits_up"], 32 * T + 32 * up * k)
        np.testing.assert_array_equal(out.metrics["bits_down"], 32 * D * k)
        np.testing.assert_array_equal(out.metrics["exchanges"], 1 + k)  # the setup upload is an exchange
    out = go(tmp_path, algorithm="lcd2", rounds=3)  # logistic: no counted setup
    np.testing.assert_array_equal(out.metrics["bits_up"], 32 * (D + 1) * np.arange(4))
    np.testing.assert_array_equal(out.metrics["exchanges"], np.arange(4))


def test_polyak_step_solves_the_projection():
    """polyak_step against the direct KKT form d = -mu (I + mu C)^{-1} g with model(d) = f* (random PSD C, some
    eigenvalues 0), and the limits: gap <= 0 stays, C = 0 is the Polyak step."""
    rng = np.random.default_rng(5)
    B = rng.standard_normal((D, 3))
    C = B @ B.T
    w, V = np.linalg.eigh(C)
    w = np.maximum(w, 0.0)
    g = rng.standard_normal(D)
    gap = 0.3
    d = -V @ lcd.polyak_step(V.T @ g, w, gap)
    assert abs(gap + g @ d + 0.5 * d @ C @ d) < 1e-12
    r = g + C @ d
    mu = -(d @ r) / (r @ r)  # from d + mu (g + C d) = 0
    np.testing.assert_allclose(d, -mu * np.linalg.solve(np.eye(D) + mu * C, g), rtol=1e-9)
    assert not lcd.polyak_step(V.T @ g, w, -1.0).any()
    np.testing.assert_allclose(lcd.polyak_step(g, np.zeros(D), gap), gap * g / (g @ g), rtol=1e-14)


# ------------------------------------------------------------------------------------------------------ BPM
@pytest.mark.parametrize("problem", ["logistic", "least-squares"])
def test_bpm_steps_have_length_t_and_the_distance_falls_by_t_squared(problem, tmp_path):
    """l2 ball, t = 0.3: every step but the last has length t, ||x^k - x*||^2 falls by at least t^2, and the
    number of steps is at most ceil(||x^0 - x*||^2 / t^2) (Gruntkowska et al. 2025)."""
    t = 0.3
    out = go(tmp_path, problem=problem, algorithm="bpm", radius=t, rounds=200, tol=1e-13)
    assert out.status == "converged"
    lengths = out.metrics["step_length"][:-1]  # the last row takes no step
    np.testing.assert_allclose(lengths[:-1], t, rtol=1e-12)
    assert lengths[-1] <= t * (1 + 1e-12)
    dist2 = out.metrics["dist_to_opt"] ** 2
    assert np.all((dist2[:-1] - dist2[1:])[:-1] >= t * t * (1 - 1e-9))  # every step but the final one
    assert out.rounds <= math.ceil(dist2[0] / t ** 2)


def _scipy_brox(f, g, x, t, norm):
    """argmin_{||z - x|| <= t} f(z) by SLSQP (l2, l1 as a smooth split z = x + u - v) or L-BFGS-B (linf box)."""
    if norm == "linf":
        res = scipy.optimize.minimize(f, x, jac=g, method="L-BFGS-B", bounds=list(zip(x - t, x + t)),
                                      options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
        return res.x
    if norm == "l2":
        cons = {"type": "ineq", "fun": lambda z: t * t - (z - x) @ (z - x), "jac": lambda z: -2 * (z - x)}
        return scipy.optimize.minimize(f, x, jac=g, method="SLSQP", constraints=[cons],
                                       options={"ftol": 1e-15, "maxiter": 1000}).x
    n = len(x)
    F = lambda uv: f(x + uv[:n] - uv[n:])  # noqa: E731
    G = lambda uv: np.concatenate([g(x + uv[:n] - uv[n:]), -g(x + uv[:n] - uv[n:])])  # noqa: E731
    cons = {"type": "ineq", "fun": lambda uv: t - uv.sum(), "jac": lambda uv: -np.ones(2 * n)}
    uv = scipy.optimize.minimize(F, np.zeros(2 * n), jac=G, method="SLSQP", bounds=[(0, None)] * (2 * n),
                                 constraints=[cons], options={"ftol": 1e-15, "maxiter": 1000}).x
    return x + uv[:n] - uv[n:]


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
@pytest.mark.parametrize("problem", ["logistic", "least-squares"])
def test_bpm_step_is_the_ball_minimiser_of_scipy(problem, norm, tmp_path):
    """x^1 = argmin over the ball around x^0 = 0 of P, against scipy's constrained minimisers on the full data; the
    step has length t in the ball's norm."""
    t = 0.4
    A, b = data()
    f, g = logistic(A, b) if problem == "logistic" else ridge(A, b)[:2]
    out = go(tmp_path, problem=problem, algorithm="bpm", radius=t, ball_norm=norm, rounds=1)
    expected = _scipy_brox(f, g, np.zeros(D), t, norm)
    assert f(out.x) <= f(expected) + 1e-12
    np.testing.assert_allclose(out.x, expected, atol=1e-5)  # SLSQP's own accuracy
    assert abs(balls.norm(out.x, norm) - t) < 1e-12


def test_bpm_bits_and_exchanges(tmp_path):
    """Least squares: the Hessian once at setup, then one exchange of d + 1 floats per outer step. Logistic:
    every inner iteration is one exchange of d + 1 + d(d+1)/2 floats, and the trace's inner_iterations and
    halvings add up to the exchange column."""
    T = D * (D + 1) // 2
    out = go(tmp_path, problem="least-squares", algorithm="bpm", radius=0.3, rounds=3)
    k = np.arange(4)
    np.testing.assert_array_equal(out.metrics["bits_up"], 32 * T + 32 * (D + 1) * k)
    np.testing.assert_array_equal(out.metrics["exchanges"], 1 + k)
    np.testing.assert_array_equal(out.metrics["bits_down"], 32 * D * k)
    out = go(tmp_path, algorithm="bpm", radius=0.3, rounds=3)
    per_round = out.metrics["inner_iterations"][:-1] + out.metrics["halvings"][:-1]
    np.testing.assert_array_equal(np.diff(out.metrics["exchanges"]), per_round)
    np.testing.assert_array_equal(np.diff(out.metrics["bits_up"]), 32 * (D + 1 + T) * per_round)
    assert np.all(out.metrics["inner_iterations"][:-1] >= 2)  # the round's exchange and at least one Newton query


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_bpm_lin_is_the_lmo_step(norm, tmp_path):
    """x^{k+1} = x^k + t_k LMO(grad P(x^k)), t_k = t / (1 + c k), re-implemented with numpy on logistic."""
    t, c = 0.2, 0.5
    A, b = data()
    _, g = logistic(A, b)
    x = np.zeros(D)
    for k in range(4):
        gx = g(x)
        if norm == "l2":
            step = -gx / np.linalg.norm(gx)
        elif norm == "linf":
            step = -np.sign(gx)
        else:
            step = np.zeros(D)
            i = np.argmax(np.abs(gx))
            step[i] = -np.sign(gx[i])
        x = x + t / (1 + c * k) * step
    out = go(tmp_path, algorithm="bpm-lin", radius=t, ball_norm=norm, step_decay=c, rounds=4)
    np.testing.assert_allclose(out.x, x, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(out.metrics["bits_up"], 32 * D * np.arange(5))


def test_l1_projection_against_bisection():
    """Pi onto the l1 ball (sort-based) against soft-thresholding at the theta found by brentq."""
    rng = np.random.default_rng(2)
    for _ in range(5):
        s = rng.standard_normal(D) * 3
        theta = scipy.optimize.brentq(lambda th: np.maximum(np.abs(s) - th, 0).sum() - 1.0, 0.0, np.abs(s).max(),
                                      xtol=1e-15)
        np.testing.assert_allclose(balls.project(s, 1.0, "l1"), np.sign(s) * np.maximum(np.abs(s) - theta, 0),
                                   atol=1e-13)
    np.testing.assert_array_equal(balls.project(s / 100, 1.0, "l1"), s / 100)  # inside: unchanged


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("values, words", [
    ({"algorithm": "bpm", "radius": 0.0}, "--radius = 0.0 is out of range; valid: a radius t > 0"),
    ({"algorithm": "bpm", "radius": -1.0}, "--radius = -1.0 is out of range"),
    ({"algorithm": "bpm", "ball_norm": "l3"}, "valid: l2, linf, l1"),
    ({"algorithm": "lcd2", "reference_iterations": 0}, "lcd2 needs f* = min P"),
    ({"algorithm": "lcd3", "reference_iterations": 0}, "give --f-star"),
    ({"algorithm": "lcd1", "f_star": 0.1}, "--f-star does not apply to lcd1"),
    ({"algorithm": "lcd3", "local_curvature": False}, "lcd3 steps with C^{-1}"),
    ({"algorithm": "gd", "radius": 1.0}, "--radius does not apply"),
    ({"algorithm": "lcd3", "lam": 0.0}, "lcd3 needs a positive definite C; on --problem logistic C = lam I"),
])
def test_bad_input_is_one_line_before_round_zero(values, words, tmp_path):
    with pytest.raises(MpifedError) as err:
        run({**SMALL, "rounds": 3, "out": str(tmp_path / "e.h5"), **values})
    assert words in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------- ranks
CASES = {
    "lcd1-ls": {"problem": "least-squares", "algorithm": "lcd1"},
    "lcd2-ls": {"problem": "least-squares", "algorithm": "lcd2", "condition": 100.0},
    "lcd3-logistic": {"algorithm": "lcd3"},
    "lcd2-polyak": {"algorithm": "lcd2", "local_curvature": False},
    "bpm-logistic": {"algorithm": "bpm", "radius": 0.3},
    "bpm-ls-linf": {"problem": "least-squares", "algorithm": "bpm", "radius": 0.2, "ball_norm": "linf"},
    "bpm-lin-l1": {"algorithm": "bpm-lin", "radius": 0.1, "ball_norm": "l1"},
    "gd-ls": {"problem": "least-squares", "algorithm": "gd"},  # the problem itself, under existing methods
    "fednl-ls": {"problem": "least-squares", "algorithm": "fednl", "condition": 10.0, "compressor": "topk:k=d"},
    "nl1-ls": {"problem": "least-squares", "algorithm": "nl1"},
}


@pytest.mark.mpi
@pytest.mark.parametrize("names", batches(CASES))
def test_distributed_equals_serial(names, tmp_path):
    """The trace at 2 and 4 ranks equals the serial one (clients 0..7 spread over the ranks)."""
    pairs = distributed_and_serial({name: {**SMALL, "rounds": 6, "reference_iterations": 3, **CASES[name]}
                                    for name in names}, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "dist_to_opt", "bits_up", "bits_down", "exchanges"))
