"""The SLURM job scripts on a real one-node cluster (tests/slurm_cluster.py starts it, as root).

Marked ``slurm``; skipped with the reason where the cluster cannot be installed or started
(not root, no apt-get, daemons not coming up). Every subprocess has a time limit, and the
fixture cancels leftover jobs and stops the daemons, so a failing job cannot hang the suite.
"""
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data
from mpifed import trace
from mpifed.backend import NUMPY
from mpifed.comm import SerialComm
from slurm_cluster import ClusterError, SlurmCluster

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 150  # seconds for one sbatch --wait; a9a runs take a few seconds each


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("a throw-away SLURM cluster needs root (apt-get, slurmctld, slurmd)")
    real_data("a9a")
    c = SlurmCluster()
    try:
        c.start()
    except ClusterError as err:
        pytest.skip(f"no SLURM cluster here: {err}")
    print(f"\nSLURM cluster up in {c.startup_s:.2f} s")
    yield c
    c.stop()


def sbatch(cluster, args, timeout=JOB_TIMEOUT):
    """Run a command against the cluster with the test's own venv as the jobs' venv."""
    env = cluster.env(MPIFED_VENV=sys.prefix, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, args))} did not finish in {timeout} s\n{cluster.logs()}")
    submitted = re.search(r"Submitted batch job (\d+)", done.stdout)
    if "--wait" in args and submitted and "no longer found" in done.stderr:  # sbatch polled after the purge
        code = cluster.exit_code(int(submitted.group(1)))
        if code is not None:
            done = subprocess.CompletedProcess(done.args, code, done.stdout, done.stderr)
    print(f"{' '.join(map(str, args[:3]))} ...: exit {done.returncode} in {time.perf_counter() - start:.1f} s")
    return done


def max_row_norm(path: Path) -> float:
    """max_j ||a_j|| over the rows of a LIBSVM file, parsed here."""
    best = 0.0
    for line in path.read_text().splitlines():
        values = [float(item.split(":")[1]) for item in line.split()[1:]]
        best = max(best, math.sqrt(sum(v * v for v in values)))
    return best


@pytest.mark.slurm
def test_single_run_job_converges_and_records_the_job(cluster, tmp_path):
    config = ROOT / "jobs" / "a9a_newton.toml"
    out = tmp_path / "x.h5"
    done = sbatch(cluster, ["sbatch", "--wait", f"--output={tmp_path}/slurm-%j.out", "--time=5",
                            "jobs/slurm-run.sbatch", str(config), "--out", str(out)])
    job = re.search(r"Submitted batch job (\d+)", done.stdout)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert done.returncode == 0 and job, f"{done.stdout}{done.stderr}\n{logs}\n{cluster.logs()}"
    job = job.group(1)
    assert f"slurm-run: job {job} on {cluster.host}, 2 ranks" in logs

    t = trace.load(out)
    cfg = tomllib.loads(config.read_text())
    assert t.attrs["status"] == "converged"
    assert t.attrs["mpi_size"] == 2
    ranks = t.attrs["environment"]["ranks"]
    assert [r["slurm"]["job_id"] for r in ranks] == [job, job]
    assert [r["slurm"]["procid"] for r in ranks] == ["0", "1"]
    assert all(r["slurm"]["nodelist"] == cluster.host and r["host"].split(".")[0] == cluster.host for r in ranks)
    assert "MPICH" in t.attrs["environment"]["mpi_library"]

    # Newton: g_{k+1} <= L_H / (2 lam^2) g_k^2 (Taylor with ||H^-1|| <= 1/lam), L_H = max|phi'''| max ||a||^3,
    # and it stops at the first g_k <= tol.
    g = t.metrics["grad_norm"]
    lam, tol = cfg["lam"], cfg["tol"]
    lipschitz = max_row_norm(real_data("a9a")) ** 3 / (6 * math.sqrt(3))
    assert 2 <= t.rounds - 1 <= cfg["rounds"]
    assert g[-1] <= tol and np.all(g[:-1] > tol)
    assert np.all(np.diff(g) < 0)
    assert np.all(g[1:] <= lipschitz / (2 * lam**2) * g[:-1] ** 2 + 1e-15)


