"""mpifed: second-order federated optimization simulated over MPI."""
import os as _os

from .version import __version__  # noqa: F401  (setup.cfg reads it from mpifed.version)


def _one_blas_thread() -> None:
    """One BLAS/OpenMP thread per process unless the user chose otherwise.

    Ranks already occupy the cores: BLAS threads on top of them oversubscribe the machine
    and busy-wait (a 301 x 301 Cholesky went from 2 ms to 0.5 s at 4 ranks on 2 cores), and
    a threaded BLAS rounds differently from a serial one, which would make a 1-rank run
    differ from a 4-rank run. Set here, before numpy loads its BLAS; the driver also limits
    the pool at run time (threadpoolctl) for scripts that imported numpy first.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(var, "1")


_one_blas_thread()


def run(config, comm=None):
    """Run one configuration on every rank (see :func:`mpifed.driver.run`)."""
    from .driver import run as _run

    return _run(config, comm)


def load_trace(path):
    """Read one HDF5 trace: metrics as numpy arrays, attributes decoded (see :func:`mpifed.trace.load`)."""
    from .trace import load

    return load(path)
