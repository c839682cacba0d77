"""Neural-network federated methods (FedAvg, LocalNewton-FOOF, FedPM-FOOF, FedRCO) against independent oracles.

Oracles: a loop of single-client forward/backward passes and central finite differences for the batched
per-client model; ``numpy.linalg.solve`` / ``inv`` and a dense EMA recurrence for the factor storage of
:mod:`mpifed.problems.nn.factors`; plain re-implementations (one client at a time, dense per-layer matrices from
:mod:`mpifed.problems.nn.curvature`) of each method on the same mini-batches, compared with ``driver.run``.
All runs are small (mnist-synthetic, 3-4 clients, batch 8, 2-4 rounds).
"""

import h5py
import numpy as np
import pytest

from rank_invariance import distributed_and_serial
from mpifed import config as cfgmod
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError, MpifedError
from mpifed.problems.nn import build_model
from mpifed.problems.nn.curvature import foof_factor, kfac_factors, kfac_inverses
from mpifed.problems.nn.factors import Factor, damped_solve, rows_of
from mpifed.federation import build_federation
from mpifed.plan import resolve

CNN = "cnn:conv=2-3,dense=6-5"   # 28x28 -> 26x26x2 -> 13x13x2 -> 11x11x3 -> 363 -> 6 -> 5 -> 10 (2,466 parameters)
MLP = "mlp:hidden=16"


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


