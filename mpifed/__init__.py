"""mpifed: second-order federated optimization simulated over MPI."""
import os as _os

__version__ = "0.1.0"


def _one_blas_thread_per_rank() -> None:
    """Under a multi-rank launch, one BLAS/OpenMP thread per rank unless the user chose.

    Ranks already occupy the cores; BLAS threads on top of them oversubscribe the machine
    and busy-wait (a 301 x 301 Cholesky went from 2 ms to 0.5 s at 4 ranks on 2 cores).
    Must run before numpy loads its BLAS, hence here.
    """
    size = next((_os.environ[v] for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS") if v in _os.environ), "1")
    if size.isdigit() and int(size) > 1:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            _os.environ.setdefault(var, "1")


_one_blas_thread_per_rank()


def run(config, comm=None):
    """Run one configuration on every rank (see :func:`mpifed.driver.run`)."""
    from .driver import run as _run

    return _run(config, comm)
