"""Test setup: real data from ../shared/datasets when present, and MPI hygiene.

Under ``mpiexec ... pytest --with-mpi`` a test that fails on one rank would leave the
others waiting in a collective: the report hook aborts the whole world instead, after
printing the failure, so the launch fails fast with a non-zero code.
"""
import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if not os.environ.get("MPIFED_DATA") and SHARED_DATA.is_dir():  # unset or empty
    os.environ["MPIFED_DATA"] = str(SHARED_DATA)


def _world():
    if not os.environ.get("PMI_SIZE") and not os.environ.get("OMPI_COMM_WORLD_SIZE"):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def pytest_configure(config):
    world = _world()
    if world is not None and world.Get_rank() > 0:  # one report, from rank 0
        sys.stdout = open(os.devnull, "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    world = _world()
    if report.failed and world is not None and world.Get_size() > 1 and item.get_closest_marker("mpi"):
        sys.stderr.write(f"\n[rank {world.Get_rank()}] {item.nodeid} FAILED:\n{report.longreprtext}\n")
        sys.stderr.flush()
        world.Abort(1)


def real_data(name: str) -> Path:
    """Path of a shared LIBSVM file, or skip the test."""
    path = SHARED_DATA / "libsvm" / name
    if not path.is_file():
        pytest.skip(f"real dataset {name} not found at {path}")
    return path
