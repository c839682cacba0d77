"""The cupy backend against numpy (skipped without a GPU). On a GPU machine:

    MPIFED_DATA=../shared/datasets .venv/bin/python -m pytest -q -s tests/test_gpu.py

* FedNL and FedNL-PP through cupy give numpy's trace. The client step runs in chunks of clients on both
  backends (``CLIENT_CHUNK_BYTES`` and its GPU twin set small), so the cupyx row ranges of the scatter matrices
  and the double-double chunk sums on the device are exercised, on the sparse path (a9a) and the dense path
  (synthetic).
* FedRCO and FedAvg on a CNN through cupy give numpy's per-round accuracy, and print the
  per-round client time of both backends.
"""
import numpy as np
import pytest

from mpifed import tri
from mpifed.algorithms import base
from mpifed.backend import get_backend
from mpifed.driver import run


def _gpu():
    try:
        return get_backend("auto").name == "cupy"
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _gpu(), reason="cupy with a usable GPU is not available")


@pytest.mark.parametrize("setup", [
    pytest.param(dict(dataset="a9a", clients=20, samples_per_client=50, intercept=True), marks=pytest.mark.data("a9a")),
    dict(dataset="synthetic", clients=12, samples_per_client=30, features=30, intercept=False),
])
@pytest.mark.parametrize("algorithm", ["fednl", "fednl-pp"])
def test_fednl_on_cupy_in_client_chunks_is_numpy_fednl(monkeypatch, tmp_path, setup, algorithm):
    d = 124 if setup["dataset"] == "a9a" else setup["features"]
    for name in ("CLIENT_CHUNK_BYTES", "GPU_CLIENT_CHUNK_BYTES"):
        monkeypatch.setattr(base, name, 8 * tri.size(d) * 3)  # 3 clients per chunk
    common = dict(setup, algorithm=algorithm, compressor="topk:k=4d", rounds=8, lam=1e-3, quiet=True,
                  reference_iterations=5)
    if algorithm == "fednl-pp":  # the participants' Hessians from their rows of the scatter matrix on the device
        common["participation"] = 5
    out = {backend: run({**common, "backend": backend, "out": str(tmp_path / f"{backend}.h5")})
           for backend in ("numpy", "cupy")}
    a, b = out["numpy"].metrics, out["cupy"].metrics
    assert out["cupy"].status == out["numpy"].status
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-7, atol=1e-13)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-12)
    np.testing.assert_array_equal(b["bits_up"], a["bits_up"])
    np.testing.assert_allclose(out["cupy"].x, out["numpy"].x, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("algorithm,step", [("fedavg", 0.03), ("fedrco", 0.01)])
def test_cupy_matches_numpy_per_round(tmp_path, algorithm, step):
    common = dict(dataset="mnist-synthetic", model="cnn", algorithm=algorithm, clients=20, participation=0.8,
                  partition="dirichlet:alpha=0.1", step_size=step, local_steps=3, batch_size=32, lam=0.0,
                  reference_iterations=0, rounds=4, quiet=True)
    out = {}
    for backend in ("numpy", "cupy"):
        res = run({**common, "backend": backend, "out": str(tmp_path / f"{backend}.h5")})
        out[backend] = res
    a, b = out["numpy"].metrics, out["cupy"].metrics
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-8)
    np.testing.assert_allclose(b["test_accuracy"], a["test_accuracy"], atol=1e-3)  # a flipped argmax at most
    np.testing.assert_allclose(out["cupy"].x, out["numpy"].x, rtol=1e-6, atol=1e-8)
    for name, m in (("numpy", a), ("cupy", b)):
        print(f"{algorithm} {name}: client s/round {np.nanmean(m['time_client']):.3f}")
