"""Tests of the HDF5 trace: its schema, and the metric values checked against independent oracles.

The oracles are a plain numpy logistic regression written here (loss, gradient, Hessian and Newton's
method on the same synthetic rows), the bit-count formulas of the FedNL paper's accounting (d floats per
gradient, d(d+1)/2 packed Hessian entries, ceil(log2 T) bits per sparse index), h5py reads of the raw file,
and the package metadata. Runs are serial and in-process (no mpiexec).
"""
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from scipy.special import expit

from mpifed import config as cfgmod
from mpifed.data import synthetic_clients
from mpifed.driver import run
from mpifed.errors import MpifedError
from mpifed.trace import TraceWriter, load

N_CLIENTS, M, D = 32, 100, 20
T = D * (D + 1) // 2  # 210 packed Hessian entries
K = 8 * D  # topk:k=8d
LAM, SEED = 0.01, 3
METRICS = ("round", "loss", "grad_norm", "f_gap", "dist_to_opt", "bits_up", "bits_up_index", "bits_down",
           "time_s", "time_client", "time_comm", "time_server")


# ------------------------------------------------------------------ the independent oracle

@pytest.fixture(scope="module")
def problem():
    """The same rows as the run's synthetic federation, as a dense matrix and labels."""
    A, b = synthetic_clients(range(N_CLIENTS), M, D, SEED)
    return A.toarray(), b


def P(x, A, b, lam=LAM):
    """P(x) = (1/n) sum_i (1/m) sum_j log(1 + exp(-b a^T x)) + lam/2 |x|^2 (equal m: one mean over rows)."""
    return np.mean(np.log1p(np.exp(-b * (A @ x)))) + 0.5 * lam * x @ x


def grad_P(x, A, b, lam=LAM):
    return A.T @ (-b * expit(-b * (A @ x))) / len(b) + lam * x


def hess_P(x, A, b, lam=LAM):
    s = expit(A @ x)
    return (A * (s * (1 - s))[:, None]).T @ A / len(b) + lam * np.eye(A.shape[1])


def newton_iterates(A, b, steps):
    xs = [np.zeros(A.shape[1])]
    for _ in range(steps):
        x = xs[-1]
        xs.append(x - np.linalg.solve(hess_P(x, A, b), grad_P(x, A, b)))
    return xs


@pytest.fixture(scope="module")
def optimum(problem):
    """x*, f* from 40 plain Newton steps (quadratic convergence: machine precision long before)."""
    x = newton_iterates(*problem, 40)[-1]
    assert np.linalg.norm(grad_P(x, *problem)) < 1e-15
    return x, P(x, *problem)


# ------------------------------------------------------------------ runs

def _run(folder, **overrides):
    cfg = {"lam": LAM, "seed": SEED, "rounds": 3, "quiet": True, "out": str(folder / "trace.h5"), **overrides}
    result = run(cfg)
    return result, cfg


