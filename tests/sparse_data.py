"""A small sparse LIBSVM file for tests whose point is the sparse (LIBSVM) code path, not the data.

Like the registry's one-hot sets (phishing, a9a), its features take the values 0, 0.5 and 1, some columns
are exact copies of others and most entries are exact zeros, so Top-K meets exact ties. It is generated from
a fixed seed and written atomically under the system's temporary folder, named by its content's parameters:
every rank of an MPI test, and every fresh clone, reads the same bytes without network or ../shared.
"""
import os
import tempfile
from pathlib import Path

import numpy as np


def sparse_binary(rows: int = 400, features: int = 40, seed: int = 0) -> str:
    """Path of the file (created on first use): ``rows`` samples, ``features`` columns, labels +-1."""
    path = Path(tempfile.gettempdir()) / "mpifed-tests" / f"sparse-binary-{rows}x{features}-s{seed}.svm"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(_lines(rows, features, seed))
        os.replace(tmp, path)  # ranks racing to create it write the same bytes
    return str(path)


def _lines(rows: int, features: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    X = np.where(rng.random((rows, features)) < 0.2, rng.choice([0.5, 1.0], size=(rows, features)), 0.0)
    X[:, features // 2:features // 2 + 3] = X[:, :3]  # tied columns, as one-hot encodings of the same field
    w = rng.standard_normal(features)
    labels = np.where(X @ w + 0.3 * rng.standard_normal(rows) > np.median(X @ w), 1, -1)
    out = []
    for label, row in zip(labels, X):
        cols = np.flatnonzero(row)
        out.append(" ".join([f"{label:+d}"] + [f"{j + 1}:{row[j]:g}" for j in cols]))
    return "\n".join(out) + "\n"
