"""Launched under mpiexec by tests/test_launch.py: rank 1's client step raises in round 3."""
import sys

import numpy as np

from mpifed.cli import main
from mpifed.problems.logistic import LogisticBlock

calls = {"n": 0}
original = LogisticBlock.derivatives


def failing(self, x, hessian=True):
    from mpi4py import MPI

    calls["n"] += 1
    if MPI.COMM_WORLD.Get_rank() == 1 and calls["n"] == 4:  # setup, rounds 0 and 1, then round 2 fails
        raise FloatingPointError("injected failure on rank 1")
    return original(self, x, hessian)


LogisticBlock.derivatives = failing
np.seterr(all="ignore")
sys.exit(main(sys.argv[1:]))