@pytest.mark.slurm
def test_sweep_array_job_runs_every_grid_point(cluster, tmp_path):
    grid_file = ROOT / "jobs" / "sweep-a9a.toml"
    grid = tomllib.loads(grid_file.read_text())
    points = [dict(zip(grid["grid"], combo)) for combo in itertools.product(*grid["grid"].values())]
    assert len(points) >= 4
    folder = tmp_path / "sweep"
    done = sbatch(cluster, [sys.executable, "-m", "mpifed", "sweep", str(grid_file), "--out", str(folder),
                            "--submit", "--wait"], timeout=60 + JOB_TIMEOUT * len(points) // 2)
    logs = "\n".join(p.read_text() for p in sorted(folder.glob("logs/*.out")))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{logs}\n{cluster.logs()}"

    index = json.loads((folder / "sweep.json").read_text())
    assert [r["point"] for r in index["runs"]] == points
    array_jobs = set()
    curves = {}
    for task, (entry, point) in enumerate(zip(index["runs"], points)):
        t = trace.load(entry["trace"])
        assert t.attrs["status"] in ("completed", "converged"), (entry, t.attrs["message"])
        assert t.attrs["mpi_size"] == 2 and t.rounds == grid["base"]["rounds"] + 1
        for key, value in {**grid["base"], **point}.items():
            assert t.config[key] == value, (task, key)
        ranks = t.attrs["environment"]["ranks"]
        assert {r["slurm"]["array_task_id"] for r in ranks} == {str(task)}
        array_jobs |= {r["slurm"]["array_job_id"] for r in ranks}
        assert (folder / "logs" / f"slurm-{ranks[0]['slurm']['array_job_id']}_{task}.out").is_file()
        curves[tuple(point.values())] = t.metrics["grad_norm"]
    assert len(array_jobs) == 1  # one array job
    # Each task ran its own point: Top-K is deterministic, so the seed changes nothing; Rand-K's seed does.
    np.testing.assert_array_equal(curves[("topk:k=8d", 0)], curves[("topk:k=8d", 1)])
    assert not np.array_equal(curves[("randk:k=8d", 0)], curves[("randk:k=8d", 1)])


@pytest.mark.slurm
def test_a_failing_job_returns_its_exit_code_and_one_line(cluster, tmp_path):
    done = sbatch(cluster, ["sbatch", "--wait", f"--output={tmp_path}/slurm-%j.out", "--time=2",
                            "jobs/slurm-run.sbatch", "--rounds", "5", "--tol", "-1", "--out", str(tmp_path / "x.h5")],
                  timeout=60)
    log = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert done.returncode == 2, log
    assert log.count("mpifed: error: --tol") == 1, log  # from rank 0 only
    assert not (tmp_path / "x.h5").exists()


def rows_so_far(path):
    try:
        return trace.load(path).rounds
    except Exception:  # not created yet, or caught mid-write
        return 0


@pytest.mark.slurm
def test_sigterm_suspends_the_job_and_a_new_job_resumes_it(cluster, tmp_path):
    """What --signal=TERM@60 does before the time limit, sent now with scancel; the resume job uses mpiexec.
    --tol 0: the run must still be going when the signal comes (a9a converges within seconds)."""
    out = tmp_path / "t.h5"
    done = sbatch(cluster, ["sbatch", f"--output={tmp_path}/slurm-%j.out", "--time=3", "jobs/slurm-run.sbatch",
                            "--dataset", "a9a", "--algorithm", "fednl", "--compressor", "randk:k=8d",
                            "--rounds", "100000", "--tol", "0", "--quiet", "--out", str(out)], timeout=30)
    job = re.search(r"Submitted batch job (\d+)", done.stdout).group(1)
    deadline = time.monotonic() + 60
    while rows_so_far(out) < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert rows_so_far(out) >= 3, (tmp_path / f"slurm-{job}.out").read_text()
    sbatch(cluster, ["scancel", "--signal=TERM", job], timeout=10)
    while job in sbatch(cluster, ["squeue", "-h", "-o", "%i"], timeout=10).stdout.split() and time.monotonic() < deadline:
        time.sleep(0.5)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "slurm-run: suspended with a checkpoint" in log and "Exited with exit code 75" in log, log
    t = trace.load(out)
    assert t.attrs["status"] == "suspended"
    stopped = t.rounds

    total = stopped + 5
    done = sbatch(cluster, ["sbatch", "--wait", f"--output={tmp_path}/slurm-%j.out", "--time=3", "--export=ALL,"
                            "MPIFED_LAUNCHER=mpiexec", "jobs/slurm-run.sbatch", "--resume", str(out),
                            "--rounds", str(total)])
    assert done.returncode == 0, done.stdout + done.stderr + "".join(p.read_text() for p in tmp_path.glob("*.out"))
    t = trace.load(out)
    assert t.attrs["status"] == "completed" and t.attrs["mpi_size"] == 2
    assert [r["mpi_size"] for r in t.attrs["resumes"]] == [2] and t.attrs["resumes"][0]["round"] <= stopped
    np.testing.assert_array_equal(t.metrics["round"], np.arange(total + 1))


def test_environment_records_slurm_ids_and_gpu_variables(monkeypatch):
    """Without a cluster: the per-rank record reads the SLURM and CUDA variables that are set."""
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_LOCALID",
                "SLURM_NODELIST", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    env = trace.environment(SerialComm(), NUMPY)
    (rank,) = env["ranks"]
    assert rank["slurm"] == {"job_id": "17", "array_task_id": "3"}
    assert rank["cuda_visible_devices"] == "1,2" and rank["gpu"] == "" and rank["backend"] == "numpy"
    assert rank["slurm_job"] == "17" and rank["pid"] == os.getpid()
