"""Run the whole suite: serially, then under mpiexec at 2 and 4 ranks (the MPI-marked tests).

    .venv/bin/python tests/run.py [extra pytest arguments]

Uses the mpiexec next to this interpreter (a foreign mpiexec would start silent singletons).
pytest's exit code 5 (no tests collected) counts as a failure, and every stage runs under a
time limit that kills the whole process group, so a hung MPI test cannot hang CI.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]


def stage(name, command, env, timeout):
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"=== {name}: timed out after {timeout} s", flush=True)
        return False
    if code == 5:
        print(f"=== {name}: no tests ran (pytest exit 5): failing", flush=True)
    print(f"=== {name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    return code == 0


def main(extra):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        sys.exit(f"tests/run.py: no mpiexec next to {sys.executable}; install the test extras: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results = {"serial": stage("serial", PYTEST + extra + ["tests"], env, timeout=1200)}
    for n in (2, 4):
        mpi_env = {**env, "MPIFED_TEST_NP": str(n)}
        command = [str(mpiexec), "-n", str(n)] + PYTEST + ["--with-mpi", "-m", "mpi"] + extra + ["tests"]
        results[f"{n} ranks"] = stage(f"mpiexec -n {n}", command, mpi_env, timeout=600)
    failed = [name for name, ok in results.items() if not ok]
    print(f"\ntests/run.py: stages passed: {len(results) - len(failed)}, failed: {len(failed)}"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
