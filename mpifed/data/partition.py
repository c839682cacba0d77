"""Assignment of dataset rows to clients.

The FedNL family of papers (Safaryan et al. 2022, FedNL; Islamov et al. 2021, Newton-Learn) split a LIBSVM
file into ``n`` clients of ``m`` consecutive samples each, discarding the remainder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpifed.errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; compare fields explicitly
class Partition:
    """Rows of all clients, concatenated in client order (a CSR-like layout).

    Attributes
    ----------
    rows : numpy.ndarray
        int64 dataset row indices; client ``i`` owns ``rows[offsets[i]:offsets[i + 1]]``.
    offsets : numpy.ndarray
        int64, length ``n_clients + 1``, non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == len(rows)``.
    """

    rows: np.ndarray
    offsets: np.ndarray

    def __post_init__(self):
        rows = np.array(self.rows, dtype=np.int64).reshape(-1)
        offsets = np.array(self.offsets, dtype=np.int64).reshape(-1)
        if (offsets.size < 1 or offsets[0] != 0 or offsets[-1] != rows.size
                or np.any(np.diff(offsets) < 0)):
            raise DataError(f"invalid partition: offsets must rise from 0 to {rows.size} (the number of rows), "
                            f"got {offsets[:3].tolist()}...{offsets[-2:].tolist()}")
        rows.setflags(write=False)  # shared between ranks' views: keep it immutable
        offsets.setflags(write=False)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "offsets", offsets)

    @property
    def n_clients(self) -> int:
        """Number of clients."""
        return self.offsets.size - 1

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client, int64, shape ``(n_clients,)``."""
        return np.diff(self.offsets)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and rebased offsets of the contiguous clients ``[lo, hi)`` (e.g. one rank's share)."""
        if not 0 <= lo <= hi <= self.n_clients:
            raise DataError(f"client block [{lo}, {hi}) is outside [0, {self.n_clients}]")
        return self.rows[self.offsets[lo]:self.offsets[hi]], self.offsets[lo:hi + 1] - self.offsets[lo]


def paper_split(n_rows: int, clients: int, samples_per_client: int, shuffle: int | None = None,
                name: str | None = None) -> Partition:
    """The papers' split: client ``i`` gets the ``i``-th block of ``m`` consecutive rows.

    Parameters
    ----------
    n_rows : int
        Rows in the dataset.
    clients : int
        Number of clients ``n >= 1``.
    samples_per_client : int
        ``m >= 1``; the first ``n * m`` rows are used and the rest dropped.
    shuffle : int, optional
        Seed: rows are first permuted by ``np.random.default_rng(shuffle).permutation(n_rows)``.
        ``None`` keeps file order, as in the papers.
    name : str, optional
        Dataset name used in error messages.

    Returns
    -------
    Partition
    """
    for label, value in (("clients", clients), ("samples_per_client", samples_per_client)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{label} must be an integer >= 1, got {value!r}")
    if shuffle is not None and (isinstance(shuffle, bool) or not isinstance(shuffle, (int, np.integer))
                                or shuffle < 0):
        raise DataError(f"shuffle must be None or an integer seed >= 0, got {shuffle!r}")
    total = clients * samples_per_client
    if total > n_rows:
        raise DataError(f"{clients} clients x {samples_per_client} samples = {total} rows exceed the "
                        f"{n_rows} rows of {name or 'the dataset'}")
    order = np.arange(n_rows) if shuffle is None else np.random.default_rng(shuffle).permutation(n_rows)
    return Partition(rows=order[:total], offsets=np.arange(clients + 1) * samples_per_client)
