"""The MPI transport, and its single-process stand-in. mpi4py is imported here and nowhere else.

Round traffic uses the buffer-based (uppercase) calls on contiguous float64 arrays:
``Bcast`` of the iterate, ``Gatherv`` of per-client payloads the server needs one by one,
and ``Reduce`` of the clients' summed messages, with a
user-defined double-double sum so totals do not depend on how clients are spread over
ranks (see :mod:`mpifed.ddsum`). Lowercase pickled calls are used only at setup and for checkpoints.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .ddsum import dd_add, pieces
from .errors import ConfigError, MpifedError


def client_range(n_clients: int, size: int, rank: int) -> tuple[int, int]:
    """The contiguous block [lo, hi) of client ids hosted by ``rank`` (sizes differ by at most one)."""
    if n_clients < size:
        raise ConfigError(f"{n_clients} clients cannot be spread over {size} MPI ranks; "
                          f"use at most {n_clients} ranks or more clients")
    return rank * n_clients // size, (rank + 1) * n_clients // size


def collective(comm, fn):
    """Run ``fn`` on every rank; if it fails anywhere, raise the first failure everywhere."""
    result, error = None, None
    try:
        result = fn()
    except MpifedError as err:
        error = str(err)
    except Exception as err:  # a bug must not leave the other ranks waiting
        error = f"internal error on rank {comm.rank}: {type(err).__name__}: {err}"
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise MpifedError(errors[0])
    return result


class SerialComm:
    """One process: every collective is the identity."""

    rank, size = 0, 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def bcast_array(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def reduce_dd(self, pairs: np.ndarray) -> np.ndarray | None:
        """Sum over ranks of double-double values (k x 2 contiguous: hi, lo), rounded, on the root.

        Every rank passes the double-double sum of its own clients (:func:`ddsum.dd_sum_rows`).
        """
        return self.reduce_dd_parts([(pairs[:, 0], pairs[:, 1])])

    def reduce_dd_parts(self, parts) -> np.ndarray | None:
        """:meth:`reduce_dd` of the message that lists ``parts`` ((hi, lo) pairs of 1-D host arrays) one after
        another, without building it: REDUCE_PIECE pairs at a time are copied into one buffer, summed over the
        ranks in place and rounded into the root's total. Each pair is summed on its own, so the pieces give
        the bits of one reduction of the whole message, and no message-sized buffer exists but the total."""
        size = sum(len(hi) for hi, _ in parts)
        total = np.empty(size) if self.is_root else None
        buf = np.empty((min(REDUCE_PIECE, max(size, 1)), 2))
        filled = done = 0
        for hi, lo in parts:
            at = 0
            while at < len(hi):
                k = min(len(hi) - at, len(buf) - filled)
                buf[filled:filled + k, 0], buf[filled:filled + k, 1] = hi[at:at + k], lo[at:at + k]
                filled, at = filled + k, at + k
                if filled == len(buf) or done + filled == size:
                    self._reduce_piece(buf[:filled])
                    if total is not None:
                        np.add(buf[:filled, 0], buf[:filled, 1], out=total[done:done + filled])
                    done, filled = done + filled, 0
        return total

    def _reduce_piece(self, piece) -> None:
        """The sum over ranks of a contiguous (k x 2) piece of pairs, in place on the root (one rank: itself)."""

    def gather_rows(self, rows: np.ndarray, n_clients: int) -> np.ndarray | None:
        """Every rank's (clients x k) float64 block, stacked in global client order on the root."""
        return rows

    def allgather(self, obj) -> list:
        return [obj]

    def gather_objects(self, obj) -> list | None:
        """Every rank's (pickled) object, in rank order, on the root (checkpoints only)."""
        return [obj]

    def scatter_objects(self, objs):
        """objs[r] from the root to rank r (resuming a checkpoint)."""
        return objs[0]

    def abort(self, code: int = 1):
        sys.exit(code)

    def library(self) -> str:
        return "none (serial)"


REDUCE_PIECE = 1 << 16  # (hi, lo) pairs per MPI Reduce call of reduce_dd_parts (1 MB)
_DD_OP = _PAIR = None  # one user-defined op and datatype per process: the number of ops is capped, and none is freed


class MPIComm(SerialComm):
    """MPI.COMM_WORLD (or a given communicator)."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm or MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        global _DD_OP, _PAIR
        if _DD_OP is None:
            _DD_OP = MPI.Op.Create(_dd_sum_op, commute=True)
            _PAIR = MPI.DOUBLE.Create_contiguous(2).Commit()
        self._dd_op, self._pair = _DD_OP, _PAIR

    def bcast_array(self, buf):
        self.comm.Bcast([buf, self.MPI.DOUBLE], root=0)
        return buf

    def _reduce_piece(self, piece):
        message = [piece, piece.shape[0], self._pair]
        if self.is_root:
            self.comm.Reduce(self.MPI.IN_PLACE, message, op=self._dd_op, root=0)
        else:
            self.comm.Reduce(message, None, op=self._dd_op, root=0)

    def gather_rows(self, rows, n_clients):
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        width = rows.shape[1]
        if not self.is_root:
            self.comm.Gatherv([rows, self.MPI.DOUBLE], None, root=0)
            return None
        counts = [(hi - lo) * width for lo, hi in (client_range(n_clients, self.size, r) for r in range(self.size))]
        out = np.empty((n_clients, width))
        self.comm.Gatherv([rows, self.MPI.DOUBLE], [out, counts, self.MPI.DOUBLE], root=0)
        return out

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def gather_objects(self, obj):
        return self.comm.gather(obj, root=0)

    def scatter_objects(self, objs):
        return self.comm.scatter(objs, root=0)

    def abort(self, code: int = 1):
        sys.stderr.flush()
        time.sleep(0.2)  # let the launcher forward this rank's message before it tears the job down
        self.comm.Abort(code)
        os._exit(code)  # Abort may return before the launcher kills this process

    def library(self) -> str:
        import mpi4py

        return f"{self.MPI.Get_library_version().splitlines()[0].strip()} (mpi4py {mpi4py.__version__})"


def _dd_sum_op(inbuf, inoutbuf, datatype):
    """MPI user op: inout = in + inout on (hi, lo) pairs."""
    a = np.frombuffer(inbuf, dtype=np.float64).reshape(-1, 2)
    b = np.frombuffer(inoutbuf, dtype=np.float64).reshape(-1, 2)
    for at in pieces(b.shape[0]):  # a piece at a time: temporaries of a piece, not of the message
        b[at, 0], b[at, 1] = dd_add(a[at, 0], a[at, 1], b[at, 0], b[at, 1])


def world() -> SerialComm:
    """MPIComm over COMM_WORLD when launched with more than one rank, else SerialComm."""
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MPIComm() if MPI.COMM_WORLD.Get_size() > 1 else SerialComm()
