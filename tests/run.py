"""Run the whole suite: serially, then under mpiexec at 2 and 4 ranks (the MPI-marked tests).

    .venv/bin/python tests/run.py [extra pytest arguments]

Uses the mpiexec next to this interpreter (a foreign mpiexec would start silent singletons).
A stage fails when pytest fails, when no test ran (pytest's exit code 5) or none passed, and when
its time limit runs out (the whole process group is killed, so a hung MPI test cannot hang CI).

Tests that need a registry dataset (``@pytest.mark.data``) skip when it is neither local nor
downloadable (tests/conftest.py); the serial stage runs first and fills the cache for the MPI stages.
Each stage's conftest writes a small JSON report (``$MPIFED_TEST_REPORT``); the summary at the end
gives, per stage and in total, how many tests were skipped for want of data, by dataset.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]


def read_report(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def stage(name, command, env, timeout):
    """Run one pytest stage; returns (ok, report or None)."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    fd, report_path = tempfile.mkstemp(prefix="mpifed-test-report.", suffix=".json")
    os.close(fd)
    os.unlink(report_path)  # conftest writes it at the end of the session: absent means no report
    env = {**env, "MPIFED_TEST_REPORT": report_path}
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"=== {name}: timed out after {timeout} s", flush=True)
            return False, read_report(report_path)
        report = read_report(report_path)
    finally:
        if os.path.exists(report_path):
            os.unlink(report_path)
    ok = code == 0
    if code == 5:
        print(f"=== {name}: no tests ran (pytest exit 5): failing", flush=True)
    if report is not None:
        print(f"=== {name}: passed {report['passed']}, failed {report['failed']}, skipped {report['skipped']} "
              f"({report['data_skipped']} for want of data)", flush=True)
        if report["passed"] == 0 and code != 5:
            print(f"=== {name}: no test passed: failing", flush=True)
            ok = False
    else:
        print(f"=== {name}: no test report from conftest ({report_path})", flush=True)
    print(f"=== {name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    return ok, report


def data_skips(report):
    """``N (a9a 3, phishing 5)`` for one report, or ``?`` without a report."""
    if report is None:
        return "?"
    by = report.get("data_skips", {})
    return f"{report['data_skipped']}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(by.items()))})" if by else "")


def main(extra):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        sys.exit(f"tests/run.py: no mpiexec next to {sys.executable}; install the test extras: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results, reports = {}, {}
    results["serial"], reports["serial"] = stage("serial", PYTEST + extra + ["tests"], env, timeout=1200)
    for n in (2, 4):
        mpi_env = {**env, "MPIFED_TEST_NP": str(n)}
        command = [str(mpiexec), "-n", str(n)] + PYTEST + ["--with-mpi", "-m", "mpi"] + extra + ["tests"]
        name = f"{n} ranks"
        results[name], reports[name] = stage(f"mpiexec -n {n}", command, mpi_env, timeout=600)
    failed = [name for name, ok in results.items() if not ok]

    print()
    total, by_dataset = 0, Counter()
    for name, report in reports.items():
        print(f"tests/run.py: {name}: skipped for want of data: {data_skips(report)}")
        if report is not None:
            total += report["data_skipped"]
            by_dataset.update(report.get("data_skips", {}))
    print(f"tests/run.py: skipped for want of data: {data_skips({'data_skipped': total, 'data_skips': by_dataset})}"
          + (" (get them with `mpifed datasets fetch NAME`, or set MPIFED_DATA)" if total else ""))
    print(f"tests/run.py: stages passed: {len(results) - len(failed)}, failed: {len(failed)}"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
