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


def _local_rank() -> int:
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _cupy_backend() -> Backend | None:
    """CuPy on GPU (local rank mod #GPUs), or None where no GPU is usable."""
    try:
        import cupy
        import cupyx.scipy.sparse

        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return None
        device = _local_rank() % count
        cupy.cuda.Device(device).use()
        return Backend("cupy", cupy, cupyx.scipy.sparse, device)
    except Exception:  # no cupy, no driver, no device: all mean "not available"
        return None


def get_backend(name: str = "numpy") -> Backend:
    """The backend called ``name``: numpy, cupy (a GPU is required) or auto (cupy if usable)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name == "numpy":
        return NUMPY
    gpu = _cupy_backend()
    if gpu is None and name == "cupy":
        raise ConfigError("backend 'cupy' needs cupy and a visible CUDA GPU; none is usable here "
                          "(install mpifed[gpu] on a GPU node, or use --backend numpy)")
    return gpu or NUMPY
