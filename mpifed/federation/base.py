"""What every federation is: a rank's block of clients and the facts all ranks share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..backend import Backend
from ..rng import ClientStreams, participants

LABELS = (-1.0, 1.0)  # the columns of the label histogram (binary logistic regression)


@dataclass
class Federation:
    """What a rank holds: its block of clients and the facts every rank shares."""

    seed: int
    comm: object
    backend: Backend
    block: object             # LogisticBlock or ImageBlock
    client_ids: np.ndarray
    n_clients: int
    d: int
    source: str
    on_abort: Callable | None = None
    tau: int = 0              # clients per round (0: all)
    m_min: int = 0            # smallest and largest client of the whole federation
    m_max: int = 0
    label_counts: np.ndarray | None = None   # (block clients, labels): rows per label and client of the block
    partition: dict = field(default_factory=dict)  # how the partition was drawn (spec, seed, redraws, moved_rows)
    test: object | None = None               # rank 0 only: a held-out set with evaluate(x, lam)
    test_note: str = ""                      # why there is no test set, when there is none
    validation: object | None = None         # rank 0 only: held-out training rows (--validation), as ``test``
    labels: tuple = LABELS                   # the label histogram's columns
    x0: np.ndarray | None = None             # the model's initial point (networks); None: the run's x^0 rule
    dtype: str = "float64"                   # the clients' arithmetic (networks may run float32)
    client_shape: np.ndarray | None = None   # (block clients, 3): rows m_i, non-zeros nnz_i, pairs_i (FLOP models)
    layers: tuple = ()                       # networks: (rows per sample, d_in + 1, d_out) per weighted layer
    batch: int = 0                           # networks: the mini-batch size of a local step

    def point(self, x):
        """The broadcast iterate as the clients compute with it: on the backend, in the federation's dtype."""
        a = self.backend.asarray(x)
        return a if self.dtype == "float64" else a.astype(self.dtype)

    def streams(self, round: int) -> ClientStreams:
        """Client random streams for round k, with the round's participants (``active``)."""
        active = None
        if 0 < self.tau < self.n_clients and round >= 0:
            active = participants(self.seed, self.n_clients, self.tau, round)[self.client_ids]
        return ClientStreams(self.seed, self.client_ids, round, active)


def client_shape(A, offsets) -> np.ndarray:
    """(clients, 3) per client of a block's rows ``A`` (CSR, client i owning ``offsets[i]:offsets[i+1]``): rows m_i,
    non-zeros nnz_i and pairs_i = sum_j nnz_ij (nnz_ij + 1) / 2, what a method's FLOP model reads."""
    n = len(offsets) - 1
    client = np.repeat(np.arange(n), np.diff(offsets))
    nnz = np.diff(A.indptr).astype(np.float64)
    return np.stack([np.diff(offsets).astype(np.float64), np.bincount(client, nnz, minlength=n),
                     np.bincount(client, nnz * (nnz + 1) / 2, minlength=n)], axis=1)


def release_memory() -> None:
    """Hand freed heap back to the operating system (glibc ``malloc_trim``; a no-op elsewhere).

    Setup frees hundreds of MB of temporaries (the parsed file, the pair lists of the Hessian scatter
    matrix) in pieces that glibc keeps mapped; without this, a rank's resident set after setup stays
    near the setup's peak (w8a: 270 MB instead of 165 MB per rank).
    """
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


MAPPED_VECTOR_BYTES = 1 << 20  # d-vectors of at least this size (d >= 131,072) are mapped one by one


def map_large_vectors(d: int) -> None:
    """At large d, have glibc serve every allocation of MAPPED_VECTOR_BYTES or more by its own mapping
    (``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc from raising that threshold as it does by default);
    a no-op for 8 d below that, and off glibc.

    A round at d = 10^6 allocates and frees some ten 8 MB vectors per exchange. With the default, moving
    threshold, glibc serves them from its heap after the first one is freed and keeps the freed ones there:
    the resident set grows to tens of vectors more than are ever live at once (newton-cg at d = 10^6: 209 MB
    above the start on the root instead of 146 MB). A mapped vector goes back to the system when freed.
    """
    import ctypes
    import sys

    if 8 * d < MAPPED_VECTOR_BYTES or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, MAPPED_VECTOR_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass
