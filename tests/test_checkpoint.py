"""Checkpoint and resume: a run stopped by a signal and resumed writes the same trace as
an uninterrupted run, every metric of every round (timings aside), for every method; real SIGTERM and
SIGKILL through mpiexec; bad resumes are refused without touching the files."""
import hashlib
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpifed.driver as driver
from mpifed import checkpoint, trace
from mpifed.checkpoint import EXIT_SUSPENDED, SIGNALS
from mpifed.comm import MPIComm, SerialComm
from mpifed.driver import run
from conftest import data_params
from test_mpi import EVERY_METHOD

MPIEXEC = Path(sys.executable).parent / "mpiexec"
A9A_PP = ["--dataset", "a9a", "--algorithm", "fednl-pp", "--participation", "0.5", "--reference-iterations", "3"]
# The real-signal runs: --tol 0 runs the whole budget, so a signal sent once the trace shows a round (rows reach
# the file in blocks, up to trace.FLUSH_SECONDS after their round) still lands well before the run ends.
SIGNAL_RUN = A9A_PP + ["--rounds", "100", "--tol", "0"]
A9A_PP_CONFIG = {"dataset": "a9a", "algorithm": "fednl-pp", "participation": 0.5, "reference_iterations": 3,
                 "quiet": True}  # A9A_PP as run() takes it


def same_trace(a: Path, b: Path) -> None:
    """Every metric of every round, x* and x_final, bitwise (the time_* columns are wall-clock)."""
    ta, tb = trace.load(a), trace.load(b)
    assert sorted(ta.metrics) == sorted(tb.metrics)
    assert ta.rounds == tb.rounds > 0
    for key in ta.metrics:
        if not key.startswith("time"):
            np.testing.assert_array_equal(ta.metrics[key], tb.metrics[key], err_msg=key)
    for key in ("x/final", "x/start", "partition/sizes", "partition/labels"):
        np.testing.assert_array_equal(ta.arrays[key], tb.arrays[key], err_msg=key)
    assert ta.attrs["status"] == tb.attrs["status"]


def resume_equals_uninterrupted(config: dict, tmp_path: Path, monkeypatch, at: int = 2):
    """Run ``config`` whole, then again stopped by a signal at round ``at`` and resumed: the resumed trace and x
    must equal the uninterrupted ones bitwise. Returns (the full run's result, the resumed trace's path)."""
    full = run({**config, "out": str(tmp_path / "full.h5")}, comm=SerialComm())
    signal_at_round(monkeypatch, at)
    part = tmp_path / "part.h5"
    assert run({**config, "out": str(part)}, comm=SerialComm()).status == "suspended"
    monkeypatch.undo()
    resumed = run({}, comm=SerialComm(), resume=part)
    np.testing.assert_array_equal(resumed.x, full.x)
    same_trace(tmp_path / "full.h5", part)
    return full, part


def signal_at_round(monkeypatch, k: int, ranks=None):
    """Raise the SIGTERM flag on ``ranks`` (default: all) as round k starts, as a signal would: the run
    finishes round k, every rank learns of the request in its exchange, and round k + 1 checkpoints."""
    original = checkpoint.Checkpointer.due

    def due(self, j):
        if j == k and (ranks is None or self.comm.rank in ranks):
            SIGNALS.requested = signal.SIGTERM
        return original(self, j)

    monkeypatch.setattr(checkpoint.Checkpointer, "due", due)


@pytest.mark.parametrize("name", data_params(sorted(EVERY_METHOD), EVERY_METHOD))
def test_every_method_resumes_to_the_uninterrupted_trace(name, tmp_path, monkeypatch):
    config = {"rounds": 8, "tol": 0.0, "quiet": True, "reference_iterations": 3, **EVERY_METHOD[name]}
    full = run({**config, "out": str(tmp_path / "full.h5")}, comm=SerialComm())
    assert full.status != "failed", full.message
    signal_at_round(monkeypatch, 2)
    part = tmp_path / "part.h5"
    stopped = run({**config, "out": str(part)}, comm=SerialComm())
    assert stopped.status == "suspended" and stopped.rounds == 3
    assert trace.load(part).attrs["status"] == "suspended"
    assert trace.load(part).rounds == stopped.rounds  # rows 0..k-1; round k starts from the checkpoint
    monkeypatch.undo()
    resumed = run({}, comm=SerialComm(), resume=part)
    assert resumed.status == full.status
    np.testing.assert_array_equal(resumed.x, full.x)
    same_trace(tmp_path / "full.h5", part)
    assert not checkpoint.path_for(part).exists()  # removed once the run finished
    (resume,) = trace.load(part).attrs["resumes"]
    assert resume["round"] == stopped.rounds and resume["mpi_size"] == 1 and resume["environment"]["ranks"]