# ------------------------------------------------------------------------------ 1. batched per-client model
@pytest.mark.parametrize("spec", [MLP, CNN, "softmax"])
def test_batched_clients_match_single_client_loop_and_finite_differences(spec):
    m = build_model(spec, (28, 28), 10)
    r = np.random.default_rng(5)
    n, b = 3, 4
    theta = np.stack([m.init(s) + 0.05 * r.standard_normal(m.n_params) for s in range(n)])
    X = r.standard_normal((n, b, 28, 28))
    y = r.integers(0, 10, (n, b))
    loss, grad, stats = m.loss_grad(theta, X, y, np, stats=True)
    assert loss.shape == (n,) and grad.shape == (n, m.n_params)
    for i in range(n):
        li, gi, sti = m.loss_grad(theta[i], X[i], y[i], stats=True)
        np.testing.assert_allclose(loss[i], li, rtol=1e-12)
        np.testing.assert_allclose(grad[i], gi, rtol=1e-10, atol=1e-13)
        for st, s1 in zip(stats, sti):
            assert (st.name, st.kind) == (s1.name, s1.kind)
            np.testing.assert_allclose(st.a[i], s1.a, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(st.g[i], s1.g, rtol=1e-10, atol=1e-14)
    # Central differences on the first weight and the bias of every layer, for client 1 only: the other
    # clients' losses must not move (each client has its own weights).
    h, i = 1e-6, 1
    coords = [int(lo) for lo in m.offsets[:-1]] + [int(hi) - 1 for hi in m.offsets[1:]]
    for j in coords:
        tp, tm = theta.copy(), theta.copy()
        tp[i, j] += h
        tm[i, j] -= h
        lp, lm = m.loss_grad(tp, X, y, np)[0], m.loss_grad(tm, X, y, np)[0]
        np.testing.assert_allclose((lp[i] - lm[i]) / (2 * h), grad[i, j], rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(np.delete(lp, i), np.delete(loss, i))


# ----------------------------------------------------------------------------------------- 2. factors
@pytest.mark.parametrize("R,D", [(4, 9), (12, 9)])   # Woodbury branch (R < D) and the dense one
def test_damped_solve_matches_dense_solve(R, D):
    r = np.random.default_rng(R)
    n, q, c = 3, 2, 0.07
    U, M = r.standard_normal((n, R, D)), r.standard_normal((n, D, q))
    out = damped_solve(U, M, c, np)
    for i in range(n):
        np.testing.assert_allclose(out[i], np.linalg.solve(c * np.eye(D) + U[i].T @ U[i], M[i]), rtol=1e-10)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("alpha,R,D,form", [(0.5, 2, 120, "rows"), (0.3, 3, 5, "dense"), (1.0, 3, 7, "rows")])
def test_factor_ema_inverse_and_reset_match_dense_recurrence(alpha, R, D, form):
    r = np.random.default_rng(7)
    n = 3
    f = Factor.for_layer(n, R, D, alpha, np)
    assert (f.rows is not None) == (form == "rows")
    dense = [None] * n                     # oracle: A_k = alpha S_k + (1 - alpha) A_{k-1}, A = S when fresh
    fresh = np.ones(n, bool)
    # steps: (clients updated, clients made fresh before the step: a reset in the middle)
    plan = [([0, 1, 2], []), ([0, 1, 2], []), ([0, 2], []), ([0, 1, 2], [1]), ([1, 2], []), ([0, 1, 2], [])]
    for who, reset in plan:
        fresh[reset] = True
        idx = np.array(who)
        U = r.standard_normal((len(who), R, D))
        f.update(idx, U, alpha, fresh[idx], np)
        for u, i in zip(U, who):
            S = u.T @ u
            dense[i] = S if fresh[i] else alpha * S + (1 - alpha) * dense[i]
        fresh[idx] = False
    rows = f.weighted_rows(np.arange(n), np) if f.rows is not None else None
    got = rows.transpose(0, 2, 1) @ rows if rows is not None else f.dense
    for i in range(n):
        assert _rel(got[i], dense[i]) < 1e-12
        np.testing.assert_allclose(f.trace(np.array([i]), np)[0], np.trace(dense[i]), rtol=1e-12)
    c = np.array([0.3, 1.1])
    idx = np.array([2, 0])
    M = r.standard_normal((2, D, 4))
    out = f.inverse(idx, c, np).left(M)
    for j, i in enumerate(idx):
        assert _rel(out[j], np.linalg.solve(c[j] * np.eye(D) + dense[i], M[j])) < 1e-10
    # A factor that overflowed: its inverse is NaN (no LinAlgError, no silent 0), and a fresh update replaces it.
    if f.rows is not None:
        f.rows[1] = np.inf
    else:
        f.dense[1] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        inv = f.inverse(np.array([0, 1]), np.array([0.5, 0.5]), np)
        left = inv.left(np.ones((2, D, 1)))
        assert np.all(np.isfinite(left[0])) and np.all(np.isnan(left[1]))
        assert np.all(np.isnan(f.inverse(np.array([0]), np.array([np.inf]), np).left(np.ones((1, D, 1)))))
        U = r.standard_normal((1, R, D))
        f.update(np.array([1]), U, alpha, np.array([True]), np)
    if f.rows is not None:
        rows = f.weighted_rows(np.array([1]), np)[0]
        got = rows.T @ rows
    else:
        got = f.dense[1]
    assert _rel(got, U[0].T @ U[0]) < 1e-12


def test_stored_inverses_of_one_live_slot_match_the_dense_solve():
    """Right after a start only one ring slot holds rows: the stored inverses (put, take of all clients or of some)
    solve with those rows alone and give the dense damped solve."""
    from mpifed.problems.nn.factors import Inverse

    r, n, R, D = np.random.default_rng(3), 3, 2, 120
    f = Factor.for_layer(n, R, D, 0.5, np)
    U = r.standard_normal((n, R, D))
    f.update(np.arange(n), U, 0.5, np.ones(n, bool), np)
    store = Inverse.empty_like(f, n, np)
    c = np.array([0.3, 1.1, 0.7])
    store.put(np.arange(n), f.inverse(np.arange(n), c, np))
    assert store.take(np.arange(n)) is store and store.live.sum() == n
    M = r.standard_normal((n, D, 4))
    for sel in (np.arange(n), np.array([2, 0])):
        out = store.take(sel).left(M[sel])
        for j, i in enumerate(sel):
            assert _rel(out[j], np.linalg.solve(c[i] * np.eye(D) + U[i].T @ U[i], M[i])) < 1e-10


def test_a_singular_indefinite_or_overflowed_factor_gives_nan_for_that_client_only():
    """numpy refuses a whole batch when one matrix is singular, and inverts an indefinite or overflowed one in
    silence; the damped inverse instead returns NaN for each such client (its step is NaN, which FedRCO turns into
    a reset) and, bit for bit, numpy's inverse of each of the others."""
    from mpifed.problems.nn.factors import _inv

    rng = np.random.default_rng(0)
    c = 0.1
    G = rng.standard_normal((9, 5, 5))
    K = G @ G.transpose(0, 2, 1) + c * np.eye(5)                    # C + c I with C a Gram matrix: healthy
    w, V = np.linalg.eigh(K[1])
    K[1] = K[1] - w[0] * np.outer(V[:, 0], V[:, 0])                  # singular: an eigenvalue 0 after damping
    K[2] = K[2] - (w[0] + 1.0) * np.outer(V[:, 0], V[:, 0])          # indefinite: an eigenvalue -1 after damping
    K[3] = 1e300 * (G[3] @ G[3].T) + c * np.eye(5)                   # overflowed but finite: the shift is lost
    K[4] = 1e300                                                     # overflowed but finite: rank one
    K[5, 0, 0] = np.inf
    w6, V6 = np.linalg.eigh(K[6])
    K[6] = K[6] - (w6[0] - 0.1 * c) * np.outer(V6[:, 0], V6[:, 0])   # K is PD, but C = K - c I has eigenvalue -0.9 c
    c3 = np.full((9, 1, 1), c)
    c3[7] = 0.0                                                      # a zero shift (pi = 0) is refused too
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.inv(K)
    out = _inv(np, K, c3)
    for i in (0, 8):
        assert out[i].tobytes() == np.linalg.inv(K[i]).tobytes()
    assert np.isnan(out[1:8]).all()


def test_rows_of_gives_foof_and_kfac_factors():
    m = build_model(CNN, (28, 28), 10)
    r = np.random.default_rng(2)
    theta = np.stack([m.init(s) for s in range(2)])
    X, y = r.standard_normal((2, 3, 28, 28)), r.integers(0, 10, (2, 3))
    _, _, stats = m.loss_grad(theta, X, y, np, stats=True)
    _, _, st1 = m.loss_grad(theta[1], X[1], y[1], stats=True)
    for st, s1 in zip(stats, st1):
        A, G = kfac_factors(s1)
        Ua, Ug = rows_of(st, "a")[1], rows_of(st, "g")[1]
        np.testing.assert_allclose(Ua.T @ Ua, A, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(Ua.T @ Ua, foof_factor(s1), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(Ug.T @ Ug, G, rtol=1e-10, atol=1e-16)


# ----------------------------------------------------------------------- 3. methods vs re-implementations
BASE = dict(dataset="mnist-synthetic", partition="iid", reference_iterations=0, batch_size=8, local_steps=3,
            lam=0.0, quiet=True, seed=3, overwrite=True)


def _setup(conf):
    fed = build_federation(resolve(cfgmod.build(conf)).data, SerialComm())
    return fed, fed.block, fed.block.model, np.array(fed.x0, dtype=float)


def _batches(fed, t, K):
    s = fed.streams(t)
    assert s.active is None or np.all(s.active)                     # full participation
    return [fed.block.batch(s, k) for k in range(K)]


def _foof_local(m, x, batches, i, eta, eps):
    """K FOOF steps of client i: theta -= eta (A + eps I)^{-1} dW per layer; returns theta and the last A's."""
    th = x.copy()
    for X, y in batches:
        _, g, st = m.loss_grad(th, X[i], y[i], stats=True)
        As = [foof_factor(s) for s in st]
        step = [np.linalg.solve(A + eps * np.eye(len(A)), dW) for A, dW in zip(As, m.views(g))]
        th = th - eta * np.concatenate([s.ravel() for s in step])
    return th, As


def oracle_fedavg(conf):
    fed, block, m, x = _setup(conf)
    eta, K = conf["step_size"], conf["local_steps"]
    for t in range(conf["rounds"]):
        batches = _batches(fed, t, K)
        deltas = []
        for i in range(block.n):
            th = x.copy()
            for X, y in batches:
                th = th - eta * m.loss_grad(th, X[i], y[i])[1]
            deltas.append(th - x)
        x = x + np.mean(deltas, axis=0)
    return x


def oracle_localnewton(conf):
    fed, block, m, x = _setup(conf)
    for t in range(conf["rounds"]):
        batches = _batches(fed, t, conf["local_steps"])
        x = np.mean([_foof_local(m, x, batches, i, conf["step_size"], conf["damping"])[0] for i in range(block.n)],
                    axis=0)
    return x


def oracle_fedpm(conf):
    """Eq. 12 with dense matrices: W_l = (sum_i (A_il + eps I))^{-1} sum_i (A_il + eps I) W_il."""
    fed, block, m, x = _setup(conf)
    eps = conf["damping"]
    for t in range(conf["rounds"]):
        batches = _batches(fed, t, conf["local_steps"])
        local = [_foof_local(m, x, batches, i, conf["step_size"], eps) for i in range(block.n)]
        out = []
        for l in range(len(m.weighted)):
            Ps = [As[l] + eps * np.eye(len(As[l])) for _, As in local]
            rhs = sum(P @ m.views(th)[l] for P, (th, _) in zip(Ps, local))
            out.append(np.linalg.solve(sum(Ps), rhs).ravel())
        x = np.concatenate(out)
    return x


def oracle_fedrco(conf):
    """FedRCO with the monitor off: dense K-FAC factors with EMA, lazy inverse every T_inv steps of a client,
    pi-damped inverses (curvature.kfac_inverses), curvature-preserving or plain aggregation, mean on the server."""
    fed, block, m, x = _setup(conf)
    eta, eps, alpha, T_inv = conf["step_size"], conf["damping"], conf["ema_decay"], conf["inverse_every"]
    curvature = conf["algorithm"] == "fedrco"
    n = block.n
    theta_c = [x.copy() for _ in range(n)]
    A, G, inv = [None] * n, [None] * n, [None] * n
    since = [0] * n
    blended = 0
    for t in range(conf["rounds"]):
        s = fed.streams(t)
        batches = [block.batch(s, k) for k in range(conf["local_steps"])]
        Xe, ye = block.batch(s, "eval", size=conf.get("eval_batch", 128))
        for i in range(n):
            th = x.copy()
            if curvature:
                acc_l = np.mean(m.logits(theta_c[i], Xe[i]).argmax(axis=1) == ye[i])
                acc_g = np.mean(m.logits(x, Xe[i]).argmax(axis=1) == ye[i])
                if acc_l > acc_g:
                    gamma = acc_l / (acc_l + acc_g)
                    th = gamma * x + (1 - gamma) * theta_c[i]
                    blended += 1
            for X, y in batches:
                _, g, st = m.loss_grad(th, X[i], y[i], stats=True)
                new = [kfac_factors(sl) for sl in st]
                if A[i] is None:
                    A[i], G[i] = [a for a, _ in new], [gg for _, gg in new]
                else:
                    A[i] = [alpha * a + (1 - alpha) * o for (a, _), o in zip(new, A[i])]
                    G[i] = [alpha * gg + (1 - alpha) * o for (_, gg), o in zip(new, G[i])]
                if inv[i] is None or since[i] >= T_inv:
                    inv[i] = [kfac_inverses(a, gg, eps) for a, gg in zip(A[i], G[i])]
                    since[i] = 0
                step = [Ai @ dW @ Gi for (Ai, Gi), dW in zip(inv[i], m.views(g))]
                th = th - eta * np.concatenate([v.ravel() for v in step])
                since[i] += 1
            theta_c[i] = th
        x = np.mean(theta_c, axis=0)
    return x, blended


METHOD_CASES = {
    "fedavg": (dict(algorithm="fedavg", step_size=0.05), oracle_fedavg),
    "localnewton": (dict(algorithm="localnewton", step_size=0.01, damping=0.03), oracle_localnewton),
    "fedpm": (dict(algorithm="fedpm", step_size=0.01, damping=0.03), oracle_fedpm),
    "fedrco-ori": (dict(algorithm="fedrco-ori", step_size=0.01, damping=0.03, ema_decay=1.0, inverse_every=1,
                        monitor=False), lambda c: oracle_fedrco(c)[0]),
}


@pytest.mark.parametrize("name", list(METHOD_CASES))
@pytest.mark.parametrize("spec", [CNN])
def test_method_matches_plain_reimplementation(name, spec, tmp_path):
    extra, oracle = METHOD_CASES[name]
    conf = {**BASE, **extra, "model": spec, "clients": 3, "rounds": 2, "out": str(tmp_path / "t.h5")}
    result = run(conf, comm=SerialComm())
    assert result.status == "completed", result.message
    np.testing.assert_allclose(result.x, oracle(conf), rtol=1e-9, atol=1e-12)


def test_fedrco_ema_lazy_inverse_and_curvature_aggregation_match_reimplementation(tmp_path):
    """alpha = 0.5 and T_inv = 2 over 3 rounds of 3 steps (inverses at a client's steps 0, 2, 4, ..., across
    rounds), and the curvature-preserving blend (eq. 12-13) from a 16-sample evaluation batch."""
    conf = {**BASE, "model": CNN, "algorithm": "fedrco", "clients": 3, "rounds": 3, "step_size": 0.01,
            "damping": 0.03, "ema_decay": 0.5, "inverse_every": 2, "monitor": False, "eval_batch": 16,
            "out": str(tmp_path / "t.h5")}
    result = run(conf, comm=SerialComm())
    assert result.status == "completed", result.message
    x, blended = oracle_fedrco(conf)
    np.testing.assert_allclose(result.x, x, rtol=1e-9, atol=1e-12)
    assert blended > 0  # the blend branch was exercised
    # inversions per round: every client inverts at its cumulative steps 0, 2, 4, 6, 8 -> 2, 1, 2 (x 3 clients)
    np.testing.assert_array_equal(result.metrics["inversions"][:3], [6, 3, 6])


# ---------------------------------------------------------------------------- 4. the monitor acts
MONITOR = dict(BASE, model=MLP, algorithm="fedrco", clients=4, rounds=4, step_size=0.05, seed=0, lam=1e-3,
               corrupt="clients=0-0,scale=1000,from=2", inverse_every=1000)


def test_monitor_resets_exploding_client_and_without_it_the_model_degrades(tmp_path):
    """Client 0's inputs are multiplied by 1000 from round 2 on, while its K-FAC inverse is the one of its first
    step (T_inv = 1000): the preconditioned step is ~1e5-1e6 times the recent norms. With the monitor, every such
    step scores >= tau_high = 1000 and is a hard reset (client 0 sends theta^t back), and the global model stays
    finite and small; without it, client 0's steps enter the mean and the model blows up (|x| > 1e10, still
    finite in 4 rounds so the run 'completes') and its test accuracy falls to chance (0.1).
    Measured (seed 0): with the monitor, accuracy 0.056 0.326 0.188 0.055 0.165 and max|x| ~ 92 (client 0's
    first corrupted step of a round is reset; the toy MLP still wobbles); without it, 0.056 0.326 0.188 0.1
    0.102 and max|x| ~ 4e18. Serial and deterministic. Only client 0 reaches tau_high, and only from round 2.
    """
    on = run({**MONITOR, "out": str(tmp_path / "on.h5")}, comm=SerialComm())
    off = run({**MONITOR, "monitor": False, "out": str(tmp_path / "off.h5")}, comm=SerialComm())
    assert on.status == "completed" and off.status == "completed"
    with h5py.File(tmp_path / "on.h5", "r") as f:
        events = f["events"][:]
        assert f["events"].attrs["columns"] == "round,client,step,score,action"
    rnd, client, score, action = events[:, 0], events[:, 1], events[:, 3], events[:, 4]
    high = score >= 1000
    assert np.all(action[high] == 2)                                  # tau_high -> hard reset
    assert np.any(high & (client == 0) & (rnd == 2))                  # as soon as the corruption starts
    # every corrupted round that takes steps: 2 and 3 (x^4's row only evaluates mini-batch 0, no steps, no events)
    assert set(rnd[high & (client == 0)].tolist()) == {2.0, 3.0} and not np.any(rnd >= 4)
    assert not np.any(high & ((client != 0) | (rnd < 2)))             # nobody else, never before
    acc_on, acc_off = on.metrics["test_accuracy"], off.metrics["test_accuracy"]
    assert np.all(np.isfinite(on.x)) and np.abs(on.x).max() < 1e3 and np.all(np.isfinite(acc_on))
    assert on.metrics["resets"][2] >= 1 and on.metrics["anomaly_max"][2] >= 1e3
    assert np.abs(off.x).max() > 1e10                                  # diverges without the monitor
    assert acc_off[-1] <= 0.12                                         # ... to chance accuracy
    with h5py.File(tmp_path / "off.h5", "r") as f:
        assert "events" not in f


def _corrupt(kind, A, client):
    """Make client's K-FAC factor A (a Factor) singular, indefinite or overflowed-but-finite after damping."""
    if kind == "rows-1e300":                      # Woodbury storage: rows of 1e150, Gram entries of 1e300
        A.rows[client] *= 1e150
        A.sq[client] *= 1e300
    elif kind == "1e300":
        A.dense[client] *= 1e300
    elif kind == "singular":                      # C = -r I: tr < 0 gives pi = 1, shift r = sqrt(eps): K = 0
        A.dense[client] = -np.sqrt(0.03) * np.eye(A.D)
    elif kind == "indefinite":                    # a large negative eigenvalue that the damping cannot cover
        A.dense[client][0, 0] = -1e3 * (np.trace(A.dense[client]) + 1)


@pytest.mark.parametrize("monitor", [True, False])
@pytest.mark.parametrize("kind,layer", [("singular", 1), ("indefinite", 1), ("1e300", 1), ("rows-1e300", 0)])
def test_a_refused_factor_inverse_resets_that_client_only(kind, layer, monitor, tmp_path, monkeypatch):
    """A factor of client 1, layer ``layer``, is made singular, indefinite or overflowed-but-finite just before its
    inversion at round 1, local step 1 (T_inv = 1: every step inverts). The run completes; client 1's step is a hard
    reset, in the trace's ``resets`` column (and its ``events`` with the monitor on), with or without the monitor;
    the other clients' local models of that round are bit for bit those of the same run without the corruption.
    Layer 0 of the MLP keeps its A factor as rows (Woodbury: 785 inputs, 13 batches of 8 rows), layer 1 dense."""
    from mpifed.algorithms.networks import fedrco

    conf = {**BASE, "model": MLP, "algorithm": "fedrco", "clients": 3, "rounds": 2, "step_size": 0.05,
            "inverse_every": 1, "monitor": monitor}
    real_invert, real_step = fedrco._invert, fedrco.client_step

    def runs(corrupt: bool, name: str):
        calls, sent = [0], []

        def invert(p, state, sel, idx, xp):
            if corrupt and calls[0] == conf["local_steps"] + 1:   # round 1 (3 steps a round), step 1
                assert sel[1] and state.A[0].rows is not None and state.A[1].dense is not None
                _corrupt(kind, state.A[layer], 1)
            calls[0] += 1
            return real_invert(p, state, sel, idx, xp)

        def step(p, block, state, x, streams):
            state, up = real_step(p, block, state, x, streams)
            sent.append(np.array(up.fields["theta"]))
            return state, up

        monkeypatch.setattr(fedrco, "_invert", invert)
        monkeypatch.setattr(fedrco, "client_step", step)
        result = run({**conf, "out": str(tmp_path / f"{name}.h5")}, comm=SerialComm())
        monkeypatch.undo()
        return result, sent

    clean, clean_sent = runs(False, "clean")
    bad, bad_sent = runs(True, "bad")
    assert bad.status == "completed", bad.message
    assert clean.metrics["resets"][:2].tolist() == [0, 0]
    assert bad.metrics["resets"][:2].tolist() == [0, 1]
    assert clean_sent[0].tobytes() == bad_sent[0].tobytes()                    # round 0: untouched
    others = [0, 2]
    assert clean_sent[1][others].tobytes() == bad_sent[1][others].tobytes()    # round 1: the others unchanged
    assert not np.array_equal(clean_sent[1][1], bad_sent[1][1]) and np.all(np.isfinite(bad_sent[1][1]))
    if monitor:
        with h5py.File(tmp_path / "bad.h5", "r") as f:
            assert f["events"][:].tolist() == [[1, 1, 1, np.finfo(float).max, 2]]


def test_monitor_history_round_empties_the_window_each_round(tmp_path):
    """K = 3 local steps and a warm-up of 3 norms: with --monitor-history round the window never holds 3 norms
    when a step is scored, so no score is ever taken (anomaly_max 0 every round); with run (the default) the
    window fills in round 0 and the steps of the later rounds are scored."""
    conf = {**BASE, "model": MLP, "algorithm": "fedrco", "clients": 3, "rounds": 3, "step_size": 0.05,
            "monitor_warmup": 3}
    per_round = run({**conf, "monitor_history": "round", "out": str(tmp_path / "r.h5")}, comm=SerialComm())
    kept = run({**conf, "out": str(tmp_path / "k.h5")}, comm=SerialComm())
    assert per_round.metrics["anomaly_max"][:3].tolist() == [0, 0, 0]
    assert kept.metrics["anomaly_max"][0] == 0 and np.all(kept.metrics["anomaly_max"][1:3] > 0)


@pytest.mark.parametrize("algorithm", ["fedrco", "scaffold", "fedpm"])
def test_the_final_row_is_the_next_rounds_first_evaluation(algorithm, tmp_path):
    """rounds = R records x^R from mini-batch 0 only (no local steps); its loss, gradient norm and test
    accuracy are those that round R of a longer run computes before its steps."""
    conf = {key: v for key, v in MONITOR.items() if key not in ("corrupt", "inverse_every")}
    conf.update(algorithm=algorithm, **{"fedrco": {"inverse_every": 2}, "fedpm": {"damping": 0.1}}.get(algorithm, {}))
    short = run({**conf, "rounds": 3, "out": str(tmp_path / "short.h5")}, comm=SerialComm())
    long = run({**conf, "rounds": 4, "out": str(tmp_path / "long.h5")}, comm=SerialComm())
    for key in ("loss", "grad_norm", "test_accuracy", "bits_up"):
        assert short.metrics[key].tobytes() == long.metrics[key][:4].tobytes(), key


def test_validation_rows_are_held_out_of_training_and_scored_every_round(tmp_path):
    """--validation 0.1: 600 of mnist-synthetic's 6,000 training images, drawn from the seed alone, leave the
    clients; val_accuracy of the last row is the accuracy of x^R on exactly those images (recomputed here), and
    the test set is untouched."""
    from mpifed.federation.images import _images, validation_rows
    from mpifed.problems.nn.block import standardise

    conf = {**BASE, "model": MLP, "algorithm": "fedavg", "clients": 3, "rounds": 2, "step_size": 0.05,
            "validation": 0.1, "out": str(tmp_path / "v.h5")}
    result = run(conf, comm=SerialComm())
    X, y, _ = _images("mnist-synthetic", "train", BASE["seed"])
    held = validation_rows(len(y), 0.1, BASE["seed"])
    assert len(np.unique(held)) == 600 and not np.array_equal(held, validation_rows(len(y), 0.1, 4))
    fed = build_federation(resolve(cfgmod.build(conf)).data, SerialComm())
    assert fed.block.offsets[-1] == 5400
    rest = np.delete(np.arange(len(y)), held)
    assert np.array_equal(np.sort(fed.block.labels), np.sort(y[rest]))
    z = build_model(MLP, (28, 28), 10).logits(result.x, standardise(np, X[held]), np)
    assert result.metrics["val_accuracy"][-1] == np.mean(z.argmax(axis=1) == y[held])
    assert np.all(np.isfinite(result.metrics["val_accuracy"])) and np.all(np.isfinite(result.metrics["test_accuracy"]))


# -------------------------------------------------------------------------------------- 5. bad input
BAD = dict(BASE, model=MLP, algorithm="fedrco", clients=4, rounds=1, step_size=0.05)


@pytest.mark.parametrize("change,words", [
    (dict(damping=0.0), ["--damping", "0.0", "eps > 0"]),
    (dict(damping=-1e-3), ["--damping", "-0.001"]),
    (dict(algorithm="fedpm", damping=-0.1), ["--damping", "-0.1"]),
    (dict(algorithm="localnewton", damping=0), ["--damping"]),
    (dict(inverse_every=0), ["--inverse-every", "0", ">= 1"]),
    (dict(model="cnn:kernel=15"), ["cnn:kernel=15", "conv2", "does not fit"]),
    (dict(model="cnn:conv=4-4,kernel=12"), ["conv2", "8x8x4"]),
    (dict(model="cnn:conv=4"), ["conv"]),
    (dict(dataset="a9a"), ["--model", "a9a", "mnist, mnist-synthetic"]),
    (dict(dataset="synthetic", model=None), ["fedrco", "--model"]),
    (dict(corrupt="clients=0-x,scale=2"), ["--corrupt", "malformed", "clients=LO-HI"]),
    (dict(corrupt="scale=2"), ["--corrupt", "malformed"]),
    (dict(corrupt="clients=3-1,scale=2"), ["--corrupt", "out of range"]),
    (dict(corrupt="clients=0-1,scale=nan"), ["--corrupt", "out of range"]),
    (dict(dtype="float16"), ["--dtype", "float16", "float64, float32"]),
    (dict(dataset="synthetic", model=None, algorithm="fednl", dtype="float32"), ["--dtype float32", "--model"]),
    (dict(validation=1.0), ["--validation", "1.0", "0 < f < 1"]),
    (dict(monitor_warmup=11), ["--monitor-warmup", "11", "--monitor-window = 10"]),
    (dict(monitor_history="step"), ["--monitor-history", "run", "round"]),
])
def test_bad_input_is_a_one_line_error_before_the_first_round(change, words, tmp_path):
    out = tmp_path / "t.h5"
    # The model-fit check runs inside the driver's collective set-up, which re-raises it as MpifedError
    # (ConfigError's base class) with the same one-line text.
    with pytest.raises(MpifedError) as e:
        run({**BAD, **change, "out": str(out)}, comm=SerialComm())
    _one_line(e, *words)
    assert not out.exists()


def test_config_errors_are_config_errors(tmp_path):
    for change in (dict(damping=0.0), dict(inverse_every=0), dict(corrupt="scale=2"), dict(dataset="a9a")):
        with pytest.raises(ConfigError):
            run({**BAD, **change, "out": str(tmp_path / "t.h5")}, comm=SerialComm())


# ------------------------------------------------------------------ 5b. test set shared by the ranks, dtype
def test_test_set_shared_over_ranks_equals_the_whole_set_and_a_plain_loop():
    """Every rank's chunks combined in order give the whole set's accuracy and loss bit for bit, at any number of
    ranks (also more ranks than chunks); against a plain loop of one image at a time (accuracy exact)."""
    from mpifed.backend import get_backend
    from mpifed.problems.nn.block import ImageTestSet

    m, r = build_model(CNN, (28, 28), 10), np.random.default_rng(2)
    pixels, labels = r.integers(0, 256, (1050, 28, 28), dtype=np.uint8), r.integers(0, 10, 1050)
    x = m.init(4)
    bk = get_backend("numpy")
    whole = ImageTestSet.share(pixels, labels, m, "t", bk, chunk=100)
    acc, loss = whole.evaluate(x, 0.0)
    for ranks in (2, 3, 11, 13):
        parts = [ImageTestSet.share(pixels, labels, m, "t", bk, q, ranks, chunk=100).partial(x) for q in range(ranks)]
        assert sum(len(p) for p in parts) == 11
        assert whole.combine(np.concatenate(parts)) == (acc, loss)
    z = np.stack([m.logits(x, ((pixels[i:i + 1] / 255.0 - 0.1307) / 0.3081)) [0] for i in range(len(labels))])
    assert acc == np.mean(z.argmax(axis=1) == labels)
    ce = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1) - z[np.arange(len(labels)), labels]
    np.testing.assert_allclose(loss, ce.mean(), rtol=1e-12)


def test_float32_runs_in_float32_and_stays_close_to_float64(tmp_path):
    """--dtype float32: the clients' models and batches are float32; the run follows the float64 one closely."""
    seen = set()
    from mpifed.problems.nn import models

    orig = models.Model.loss_grad

    def spy(self, theta, X, y, xp=np, stats=False):
        seen.add((theta.dtype, X.dtype))
        return orig(self, theta, X, y, xp, stats)

    conf = {**BASE, "model": CNN, "algorithm": "fedrco", "clients": 3, "rounds": 2, "step_size": 0.01}
    try:
        models.Model.loss_grad = spy
        r32 = run({**conf, "dtype": "float32", "out": str(tmp_path / "a.h5")}, comm=SerialComm())
    finally:
        models.Model.loss_grad = orig
    r64 = run({**conf, "out": str(tmp_path / "b.h5")}, comm=SerialComm())
    assert seen == {(np.dtype(np.float32), np.dtype(np.float32))}
    np.testing.assert_allclose(r32.metrics["loss"], r64.metrics["loss"], rtol=1e-4)
    np.testing.assert_allclose(r32.x, r64.x, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------- 6. MPI = serial
MPI_CASES = {
    "fedavg": dict(algorithm="fedavg", step_size=0.05),
    "fedrco": dict(algorithm="fedrco", step_size=0.01, inverse_every=2, ema_decay=0.5, eval_batch=16),
    "fedavg-float32": dict(algorithm="fedavg", step_size=0.05, dtype="float32"),
    "fedrco-float32": dict(algorithm="fedrco", step_size=0.01, inverse_every=2, ema_decay=0.5, dtype="float32"),
    "fedpm-float32": dict(algorithm="fedpm", step_size=0.05, dtype="float32"),
}


@pytest.mark.mpi(min_size=2)
def test_nn_methods_same_at_every_rank_count(tmp_path):
    """The same runs on all ranks and serially: per-round test accuracy and x bitwise equal (the
    per-client batches come from per-client streams and the driver's sums are rank-independent)."""
    confs = {name: {**BASE, **MPI_CASES[name], "model": MLP, "clients": 5, "rounds": 2, "participation": 0.8,
                    "partition": "dirichlet:alpha=0.5"} for name in MPI_CASES}
    mine = {}
    pairs = distributed_and_serial(confs, tmp_path, own=mine)
    for name, par in mine.items():
        assert par.status == "completed", (name, par.message)
    if pairs is None:
        return
    for name, (par, ser) in pairs.items():
        np.testing.assert_array_equal(par.x, ser.x, err_msg=name)
        np.testing.assert_array_equal(par.metrics["test_accuracy"], ser.metrics["test_accuracy"], err_msg=name)
        np.testing.assert_array_equal(par.metrics["loss"], ser.metrics["loss"], err_msg=name)
        if name == "fedrco":
            for key in ("rollbacks", "resets", "inversions"):
                np.testing.assert_array_equal(par.metrics[key], ser.metrics[key], err_msg=f"{name}: {key}")
