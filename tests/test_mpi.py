"""Run under ``mpiexec -n N python -m pytest --with-mpi -m mpi`` (tests/run.py does, at 2 and 4 ranks)."""
import math
import os

import numpy as np
import pytest

from rank_invariance import assert_same, batches, distributed_and_serial
from sparse_data import sparse_binary
from mpifed.comm import MPIComm, SerialComm, client_range
from mpifed.driver import run

pytestmark = pytest.mark.mpi


def test_world_size_is_what_the_launcher_asked_for():
    """A foreign mpiexec starts N singletons of size 1 that would skip every MPI test: fail instead."""
    expected = os.environ.get("MPIFED_TEST_NP")
    if expected is None:
        pytest.skip("MPIFED_TEST_NP is not set (tests/run.py sets it to the -n it launches with)")
    from mpi4py import MPI

    assert MPI.COMM_WORLD.Get_size() == int(expected) > 1


def test_reduce_equals_the_correctly_rounded_sum_of_all_clients():
    comm = MPIComm()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 9)) * 10.0 ** rng.integers(-10, 10, (23, 9))
    lo, hi = client_range(23, comm.size, comm.rank)
    from mpifed.ddsum import dd_sum_rows

    h, l = dd_sum_rows(X[lo:hi])
    total = comm.reduce_dd(np.ascontiguousarray(np.stack([h, l], axis=-1)))
    if comm.is_root:
        np.testing.assert_array_equal(total, [math.fsum(X[:, j]) for j in range(9)])
    else:
        assert total is None


def test_reduce_of_parts_in_pieces_equals_the_correctly_rounded_sum(monkeypatch):
    """Parts of several lengths reduced a few pairs at a time (pieces that straddle the parts): every entry is the
    correctly rounded sum over all clients, and the one-message reduction gives the same bits."""
    from mpifed import comm as commmod
    from mpifed.ddsum import dd_sum_rows

    monkeypatch.setattr(commmod, "REDUCE_PIECE", 4)
    comm = MPIComm()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((23, 15)) * 10.0 ** rng.integers(-10, 10, (23, 15))
    lo, hi = client_range(23, comm.size, comm.rank)
    h, l = dd_sum_rows(X[lo:hi])
    total = comm.reduce_dd_parts([(h[:1], l[:1]), (h[1:10], l[1:10]), (h[10:], l[10:])])
    whole = comm.reduce_dd(np.ascontiguousarray(np.stack([h, l], axis=-1)))
    if comm.is_root:
        np.testing.assert_array_equal(total, [math.fsum(X[:, j]) for j in range(15)])
        assert total.tobytes() == whole.tobytes()
    else:
        assert total is None and whole is None


BASICS = {
    "topk-sparse": {"dataset": "phishing", "clients": 9, "samples_per_client": 40, "intercept": True,
                    "compressor": "topk:k=2d"},
    "randk": {"dataset": "phishing", "clients": 9, "samples_per_client": 40, "compressor": "randk:k=3d"},
    "rankr-dense": {"dataset": "synthetic", "clients": 7, "samples_per_client": 30, "compressor": "rankr:r=2",
                    "option": 1},
    "newton": {"dataset": "synthetic", "clients": 6, "samples_per_client": 30, "algorithm": "newton"},
    "gd": {"dataset": "synthetic", "clients": 6, "samples_per_client": 30, "algorithm": "gd"},
}


@pytest.mark.parametrize("names", batches(BASICS))
def test_distributed_run_equals_the_serial_run(names, tmp_path):
    """Every rank runs its block; one rank then runs all clients alone: the traces must agree, and every rank
    ends with rank 0's x."""
    configs = {name: {"rounds": 10, "tol": 0.0, "quiet": True, "reference_iterations": 3, **BASICS[name]}
               for name in names}
    mine = {}
    pairs = distributed_and_serial(configs, tmp_path, own=mine)
    for name in names:
        np.testing.assert_array_equal(mine[name].x, MPIComm().comm.bcast(mine[name].x, root=0), err_msg=name)
    if pairs is None:
        return
    for name, (distributed, serial) in pairs.items():
        for key in ("grad_norm", "loss", "f_gap", "dist_to_opt", "bits_up", "bits_down"):
            np.testing.assert_allclose(distributed.metrics[key], serial.metrics[key], rtol=1e-12, atol=0,
                                       err_msg=f"{name}: {key}")
        np.testing.assert_allclose(distributed.x, serial.x, rtol=1e-13, atol=1e-16, err_msg=name)


