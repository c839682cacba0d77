"""DANE, GIANT, FedCurv and Fed-Sophia give the same trace at 1, 2 and 4 ranks (run under ``mpiexec -n N python -m
pytest --with-mpi -m mpi``; tests/run.py does, at 2 and 4 ranks)."""
import pytest

from rank_invariance import assert_same, batches, distributed_and_serial
from sparse_data import sparse_binary

pytestmark = pytest.mark.mpi

SPARSE = {"dataset": sparse_binary(), "clients": 9, "samples_per_client": 40}
SYNTH = {"dataset": "synthetic", "clients": 7, "samples_per_client": 30, "features": 5}
NN = {"dataset": "mnist-synthetic", "model": "mlp:hidden=16", "clients": 6, "partition": "dirichlet:alpha=0.5",
      "participation": 4, "batch_size": 8, "local_steps": 3, "reference_iterations": 0}
METHODS = {
    "giant": {**SPARSE, "algorithm": "giant", "cg_iterations": 5},
    "giant-dense": {**SYNTH, "algorithm": "giant"},
    "giant-least-squares": {**SPARSE, "algorithm": "giant", "problem": "least-squares", "cg_iterations": 4},
    "dane": {**SPARSE, "algorithm": "dane", "local_steps": 2, "mu": 0.01, "line_search": True},
    "dane-dense": {**SYNTH, "algorithm": "dane", "cg_iterations": 3},
    "fedcurv": {**SPARSE, "algorithm": "fedcurv", "local_steps": 2, "participation": 4, "curv_lambda": 0.1},
    "fedsophia": {**SPARSE, "algorithm": "fedsophia"},
    "fedsophia-hutchinson": {**SYNTH, "algorithm": "fedsophia", "diagonal": "hutchinson", "beta1": 0.5},
    "nn-fedcurv": {**NN, "algorithm": "fedcurv", "step_size": 0.05},
    "nn-fedsophia": {**NN, "algorithm": "fedsophia", "hessian_every": 2},
}


@pytest.mark.parametrize("names", batches(METHODS))
def test_distributed_equals_serial(names, tmp_path):
    pairs = distributed_and_serial({name: {"rounds": 6, "tol": 0.0, "quiet": True, "reference_iterations": 3,
                                           **METHODS[name]} for name in names}, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "bits_up", "bits_down", "exchanges", "participants", "local_iterations",
                        "step_length"), optional=True)
