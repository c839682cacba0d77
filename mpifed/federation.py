"""Setup of a rank's share of the federation: data, partition, client block, backend, held-out test set.

Every rank reads the same file, computes the same full partition (:mod:`mpifed.data.partition`, drawn from
the run's seed only) and keeps the rows of its own contiguous block of clients (:func:`mpifed.comm.client_range`);
a synthetic federation is generated per client, so a rank generates only its own clients. Nothing here depends
on the number of ranks except which clients a rank holds. Rank 0 alone loads the test set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse

from . import data
from .data.partition import make_partition, parse_spec
from .backend import Backend, get_backend
from .comm import client_range
from .config import PAPER_SPLITS, SYNTHETIC_DEFAULTS, RunConfig
from .errors import ConfigError, DataError
from .problems import LogisticBlock
from .rng import ClientStreams, participants

LABELS = (-1.0, 1.0)  # the columns of the label histogram (binary logistic regression)


@dataclass(frozen=True, eq=False)
class HeldOutSet:
    """A held-out set on rank 0: features already widened to the model's d (intercept included)."""

    A: scipy.sparse.csr_matrix
    b: np.ndarray
    name: str

    def evaluate(self, x, lam: float) -> tuple[float, float]:
        """(accuracy, loss) at x: accuracy = share of rows with b a^T x > 0 (a tie a^T x = 0 is an error);
        loss = mean log(1 + exp(-b a^T x)) + lam/2 ||x||^2, the training f_i evaluated on the test rows."""
        margin = self.b * (self.A @ np.asarray(x, dtype=np.float64))
        return float(np.mean(margin > 0)), float(np.mean(np.logaddexp(0.0, -margin)) + 0.5 * lam * float(x @ x))


@dataclass
class Federation:
    """What a rank holds: its block of clients and the facts every rank shares."""

    config: RunConfig
    comm: object
    backend: Backend
    block: LogisticBlock
    client_ids: np.ndarray
    n_clients: int
    d: int
    source: str
    on_abort: Callable | None = None
    tau: int = 0              # clients per round (0: all)
    m_min: int = 0            # smallest and largest client of the whole federation
    m_max: int = 0
    label_counts: np.ndarray | None = None   # (block clients, 2): rows labelled -1 and +1 per client of the block
    partition: dict = field(default_factory=dict)  # how the partition was drawn (spec, seed, redraws, moved_rows)
    test: HeldOutSet | None = None              # rank 0 only
    test_note: str = ""                      # why there is no test set, when there is none

    def streams(self, round: int) -> ClientStreams:
        """Client random streams for round k, with the round's participants (``active``)."""
        active = None
        if 0 < self.tau < self.n_clients and round >= 0:
            active = participants(self.config.seed, self.n_clients, self.tau, round)[self.client_ids]
        return ClientStreams(self.config.seed, self.client_ids, round, active)


def build_federation(config: RunConfig, comm) -> Federation:
    backend = get_backend(config.backend)
    scheme, _ = parse_spec(config.partition)  # bad specs fail before any data is read
    if config.dataset == "synthetic":
        if scheme not in ("paper", "iid"):
            raise ConfigError(f"--partition = {config.partition!r} does not apply to the synthetic dataset (its "
                              f"clients are generated one by one); valid: paper or iid")
        clients, m = config.split()
        lo, hi = client_range(clients, comm.size, comm.rank)
        ids = np.arange(lo, hi)
        features = config.features or SYNTHETIC_DEFAULTS["features"]
        A, b = data.synthetic_clients(ids, m, features, config.seed)
        offsets = np.arange(len(ids) + 1) * m
        source = f"synthetic(features={features}, seed={config.seed})"
        sizes, info, width = np.full(clients, m), {"spec": config.partition, "seed": config.seed}, features
    else:
        dataset = data.load(config.dataset, config.features)
        if scheme == "paper":
            clients, m = config.split()
            part = data.paper_split(dataset.A.shape[0], clients, m, config.shuffle, name=dataset.name)
        else:
            clients = config.clients or PAPER_SPLITS.get(config.dataset, (None,))[0]
            if not clients:
                raise ConfigError(f"dataset {config.dataset!r} has no default number of clients; give --clients")
            # --shuffle, when given, seeds the partition alone (so it can vary with x0 and the compressors fixed)
            seed = config.shuffle if config.shuffle is not None else config.seed
            part = make_partition(config.partition, dataset.b, clients, config.samples_per_client, seed,
                                       config.min_client_size, name=dataset.name)
        lo, hi = client_range(clients, comm.size, comm.rank)
        ids = np.arange(lo, hi)
        rows, offsets = part.block(lo, hi)
        A, b = dataset.A[rows], dataset.b[rows]
        source, sizes, info, width = dataset.source, part.sizes, part.info, dataset.A.shape[1]
        del dataset, part, rows  # the whole file is not held past this point: only this rank's rows
    if config.intercept:
        A = data.add_intercept(A)
    m_min, m_max = int(sizes.min()), int(sizes.max())
    block = LogisticBlock(scipy.sparse.csr_matrix(A), b, offsets, config.lam, backend, m_max=m_max)
    del A
    release_memory()  # parsing and the scatter matrices' construction leave freed heap behind
    client_of_row = np.repeat(np.arange(len(ids)), np.diff(offsets))
    label_counts = np.stack([np.bincount(client_of_row[b == v], minlength=len(ids)) for v in LABELS], axis=1)
    tau = config.participants(clients)
    fed = Federation(config, comm, backend, block, ids, clients, block.d, source, tau=tau, m_min=m_min,
                     m_max=m_max, label_counts=label_counts, partition=info)
    if comm.is_root:
        fed.test, fed.test_note = load_test_set(config, width)
        release_memory()  # and what parsing the test file left
    return fed


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


def load_test_set(config: RunConfig, width: int) -> tuple[HeldOutSet | None, str]:
    """The held-out set named by ``--test-dataset``, else the registry's test split of the training set.

    ``width`` is the training file's feature count before ``--intercept``. A test file may be narrower
    (LIBSVM files omit trailing zero features; it is padded with zero columns) but not wider, and a registered
    test file must have exactly the training width. Without ``--test-dataset``, a missing local copy of the
    default test split only disables the evaluation (the note says so).
    """
    spec = config.test_dataset
    if spec is None:
        if config.dataset == "synthetic":
            return None, "no test set (synthetic data)"
        info = data.DATASETS.get(config.dataset) or data.resolve(config.dataset)[1]
        if info is None or info.test is None:
            return None, f"no test set (the registry has no test split for {config.dataset})"
        try:
            data.resolve(info.test)
        except DataError as err:
            return None, f"no test set ({err})"
        spec = info.test
    test = data.load(spec)
    _, info = data.resolve(spec)
    d_test = test.A.shape[1]
    if d_test > width or (info is not None and d_test != width):
        raise DataError(f"--test-dataset {spec}: {d_test} features but the training set {config.dataset} has "
                        f"{width}; valid: a test file of the training set's width (--features sets it)")
    A = scipy.sparse.csr_matrix(test.A)
    A.resize((A.shape[0], width))  # zero columns for features the file never mentions
    if config.intercept:
        A = data.add_intercept(A)
    return HeldOutSet(A, test.b, test.name), f"test set {test.source}"
