"""Array backend: numpy on CPU or cupy on the rank's GPU, chosen once per run.

The math modules receive a :class:`Backend` and use ``bk.xp`` (the array module) and
``bk.sparse`` (``scipy.sparse`` or ``cupyx.scipy.sparse``); only the comm and trace
boundaries move arrays to the host, with :meth:`Backend.to_host`, which synchronises
the CuPy stream first so MPI never reads a buffer the GPU is still writing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from .errors import ConfigError

BACKENDS = ("auto", "numpy", "cupy")


@dataclass(frozen=True)
class Backend:
    name: str
    xp: Any
    sparse: Any
    device: int | None = None

    def asarray(self, a):
        """Host or device array -> this backend's array (float64 unless integer)."""
        return self.xp.asarray(a)

    def to_host(self, a) -> np.ndarray:
        """Device -> host, after the stream has finished writing ``a``."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def csr(self, m: scipy.sparse.spmatrix):
        """A host scipy sparse matrix on this backend (CSR)."""
        m = scipy.sparse.csr_matrix(m)
        return m if self.name == "numpy" else self.sparse.csr_matrix(m)

    def describe(self) -> str:
        return self.name if self.device is None else f"{self.name}:{self.device}"


NUMPY = Backend("numpy", np, scipy.sparse)


LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK")
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


def local_rank_and_size(comm=None) -> tuple[int, int]:
    """This process's rank among the MPI ranks of its node, and their number.

    From MPI itself when a communicator with more than one rank is given (the ranks that share memory,
    ``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)``), else from the launcher's variables: MPICH/hydra
    ``MPI_LOCALRANKID``, Open MPI ``OMPI_COMM_WORLD_LOCAL_RANK``, SLURM ``SLURM_LOCALID``, PMI
    ``PMI_LOCAL_RANK``; (0, 1) when none is set.
    """
    mpi = getattr(comm, "comm", None)
    if mpi is not None and getattr(comm, "size", 1) > 1:
        node = mpi.Split_type(comm.MPI.COMM_TYPE_SHARED, key=comm.rank)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()
    rank = next((int(os.environ[v]) for v in LOCAL_RANK_VARS if os.environ.get(v, "").isdigit()), 0)
    size = next((int(os.environ[v]) for v in LOCAL_SIZE_VARS if os.environ.get(v, "").isdigit()), 1)
    return rank, max(size, rank + 1)


def _local_rank() -> int:
    return local_rank_and_size()[0]


_UNAVAILABLE = {"reason": ""}  # why the last cupy probe failed (for the error message)


def _cupy_backend() -> Backend | None:
    """CuPy on GPU (local rank mod #GPUs), or None where no GPU is usable (the reason in _UNAVAILABLE)."""
    try:
        import cupy
        import cupyx.scipy.sparse
    except Exception as err:  # ImportError, or a cupy built for another CUDA
        _UNAVAILABLE["reason"] = f"cupy cannot be imported ({type(err).__name__}: {err})".splitlines()[0]
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            _UNAVAILABLE["reason"] = "no CUDA GPU is visible"
            return None
        device = _local_rank() % count
        cupy.cuda.Device(device).use()
        return Backend("cupy", cupy, cupyx.scipy.sparse, device)
    except Exception as err:  # no driver, no device
        _UNAVAILABLE["reason"] = f"no usable CUDA GPU ({type(err).__name__}: {err})".splitlines()[0]
        return None


def get_backend(name: str = "numpy") -> Backend:
    """The backend called ``name``: numpy, cupy (a GPU is required) or auto (cupy if usable)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name == "numpy":
        return NUMPY
    gpu = _cupy_backend()
    if gpu is None and name == "cupy":
        raise ConfigError(f"backend 'cupy' needs cupy and a visible CUDA GPU: {_UNAVAILABLE['reason'] or 'none is usable'} "
                          f"(install mpifed[gpu] on a GPU node, or use --backend numpy)")
    return gpu or NUMPY