LARGE_D = {"dataset": "synthetic-sparse:nnz=30", "features": 40000, "clients": 12, "samples_per_client": 20,
           "reference_iterations": 0, "rounds": 3, "tol": 0.0, "quiet": True}


@pytest.mark.parametrize("config", [{"algorithm": "gd"}, {"algorithm": "giant"},
                                    {"algorithm": "dane", "mu": 1e-3, "local_steps": 2}], ids=["gd", "giant", "dane"])
def test_large_d_paths_give_the_serial_run_bit_for_bit(config, tmp_path, monkeypatch):
    """d = 40,000: GD's matrix-free L, block-summed gradients and (for GIANT and DANE) local solves in ranges of
    two clients; the distributed trace is the serial one, bit for bit."""
    from mpifed.algorithms.approx_newton import cg

    monkeypatch.setattr(cg, "LOCAL_CHUNK_BYTES", 2 * 8 * cg.SOLVE_ARRAYS * 40000)
    config = {**LARGE_D, **config, "out": str(tmp_path / "mpi.h5")}
    distributed = run(config, comm=MPIComm())
    if distributed.metrics:
        serial = run({**config, "out": str(tmp_path / "serial.h5")}, comm=SerialComm())
        for key in ("grad_norm", "loss", "bits_up", "exchanges"):
            np.testing.assert_array_equal(distributed.metrics[key], serial.metrics[key], err_msg=key)
        assert distributed.x.tobytes() == serial.x.tobytes()


def test_gather_rows_stacks_every_rank_in_client_order():
    comm = MPIComm()
    lo, hi = client_range(11, comm.size, comm.rank)
    rows = np.array([[c, c * 10.0, -c] for c in range(lo, hi)])
    out = comm.gather_rows(rows, 11)
    if comm.is_root:
        np.testing.assert_array_equal(out, [[c, c * 10.0, -c] for c in range(11)])
    else:
        assert out is None


