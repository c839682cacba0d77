"""Issue 5, done-when 4: FedRCO and FedAvg through cupy give numpy's per-round accuracy (skipped without a GPU).

On a GPU machine:  MPIFED_DATA=../shared/datasets .venv/bin/python -m pytest -q -s tests/test_nn_gpu.py
prints the per-round client time of both backends.
"""
import numpy as np
import pytest

from mpifed.backend import get_backend
from mpifed.driver import run


def _gpu():
    try:
        return get_backend("auto").name == "cupy"
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _gpu(), reason="cupy with a usable GPU is not available")


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
