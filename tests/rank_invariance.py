"""Rank-count checks in batches: several run configs per MPI test, each run once on every rank and once serially.

A test of the MPI stage (``mpiexec -n N python -m pytest --with-mpi -m mpi``) takes a batch of named configs
(:func:`batches` makes the ``parametrize`` values, one batch per set of registry datasets the configs need),
and :func:`distributed_and_serial` runs each config on all ranks, then each serially (the oracle) on one rank:
the serial runs are dealt round-robin to the ranks, so the oracles of a batch take every core, not rank 0's
alone. Rank 0 gets every pair back and checks them as a one-config test would.
"""
from pathlib import Path

import numpy as np
import pytest

from conftest import data_marks
from mpifed.comm import MPIComm, SerialComm
from mpifed.driver import run


def batches(configs: dict) -> list:
    """``parametrize`` values for ``configs`` (name -> run config): tuples of names, one per set of registry
    datasets needed (none: configs that run on any clone), each marked with its data; its id is its first name."""
    groups: dict[tuple, list[str]] = {}
    for name in sorted(configs):
        marks = data_marks(configs[name])
        groups.setdefault(tuple(marks[0].args) if marks else (), []).append(name)
    return [pytest.param(tuple(names), marks=[pytest.mark.data(*need)] if need else [],
                         id=f"{names[0]}+{len(names) - 1}" if len(names) > 1 else names[0])
            for need, names in groups.items()]


def distributed_and_serial(configs: dict, tmp_path: Path, own: dict | None = None) -> dict | None:
    """{name: (the run on every rank of MPI.COMM_WORLD, the serial run)} on rank 0, None on the others;
    ``own``, when given, receives every rank's own results of the distributed runs (name -> RunResult).

    ``configs``: name -> run config (its ``out`` is replaced). The distributed runs go one after the other on
    all ranks; then config i runs serially on rank i mod size, and rank 0 gathers the serial results.
    """
    comm = MPIComm()
    assert comm.size > 1  # else "distributed" would be the serial run and the check could not fail
    distributed = {name: run({**config, "out": str(tmp_path / f"{name}.mpi.h5")}, comm=comm)
                   for name, config in configs.items()}
    serial = {name: run({**config, "out": str(tmp_path / f"{name}.serial.h5")}, comm=SerialComm())
              for i, (name, config) in enumerate(configs.items()) if i % comm.size == comm.rank}
    gathered = comm.comm.gather(serial, root=0)
    if own is not None:
        own.update(distributed)
    if not comm.is_root:
        return None
    serial = {name: result for part in gathered for name, result in part.items()}
    assert sorted(serial) == sorted(configs)
    for name, result in distributed.items():
        assert result.metrics, f"{name}: rank 0 holds no metrics"
    return {name: (distributed[name], serial[name]) for name in configs}


def assert_same(pairs: dict | None, keys, exact: bool = False, optional: bool = False) -> None:
    """Each pair of :func:`distributed_and_serial` (on rank 0; nothing elsewhere): the same status (not failed),
    the metric columns ``keys`` and x to rounding (rtol 1e-12; x: atol 1e-15), or bitwise with ``exact``;
    ``optional``: a key the serial trace lacks is skipped."""
    if pairs is None:
        return
    for name, (distributed, serial) in pairs.items():
        assert distributed.status == serial.status != "failed", (name, serial.message)
        for key in keys:
            if optional and key not in serial.metrics:
                continue
            if exact:
                np.testing.assert_array_equal(distributed.metrics[key], serial.metrics[key], err_msg=f"{name}: {key}")
            else:
                np.testing.assert_allclose(distributed.metrics[key], serial.metrics[key], rtol=1e-12, atol=0,
                                           err_msg=f"{name}: {key}")
        if exact:
            np.testing.assert_array_equal(distributed.x, serial.x, err_msg=name)
        else:
            np.testing.assert_allclose(distributed.x, serial.x, rtol=1e-12, atol=1e-15, err_msg=name)