def test_queries_and_gathered_payloads_distributed_equal_serial():
    """The in-round query loop and Gatherv under MPI: same iterates and bit ledger as one process."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_driver import toy_run

    assert MPIComm().size > 1
    _, x, rows, status = toy_run(MPIComm())
    assert status == "completed"
    if MPIComm().is_root:
        _, x_serial, rows_serial, _ = toy_run(SerialComm())
        np.testing.assert_allclose(x, x_serial, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(np.array(rows), np.array(rows_serial), rtol=1e-13)


# the sparse (LIBSVM) path on generated one-hot-like data, so these run on any clone; a9a entries keep real data
SPARSE = {"dataset": sparse_binary(), "clients": 9, "samples_per_client": 40}
SYNTH = {"dataset": "synthetic", "clients": 7, "samples_per_client": 30, "features": 5}
NN = {"dataset": "mnist-synthetic", "model": "mlp:hidden=16", "clients": 6, "partition": "dirichlet:alpha=0.5",
      "participation": 4, "batch_size": 8, "local_steps": 2, "reference_iterations": 0}
EVERY_METHOD = {
    "newton-star": {**SPARSE, "algorithm": "newton-star"},
    "newton-star-dense": {**SYNTH, "algorithm": "newton-star"},
    "nl1": {**SPARSE, "algorithm": "nl1", "compressor": "randk:k=2"},
    "nl2": {**SYNTH, "algorithm": "nl2", "compressor": "randk:k=3"},
    "nl2-sparse": {"dataset": "a9a", "clients": 9, "samples_per_client": 40, "algorithm": "nl2", "compressor": "randk:k=1"},
    "cnl-Cp": {**SYNTH, "algorithm": "cnl", "compressor": "randk:k=2,p=0.5"},
    "cnl": {**SPARSE, "algorithm": "cnl", "compressor": "randk:k=2", "hessian_lipschitz": 1.0},
    "fednl-natural": {**SPARSE, "compressor": "natural"},
    "fednl-toplek": {**SPARSE, "compressor": "toplek:k=2d"},
    "fednl-randseqk": {**SYNTH, "compressor": "randseqk:k=2d"},
    "fednl-ls": {**SPARSE, "algorithm": "fednl-ls", "compressor": "randk:k=2d"},
    "fednl-ls-backtracking": {**SYNTH, "algorithm": "fednl-ls", "compressor": "topk:k=6", "alpha": 1.0, "x0_noise": 10.0},
    "fednl-pp": {**SPARSE, "algorithm": "fednl-pp", "participation": 4},
    "fednl-cr": {**SYNTH, "algorithm": "fednl-cr", "compressor": "topk:k=2d", "hessian_lipschitz": 0.5},
    "fednl-bc": {**SPARSE, "algorithm": "fednl-bc", "down_compressor": "randk:k=10", "grad_probability": 0.5},
    "fedpm": {**SPARSE, "algorithm": "fedpm", "local_steps": 2},
    "fedpm-partial": {**SPARSE, "algorithm": "fedpm", "participation": 0.5},
    "dcgd": {**SPARSE, "algorithm": "dcgd", "compressor": "randk:k=10", "participation": 5},
    "diana": {**SPARSE, "algorithm": "diana", "compressor": "natural", "participation": 5},
    "adiana": {**SYNTH, "algorithm": "adiana", "compressor": "randk:k=2"},
    "adiana-partial": {**SPARSE, "algorithm": "adiana", "compressor": "randk:k=10", "participation": 4},
    "fedavg": {**SPARSE, "algorithm": "fedavg", "local_steps": 3, "participation": 4},
    "fedavgm": {**SYNTH, "algorithm": "fedavgm", "local_steps": 2, "momentum": 0.5},
    "fedprox": {**SPARSE, "algorithm": "fedprox", "local_steps": 2, "prox_mu": 0.1, "participation": 5},
    "scaffold": {**SPARSE, "algorithm": "scaffold", "local_steps": 3, "participation": 4},
    "scaffold-option1": {**SYNTH, "algorithm": "scaffold", "local_steps": 2, "scaffold_option": 1},
    "fedadam": {**SYNTH, "algorithm": "fedadam", "local_steps": 2, "server_lr": 0.05},
    "dirichlet-fednl-pp": {"dataset": "a9a", "partition": "dirichlet:alpha=0.5", "clients": 10, "algorithm": "fednl-pp",
                           "participation": 0.5},
    "localnewton": {**SYNTH, "algorithm": "localnewton", "local_steps": 2, "eta": 1.9, "local_line_search": True},
    # neural networks: small MLP on the synthetic digits, mini-batches of 8
    "nn-fedpm-foof": {**NN, "algorithm": "fedpm", "step_size": 0.02},
    "nn-localnewton-foof": {**NN, "algorithm": "localnewton", "step_size": 0.02},
    "nn-scaffold": {**NN, "algorithm": "scaffold", "step_size": 0.05},
    "nn-fedadam": {**NN, "algorithm": "fedadam", "step_size": 0.05},
    "nn-fedrco": {**NN, "algorithm": "fedrco", "step_size": 0.02, "inverse_every": 3, "ema_decay": 0.5},
}


@pytest.mark.parametrize("names", batches(EVERY_METHOD))
def test_every_method_distributed_equals_serial(names, tmp_path):
    """Each method's trace is the same at 1, 2 and 4 ranks."""
    pairs = distributed_and_serial({name: {"rounds": 8, "tol": 0.0, "quiet": True, "reference_iterations": 3,
                                           **EVERY_METHOD[name]} for name in names}, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "dist_to_opt", "bits_up", "bits_up_index", "bits_down", "participants"))
