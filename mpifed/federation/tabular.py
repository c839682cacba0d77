"""LIBSVM and synthetic federations of the tabular problems: a rank's rows as the ``--problem``'s block
(:data:`mpifed.problems.BLOCKS`: logistic or least squares), and the held-out set on rank 0.

A synthetic federation is generated per client, so a rank generates only its own clients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from .. import data
from ..backend import get_backend
from ..comm import client_range
from ..data.partition import make_partition, parse_spec
from ..errors import ConfigError, DataError
from ..problems import BLOCKS
from .base import LABELS, Federation, release_memory


@dataclass(frozen=True, eq=False)
class HeldOutSet:
    """A held-out set on rank 0: features already widened to the model's d (intercept included)."""

    A: scipy.sparse.csr_matrix
    b: np.ndarray
    name: str
    problem: type = BLOCKS["logistic"]  # the block class, whose row loss the test loss uses

    def evaluate(self, x, lam: float) -> tuple[float, float]:
        """(accuracy, loss) at x: accuracy = share of rows with b a^T x > 0 (a tie a^T x = 0 is an error);
        loss = mean l(a^T x, b) + lam/2 ||x||^2, the training f_i evaluated on the test rows."""
        t = self.A @ np.asarray(x, dtype=np.float64)
        loss = float(np.mean(self.problem.row_loss(t, self.b)) + 0.5 * lam * float(x @ x))
        return float(np.mean(self.b * t > 0)), loss


def build_tabular(spec, comm) -> Federation:
    """This rank's share of a LIBSVM or synthetic federation (``spec``: a :class:`~mpifed.plan.DataSpec`)."""
    backend = get_backend(spec.backend)
    scheme, _ = parse_spec(spec.partition)  # bad specs fail before any data is read
    if spec.dataset == "synthetic":
        if scheme not in ("paper", "iid"):
            raise ConfigError(f"--partition = {spec.partition!r} does not apply to the synthetic dataset (its "
                              f"clients are generated one by one); valid: paper or iid")
        clients, m = spec.clients, spec.samples_per_client
        lo, hi = client_range(clients, comm.size, comm.rank)
        ids = np.arange(lo, hi)
        features = spec.features or data.SYNTHETIC_DEFAULTS["features"]
        A, b = data.synthetic_clients(ids, m, features, spec.seed, spec.condition)
        offsets = np.arange(len(ids) + 1) * m
        kappa = "" if spec.condition is None else f", condition={spec.condition:g}"
        source = f"synthetic(features={features}, seed={spec.seed}{kappa})"
        sizes, info, width = np.full(clients, m), {"spec": spec.partition, "seed": spec.seed}, features
    else:
        dataset = data.load(spec.dataset, spec.features)
        clients = spec.clients
        if scheme == "paper":
            part = data.paper_split(dataset.A.shape[0], clients, spec.samples_per_client, spec.shuffle,
                                    name=dataset.name)
        else:
            # --shuffle, when given, seeds the partition alone (so it can vary with x0 and the compressors fixed)
            seed = spec.shuffle if spec.shuffle is not None else spec.seed
            part = make_partition(spec.partition, dataset.b, clients, spec.samples_per_client, seed,
                                       spec.min_client_size, name=dataset.name)
        lo, hi = client_range(clients, comm.size, comm.rank)
        ids = np.arange(lo, hi)
        rows, offsets = part.block(lo, hi)
        A, b = dataset.A[rows], dataset.b[rows]
        source, sizes, info, width = dataset.source, part.sizes, part.info, dataset.A.shape[1]
        del dataset, part, rows  # the whole file is not held past this point: only this rank's rows
    if spec.intercept:
        A = data.add_intercept(A)
    m_min, m_max = int(sizes.min()), int(sizes.max())
    block = BLOCKS[spec.problem](scipy.sparse.csr_matrix(A), b, offsets, spec.lam, backend, m_max=m_max)
    del A
    release_memory()  # parsing and the scatter matrices' construction leave freed heap behind
    client_of_row = np.repeat(np.arange(len(ids)), np.diff(offsets))
    label_counts = np.stack([np.bincount(client_of_row[b == v], minlength=len(ids)) for v in LABELS], axis=1)
    fed = Federation(spec.seed, comm, backend, block, ids, clients, block.d, source, tau=spec.tau, m_min=m_min,
                     m_max=m_max, label_counts=label_counts, partition=info)
    if comm.is_root:
        fed.test, fed.test_note = load_test_set(spec, width)
        release_memory()  # and what parsing the test file left
    return fed


def load_test_set(data_spec, width: int) -> tuple[HeldOutSet | None, str]:
    """The held-out set named by ``--test-dataset``, else the registry's test split of the training set.

    ``width`` is the training file's feature count before ``--intercept``. A test file may be narrower
    (LIBSVM files omit trailing zero features; it is padded with zero columns) but not wider, and a registered
    test file must have exactly the training width. Without ``--test-dataset``, a missing local copy of the
    default test split only disables the evaluation (the note says so).
    """
    spec, dataset, intercept = data_spec.test_dataset, data_spec.dataset, data_spec.intercept
    if spec is None:
        if dataset == "synthetic":
            return None, "no test set (synthetic data)"
        info = data.DATASETS.get(dataset) or data.resolve(dataset)[1]
        if info is None or info.test is None:
            return None, f"no test set (the registry has no test split for {dataset})"
        try:
            data.resolve(info.test)
        except DataError as err:
            return None, f"no test set ({err})"
        spec = info.test
    test = data.load(spec)
    _, info = data.resolve(spec)
    d_test = test.A.shape[1]
    if d_test > width or (info is not None and d_test != width):
        raise DataError(f"--test-dataset {spec}: {d_test} features but the training set {dataset} has "
                        f"{width}; valid: a test file of the training set's width (--features sets it)")
    A = scipy.sparse.csr_matrix(test.A)
    A.resize((A.shape[0], width))  # zero columns for features the file never mentions
    if intercept:
        A = data.add_intercept(A)
    return HeldOutSet(A, test.b, test.name, BLOCKS[data_spec.problem]), f"test set {test.source}"