@pytest.fixture(scope="module")
def fednl(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fednl"), algorithm="fednl", compressor="topk:k=8d", option=2)


@pytest.fixture(scope="module")
def fednl64(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fednl64"), algorithm="fednl", compressor="topk:k=8d", option=2,
                float_bits=64)


@pytest.fixture(scope="module")
def newton(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("newton"), algorithm="newton", rounds=4)


def read(path):
    """The raw file through h5py, not through mpifed's reader."""
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        metrics = {name: ds[()] for name, ds in f["metrics"].items()}
        x = {name: ds[()] for name, ds in f["x"].items()} if "x" in f else {}
    return attrs, metrics, x


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------ schema

def test_schema(fednl):
    result, cfg = fednl
    attrs, metrics, x = read(cfg["out"])
    assert int(attrs["schema_version"]) == 1
    assert text(attrs["mpifed_version"]) == importlib.metadata.version("mpifed")
    assert int(attrs["mpi_size"]) == 1
    assert text(attrs["status"]) == "completed"
    # config: JSON whose values are what was asked, and which rebuilds the same configuration
    stored = json.loads(text(attrs["config"]))
    for key, value in cfg.items():
        assert stored[key] == value, key
    assert stored == dataclasses.asdict(cfgmod.build(cfg))
    assert cfgmod.build(stored) == cfgmod.build(cfg)
    env = json.loads(text(attrs["environment"]))
    assert isinstance(env["ranks"], list) and len(env["ranks"]) == 1
    assert env["ranks"][0]["host"] == platform.node() and env["ranks"][0]["pid"] == os.getpid()
    assert np.isfinite(float(attrs["f_star"]))
    assert set(METRICS) <= set(metrics)
    for name in METRICS:
        assert metrics[name].shape == (cfg["rounds"] + 1,), name
        assert metrics[name].dtype == np.float64, name
    np.testing.assert_array_equal(metrics["round"], np.arange(cfg["rounds"] + 1))
    assert x["final"].shape == (D,) and x["star"].shape == (D,)
    np.testing.assert_array_equal(x["final"], result.x)


def test_times_are_consistent(fednl):
    _, cfg = fednl
    _, m, _ = read(cfg["out"])
    parts = m["time_client"] + m["time_comm"] + m["time_server"]
    assert (parts >= 0).all()
    np.testing.assert_allclose(m["time_s"], np.cumsum(parts), rtol=1e-12, atol=1e-15)


def test_converged_run_stops_at_tol(tmp_path, problem):
    tol = 1e-8
    result, cfg = _run(tmp_path, algorithm="newton", rounds=50, tol=tol)
    attrs, m, _ = read(cfg["out"])
    assert text(attrs["status"]) == "converged" == result.status
    rows = len(m["round"])
    assert rows < 51
    for name in METRICS:
        assert len(m[name]) == rows, name
    assert m["grad_norm"][-1] <= tol and (m["grad_norm"][:-1] > tol).all()
    # the oracle agrees that Newton needs exactly this many steps from 0 to reach tol
    norms = [np.linalg.norm(grad_P(x, *problem)) for x in newton_iterates(*problem, rows - 1)]
    assert norms[-1] <= tol and all(n > tol for n in norms[:-1])


# ------------------------------------------------------------------ metric values

def test_last_row_matches_numpy_oracle(fednl, problem, optimum):
    _, cfg = fednl
    attrs, m, x = read(cfg["out"])
    x_final = x["final"]
    loss, gnorm = P(x_final, *problem), np.linalg.norm(grad_P(x_final, *problem))
    assert gnorm > 1e-8  # far enough from the optimum for a relative comparison to mean something
    np.testing.assert_allclose(m["loss"][-1], loss, rtol=1e-12)
    np.testing.assert_allclose(m["grad_norm"][-1], gnorm, rtol=1e-9)
    x_star, f_star = optimum
    np.testing.assert_allclose(float(attrs["f_star"]), f_star, rtol=1e-13)
    np.testing.assert_allclose(x["star"], x_star, rtol=0, atol=1e-10)
    np.testing.assert_allclose(m["f_gap"], m["loss"] - float(attrs["f_star"]), rtol=0, atol=1e-15)
    np.testing.assert_allclose(m["dist_to_opt"][-1], np.linalg.norm(x_final - x["star"]), rtol=1e-12)


def test_first_rows_match_numpy_oracle(fednl, problem, optimum):
    """x^0 = 0; FedNL's first step uses H^0 = grad^2 P(0) and l^0 = 0, i.e. it is a Newton step."""
    _, cfg = fednl
    _, m, _ = read(cfg["out"])
    x_star, _ = optimum
    np.testing.assert_allclose(m["loss"][0], math.log(2), rtol=1e-14)
    np.testing.assert_allclose(m["grad_norm"][0], np.linalg.norm(grad_P(np.zeros(D), *problem)), rtol=1e-12)
    np.testing.assert_allclose(m["dist_to_opt"][0], np.linalg.norm(x_star), rtol=1e-10)
    x1 = newton_iterates(*problem, 1)[1]
    np.testing.assert_allclose(m["loss"][1], P(x1, *problem), rtol=1e-12)
    np.testing.assert_allclose(m["grad_norm"][1], np.linalg.norm(grad_P(x1, *problem)), rtol=1e-8)
    np.testing.assert_allclose(m["dist_to_opt"][1], np.linalg.norm(x1 - x_star), rtol=1e-8)


def test_newton_iterates_match_numpy_newton(newton, problem, optimum):
    _, cfg = newton
    attrs, m, x = read(cfg["out"])
    xs = newton_iterates(*problem, cfg["rounds"])
    x_star, f_star = optimum
    np.testing.assert_allclose(x["final"], xs[-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["loss"], [P(v, *problem) for v in xs], rtol=1e-12)
    np.testing.assert_allclose(m["dist_to_opt"], [np.linalg.norm(v - x_star) for v in xs], rtol=1e-6, atol=1e-13)
    np.testing.assert_allclose(m["f_gap"], m["loss"] - f_star, rtol=0, atol=1e-14)


def test_newton_bits(newton):
    _, cfg = newton
    _, m, _ = read(cfg["out"])
    k = np.arange(cfg["rounds"] + 1)
    np.testing.assert_array_equal(m["bits_up"], k * (D + T) * 32)  # gradient + packed Hessian, no setup
    np.testing.assert_array_equal(m["bits_up_index"], 0)
    np.testing.assert_array_equal(m["bits_down"], k * D * 32)


def test_fednl_topk_bits(fednl):
    _, cfg = fednl
    _, m, _ = read(cfg["out"])
    k = np.arange(cfg["rounds"] + 1)
    index_bits = K * math.ceil(math.log2(T))  # 160 indices of 8 bits
    per_round = (D + 1 + K) * 32 + index_bits  # gradient, l_i (Option 2), K values, K indices
    setup = T * 32  # H_i^0 = grad^2 f_i(x^0), uploaded once before round 0
    assert index_bits == 1280 and per_round == 7072
    np.testing.assert_array_equal(m["bits_up"], setup + k * per_round)
    np.testing.assert_array_equal(m["bits_up_index"], k * index_bits)
    np.testing.assert_array_equal(m["bits_down"], k * D * 32)


def test_float_bits_64_doubles_value_bits(fednl, fednl64):
    _, m32, _ = read(fednl[1]["out"])
    _, m64, _ = read(fednl64[1]["out"])
    values32 = m32["bits_up"] - m32["bits_up_index"]
    values64 = m64["bits_up"] - m64["bits_up_index"]
    np.testing.assert_array_equal(values64, 2 * values32)
    np.testing.assert_array_equal(m64["bits_up_index"], m32["bits_up_index"])  # indices do not widen
    np.testing.assert_array_equal(m64["bits_down"], 2 * m32["bits_down"])
    assert m64["bits_up"][0] == T * 64
    # the width is accounting only: the optimisation itself is unchanged
    np.testing.assert_array_equal(m64["loss"], m32["loss"])


# ------------------------------------------------------------------ a run that dies keeps its rows

CRASH = textwrap.dedent("""
    import os, sys
    from mpifed.trace import TraceWriter
    w = TraceWriter(sys.argv[1], {"config": {"algorithm": "fednl"}, "mpi_size": 1})
    for k in range(3):
        w.write({"round": k, "loss": 1.0 / (k + 1)})
    w.flush()  # what a checkpoint, or FLUSH_SECONDS passing, does
    for k in range(3, 5):
        w.write({"round": k, "loss": 1.0 / (k + 1)})
    os._exit(1)  # no close(): what a killed rank leaves behind
""")


def test_trace_of_a_crashed_writer_is_readable(tmp_path):
    """A writer killed outright keeps every row up to its last flush (the rows buffered since are lost)."""
    path = tmp_path / "crash.h5"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    with h5py.File(path, "r") as f:
        assert text(f.attrs["status"]) == "running"
        np.testing.assert_array_equal(f["metrics/round"][()], [0, 1, 2])
        np.testing.assert_array_equal(f["metrics/loss"][()], [1.0, 0.5, 1 / 3])
    t = load(path)  # the reader accepts a trace that is still "running"
    assert t.attrs["status"] == "running" and t.rounds == 3


def test_rows_reach_the_file_in_blocks(tmp_path, monkeypatch):
    """The first row at once; later rows once FLUSH_SECONDS have passed since the last block, or at flush();
    ``rows`` and ``metrics_so_far`` count the buffered ones."""
    from mpifed import trace

    now = [100.0]
    monkeypatch.setattr(trace.time, "monotonic", lambda: now[0])

    def stored():
        with h5py.File(path, "r") as f:
            return f["metrics/round"][()].tolist()

    path = tmp_path / "live.h5"
    w = TraceWriter(path, {"config": {}})
    try:
        w.write({"round": 0, "grad_norm": 1.0})
        assert stored() == [0]
        for k in (1, 2):
            now[0] += 0.4 * trace.FLUSH_SECONDS
            w.write({"round": k, "grad_norm": 10.0 ** -k})
        assert stored() == [0] and w.rows == 3
        now[0] += 0.2 * trace.FLUSH_SECONDS  # FLUSH_SECONDS after the first block
        w.write({"round": 3, "grad_norm": 1e-3})
        assert stored() == [0, 1, 2, 3]
        w.write({"round": 4, "grad_norm": 1e-4})
        assert stored() == [0, 1, 2, 3]
        np.testing.assert_array_equal(w.metrics_so_far()["round"], np.arange(5))
        assert stored() == [0, 1, 2, 3, 4]
        w.write({"round": 5, "grad_norm": 1e-5})
        with h5py.File(path, "r") as f:
            assert text(f.attrs["status"]) == "running"
    finally:
        w.close("completed")  # flushes the last row
    with h5py.File(path, "r") as f:
        assert text(f.attrs["status"]) == "completed"
        np.testing.assert_array_equal(f["metrics/grad_norm"][()], 10.0 ** -np.arange(6))


def _write_rows(path, rows, flush_after=()):
    """A trace of ``rows`` written through ``write``, flushed after the rows in ``flush_after`` (and at close)."""
    w = TraceWriter(path, {"config": {}})
    for k, row in enumerate(rows):
        w.write(row)
        if k in flush_after:
            w.flush()
    w.close("completed")
    with h5py.File(path, "r") as f:
        return {name: (ds[()], ds.dtype, ds.chunks, ds.maxshape, ds.fillvalue) for name, ds in f["metrics"].items()}


def test_rows_written_in_blocks_equal_rows_written_one_by_one(tmp_path, monkeypatch):
    """Blocks of any length give the file that a flush after every row gives: the same columns, values, dtype,
    chunking, and NaN where a row lacks a field (columns that appear, disappear and reappear across blocks)."""
    from mpifed import trace

    rng = np.random.default_rng(0)
    names = ["round", "loss", "grad_norm", "bits_up", "clipped", "test_accuracy"]
    rows = []
    for k in range(300):
        row = {"round": k, "loss": float(rng.standard_normal()), "grad_norm": np.float64(rng.random()) * 1e-300,
               "bits_up": int(rng.integers(0, 2**40))}  # a Python int, a numpy float, a subnormal
        row.update({name: float(rng.standard_normal()) for name in names[4:] if rng.random() < 0.3})
        rows.append(row)
    expected = {name: np.array([row.get(name, np.nan) for row in rows]) for name in names}  # the oracle
    monkeypatch.setattr(trace, "FLUSH_SECONDS", 0.0)
    one_by_one = _write_rows(tmp_path / "one.h5", rows)
    monkeypatch.setattr(trace, "FLUSH_SECONDS", float("inf"))
    flushes = set(rng.choice(300, size=12, replace=False).tolist())
    for label, flush_after in (("end", ()), ("blocks", flushes)):
        blocks = _write_rows(tmp_path / f"{label}.h5", rows, flush_after)
        assert sorted(blocks) == sorted(one_by_one) == sorted(names)
        for name in names:
            np.testing.assert_array_equal(blocks[name][0], expected[name], err_msg=name)
            assert blocks[name][0].tobytes() == one_by_one[name][0].tobytes(), name
            assert blocks[name][1:4] == one_by_one[name][1:4] == (np.float64, (1024,), (None,)), name
            assert np.isnan(blocks[name][4]), name


def test_field_missing_in_a_row_is_nan(tmp_path):
    path = tmp_path / "nan.h5"
    w = TraceWriter(path, {})
    w.write({"round": 0})
    w.write({"round": 1, "loss": 2.0})
    w.write({"round": 2})
    w.close("completed")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["metrics/loss"][()], [np.nan, 2.0, np.nan])


# ------------------------------------------------------------------ load errors

def _assert_one_line_naming(err, path):
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(MpifedError) as err:
        load(path)
    _assert_one_line_naming(err, path)


def test_load_random_bytes(tmp_path):
    path = tmp_path / "random.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MpifedError) as err:
        load(path)
    _assert_one_line_naming(err, path)


@pytest.mark.parametrize("content", ["dataset", "empty", "metrics only"])
def test_load_hdf5_without_mpifed_metadata(tmp_path, content):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        if content == "dataset":
            f["data"] = np.arange(5)
        elif content == "metrics only":
            f.create_group("metrics")
    with pytest.raises(MpifedError) as err:
        load(path)
    _assert_one_line_naming(err, path)


def test_load_newer_schema(tmp_path, fednl):
    path = tmp_path / "future.h5"
    shutil.copy(fednl[1]["out"], path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(MpifedError) as err:
        load(path)
    _assert_one_line_naming(err, path)
    assert "99" in str(err.value)


def test_load_reads_back_what_h5py_sees(fednl):
    _, cfg = fednl
    attrs, metrics, x = read(cfg["out"])
    t = load(cfg["out"])
    assert t.rounds == cfg["rounds"] + 1
    assert t.config == json.loads(text(attrs["config"]))
    for name, values in metrics.items():
        np.testing.assert_array_equal(t.metrics[name], values)
    np.testing.assert_array_equal(t.arrays["x/final"], x["final"])


# ------------------------------------------------------------------ the writer never clobbers

def test_writer_refuses_existing_path(tmp_path):
    path = tmp_path / "taken.h5"
    path.write_bytes(b"precious")
    with pytest.raises(MpifedError) as err:
        TraceWriter(path, {})
    _assert_one_line_naming(err, path)
    assert path.read_bytes() == b"precious"
    w = TraceWriter(path, {}, overwrite=True)
    w.close("completed")
    with h5py.File(path, "r") as f:
        assert int(f.attrs["schema_version"]) == 1