@pytest.mark.data("a9a")
def test_periodic_checkpoints_and_what_they_hold(tmp_path):
    out = tmp_path / "t.h5"
    config = {"dataset": "a9a", "algorithm": "fednl", "rounds": 30, "tol": 0.0, "quiet": True, "checkpoint_every": 4,
              "reference_iterations": 3, "out": str(out)}
    seen = {}
    original = checkpoint.Checkpointer.save

    def spy(self, k, x, server, client, bits):
        original(self, k, x, server, client, bits)
        with open(self.path, "rb") as f:
            seen[k] = pickle.load(f)

    checkpoint.Checkpointer.save = spy
    try:
        run(config, comm=SerialComm())
    finally:
        checkpoint.Checkpointer.save = original
    assert sorted(seen) == list(range(4, 31, 4))
    t = trace.load(out)
    x_star = t.arrays["x/star"]
    for k, payload in seen.items():  # x^k is the iterate the trace records at row k
        assert payload["round"] == k and payload["mpi_size"] == 1
        assert np.linalg.norm(payload["x"] - x_star) == t.metrics["dist_to_opt"][k]
        # the ledger is the bits spent to reach x^k: row k of the trace
        assert payload["bits"]["up"] == t.metrics["bits_up"][k]
        # the saved learned Hessians: H^k = the mean of the clients' H_i^k (kept in step by the server)
        clients = pickle.loads(payload["clients"][0])
        np.testing.assert_allclose(payload["server"].H, clients.H.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(seen[28]["x"], x_at(out, 28))
    assert not checkpoint.path_for(out).exists()


def x_at(out, k):
    """x^k recomputed by a run of k rounds (an independent path to the same iterate)."""
    config = {"dataset": "a9a", "algorithm": "fednl", "rounds": k, "tol": 0.0, "quiet": True, "reference_iterations": 3,
              "out": str(out.with_name(f"x{k}.h5"))}
    return run(config, comm=SerialComm()).x


@pytest.mark.mpi
@pytest.mark.parametrize("name", data_params(["fednl-pp", "nl1", "scaffold", "fednl-ls-backtracking", "adiana-partial"],
                                             EVERY_METHOD))
def test_a_signal_on_one_rank_suspends_every_rank(name, tmp_path, monkeypatch):
    """Only the last rank "catches" SIGTERM: the request reaches rank 0 in the exchange and every rank
    checkpoints at the same round; resuming at this size gives the serial uninterrupted trace."""
    comm = MPIComm()
    assert comm.size > 1
    shared = Path(comm.comm.bcast(str(tmp_path) if comm.is_root else None))
    config = {"rounds": 8, "tol": 0.0, "quiet": True, "reference_iterations": 3, **EVERY_METHOD[name]}
    signal_at_round(monkeypatch, 2, ranks={comm.size - 1})
    stopped = run({**config, "out": str(shared / "part.h5")}, comm=comm)
    assert stopped.status == "suspended"
    assert comm.comm.allgather(stopped.rounds) == [3] * comm.size
    monkeypatch.undo()
    resumed = run({}, comm=comm, resume=shared / "part.h5")
    assert resumed.status != "failed"
    if comm.is_root:
        run({**config, "out": str(shared / "full.h5")}, comm=SerialComm())
        same_trace(shared / "full.h5", shared / "part.h5")


# ------------------------------------------------------------------ real signals through mpiexec
def start(n, args, cwd):
    launcher = [sys.executable] if n == 1 else [str(MPIEXEC), "-n", str(n), sys.executable]
    return subprocess.Popen(launcher + ["-m", "mpifed", "run", "--quiet"] + args, cwd=cwd, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows_written(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return len(f["metrics/round"])
    except (OSError, KeyError):  # not created yet, or caught mid-write
        return 0


def wait_for_rows(proc, path, rows, timeout=60):
    deadline = time.time() + timeout
    while rows_written(path) < rows:
        assert proc.poll() is None, f"the run ended before round {rows}: {proc.communicate()}"
        assert time.time() < deadline, f"no round {rows} after {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def a9a_pp_full(tmp_path_factory):
    """The uninterrupted trace of SIGNAL_RUN (A9A_PP, --rounds 100, --tol 0), the oracle of the signal tests below: computed once,
    in this process (traces do not depend on the rank count, nor on whether the CLI or run() starts the run)."""
    out = tmp_path_factory.mktemp("a9a-pp") / "full.h5"
    assert run({**A9A_PP_CONFIG, "rounds": 100, "tol": 0.0, "out": str(out)}, comm=SerialComm()).status != "failed"
    return out


def finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, err


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
@pytest.mark.data("a9a")
@pytest.mark.parametrize("ranks", [1, 4])
def test_sigterm_at_a_random_round_then_resume(ranks, tmp_path, a9a_pp_full):
    """SIGTERM at a random round -> exit 75 with a checkpoint; --resume ->
    the uninterrupted trace (computed serially: traces do not depend on the rank count)."""
    args = SIGNAL_RUN
    when = random.Random().randint(3, 40)
    proc = start(ranks, args + ["--out", "part.h5"], tmp_path)
    wait_for_rows(proc, tmp_path / "part.h5", when)
    os.killpg(proc.pid, signal.SIGTERM)  # what srun / scancel --signal do: every process gets it
    code, err = finish(proc)
    assert code == EXIT_SUSPENDED, err
    assert "continue with: mpifed run --resume part.h5" in err
    stopped = trace.load(tmp_path / "part.h5")
    assert stopped.attrs["status"] == "suspended" and when <= stopped.rounds < 100
    assert checkpoint.read(tmp_path / "part.h5")["round"] == stopped.rounds  # every completed round is in the trace
    code, err = finish(start(ranks, ["--resume", "part.h5"], tmp_path))
    assert code == 0, err
    same_trace(a9a_pp_full, tmp_path / "part.h5")


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
@pytest.mark.data("a9a")
def test_sigkill_leaves_a_readable_trace_and_a_usable_checkpoint(tmp_path, a9a_pp_full):
    args = SIGNAL_RUN + ["--checkpoint-every", "10"]
    proc = start(2, args + ["--out", "part.h5"], tmp_path)
    wait_for_rows(proc, tmp_path / "part.h5", 35)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    killed = trace.load(tmp_path / "part.h5")  # readable, up to its last complete round
    assert killed.attrs["status"] == "running" and killed.rounds >= 35
    payload = checkpoint.read(tmp_path / "part.h5")
    assert payload["round"] % 10 == 0 and 30 <= payload["round"] <= killed.rounds
    code, err = finish(start(2, ["--resume", "part.h5"], tmp_path))
    assert code == 0, err
    same_trace(a9a_pp_full, tmp_path / "part.h5")


# ------------------------------------------------------------------ bad resumes change nothing
def digest(*paths):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


@pytest.fixture(scope="module")
def suspended_once(tmp_path_factory):
    """A run of a9a suspended at round 3: its trace and checkpoint, made once for the tests below."""
    out = tmp_path_factory.mktemp("suspended") / "s.h5"
    with pytest.MonkeyPatch.context() as monkeypatch:
        signal_at_round(monkeypatch, 2)
        r = run({"dataset": "a9a", "algorithm": "fednl", "rounds": 20, "tol": 0.0, "quiet": True,
                 "reference_iterations": 3, "out": str(out)}, comm=SerialComm())
    assert r.status == "suspended"
    return out


@pytest.fixture
def suspended(suspended_once, tmp_path):
    """A copy of ``suspended_once`` (trace and checkpoint) of this test's own, which it may resume or damage."""
    out = tmp_path / suspended_once.name
    for src, dst in ((suspended_once, out), (checkpoint.path_for(suspended_once), checkpoint.path_for(out))):
        dst.write_bytes(src.read_bytes())
    return out


def cli(*args):
    from mpifed.cli import main

    return main(["run", *args])


@pytest.mark.data("a9a")
def test_a_resume_that_disagrees_with_the_checkpoint_lists_the_differences(suspended, capsys):
    before = digest(suspended, checkpoint.path_for(suspended))
    assert cli("--resume", str(suspended), "--lam", "0.01", "--compressor", "randk:k=5") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "compressor: checkpoint None, given 'randk:k=5'" in err and "lam: checkpoint 0.001, given 0.01" in err
    assert digest(suspended, checkpoint.path_for(suspended)) == before
    assert cli("--resume", str(suspended), "--rounds", "25") == 0  # how long to run may change
    assert trace.load(suspended).rounds == 26


@pytest.mark.data("a9a")
def test_resume_without_a_usable_checkpoint(suspended, tmp_path, capsys):
    ck = checkpoint.path_for(suspended)
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated, as by a full disk
    before = digest(suspended, ck)
    assert cli("--resume", str(suspended)) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert digest(suspended, ck) == before
    assert cli("--resume", str(tmp_path / "nothing.h5")) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
@pytest.mark.data("a9a")
def test_resume_on_another_rank_count_is_refused(suspended, tmp_path):
    before = digest(suspended, checkpoint.path_for(suspended))
    code, err = finish(start(2, ["--resume", str(suspended)], tmp_path))
    assert code == 2
    assert "written by 1 MPI rank(s)" in err and "mpiexec -n 1" in err
    assert digest(suspended, checkpoint.path_for(suspended)) == before


def test_a_checkpoint_of_the_flat_layout_still_loads(monkeypatch):
    """States pickled when the methods sat in mpifed/algorithms/ (mpifed.algorithms.fednl, nn_local, ...) load
    into the classes' new modules, so a run suspended before the move resumes after it."""
    import types

    from mpifed.algorithms.second_order import fednl

    old = types.ModuleType("mpifed.algorithms.fednl")  # the old module path, as the pickle names it
    old.ServerState = type("ServerState", (fednl.ServerState,), {"__module__": "mpifed.algorithms.fednl"})
    monkeypatch.setitem(sys.modules, "mpifed.algorithms.fednl", old)
    blob = pickle.dumps({"server": old.ServerState(H=np.arange(3.0))})
    assert b"mpifed.algorithms.fednl" in blob
    monkeypatch.delitem(sys.modules, "mpifed.algorithms.fednl")
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)  # plain pickle cannot find the old module
    state = checkpoint.client_state(blob, backend=type("B", (), {"name": "numpy"}))
    assert type(state["server"]) is fednl.ServerState and np.array_equal(state["server"].H, [0.0, 1.0, 2.0])
