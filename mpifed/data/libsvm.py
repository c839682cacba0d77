"""Read LIBSVM/svmlight binary-classification files into a CSR matrix and +-1 labels.

Format: one sample per line, ``label idx:val idx:val ...`` with 1-based feature indices
(Chang & Lin, "LIBSVM: a library for support vector machines", ACM TIST 2011).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mpifed.errors import DataError

# Lines are split on "\n" only (str.splitlines would also break at \v, \f, ... and shift line numbers).
# A whole data line: a label, then ``idx:val`` entries. Validating the structure once per line with a
# compiled regex lets the numbers of the whole file be converted in one vectorized call afterwards.
_ROW = re.compile(r"(\S+)((?:\s+[0-9]+:[^\s:]+)*)\s*")
_ENTRY_HINT = "expected index:value with an integer index >= 1"


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; compare fields explicitly
class Dataset:
    """A binary-classification dataset.

    Attributes
    ----------
    A : scipy.sparse.csr_matrix
        Features, float64, shape ``(N, d)``, canonical (sorted indices, no duplicates).
    b : numpy.ndarray
        Labels, float64, shape ``(N,)``, values exactly -1.0 or +1.0.
    name : str
        Short name (the registry name or the file name).
    source : str
        Where the data came from (an absolute file path, or a generator description).
    """

    A: sp.csr_matrix
    b: np.ndarray
    name: str
    source: str


def _check_line(where: str, lineno: int, line: str) -> None:
    """Raise the precise error for the first bad token of a line; return if the line is fine."""
    parts = line.split()
    if not parts:
        return
    try:
        ok = bool(np.isfinite(float(parts[0])))
    except ValueError:
        ok = False
    if not ok:
        raise DataError(f"{where}:{lineno}: malformed label {parts[0]!r} (expected a number)")
    for tok in parts[1:]:
        idx, sep, val = tok.partition(":")
        ok = bool(sep) and idx.isascii() and idx.isdigit() and int(idx) >= 1 and ":" not in val
        try:
            ok = ok and bool(np.isfinite(float(val)))
        except ValueError:
            ok = False
        if not ok:
            raise DataError(f"{where}:{lineno}: malformed entry {tok!r} ({_ENTRY_HINT})")


def _entries(rests: list, n_entries: int) -> np.ndarray | None:
    """All entries of the file as an (n_entries, 2) float64 array of (index, value), or None if a token
    is not a number. ``rests`` (the rows' entry texts) is emptied once they are joined into one text.

    The whole "idx val idx val ..." text goes through one ``numpy.fromstring`` call: no Python object per
    token (a list of token strings took about 50 bytes per token, some 60 MB for w8a). ``fromstring``
    reads a subset of what ``float()`` reads (no ``1_0``, no non-ASCII digits) and stops at anything
    else; then the plain per-token conversion decides, as before. Where both read a token, they agree
    (both round correctly).
    """
    joined = " ".join(rests).replace(":", " ")
    rests.clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy < 2.x warns where later ones raise
            values = np.fromstring(joined, dtype=np.float64, sep=" ")
        if values.size == 2 * n_entries:
            return values.reshape(-1, 2)
    except (ValueError, DeprecationWarning):
        pass
    try:
        return np.array(joined.split(), dtype=np.float64).reshape(-1, 2)
    except ValueError:
        return None


def _binary_labels(where: str, raw: np.ndarray) -> np.ndarray:
    """Map exactly two distinct label values to -1 (smaller) and +1 (larger)."""
    values = np.unique(raw)
    if values.size != 2:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise DataError(f"{where}: labels must take exactly 2 distinct values (binary classification), "
                        f"found {values.size}: {shown}")
    return np.where(raw == values[1], 1.0, -1.0)


def read_libsvm(path, n_features: int | None = None) -> Dataset:
    """Parse a LIBSVM file.

    Parameters
    ----------
    path : str or Path
        The file. Blank lines, trailing spaces, ``# comments``, CRLF endings and a missing final newline
        are tolerated.
    n_features : int, optional
        Number of columns ``d``. ``None`` uses the largest index that occurs in the file; pass the
        dataset's official dimension so that train and test splits get the same width.

    Returns
    -------
    Dataset
        ``name`` is the file name, ``source`` the absolute path; explicit ``idx:0`` entries count towards
        the width but are not stored.

    Raises
    ------
    DataError
        Missing or empty file, a malformed label or entry (naming ``file:line``), an index beyond
        ``n_features``, a repeated index within a row, or labels that are not binary.
    """
    path = Path(path)
    where = str(path)
    if n_features is not None and (isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer))
                                   or n_features < 1):
        raise DataError(f"{where}: n_features must be an integer >= 1, got {n_features!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {where}") from None
    except IsADirectoryError:
        raise DataError(f"dataset path is a directory, not a file: {where}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not a text file (byte {err.start} is not UTF-8)") from None

    lines = text.split("\n")
    del text  # the file's text is not held while its lines are parsed (an error re-reads it)
    labels, rests, counts, linenos = [], [], [], []
    for lineno, line in enumerate(lines, 1):
        if "#" in line:
            line = line[:line.index("#")]
        line = line.strip()
        if not line:
            continue
        m = _ROW.fullmatch(line)
        if m is None:
            _check_line(where, lineno, line)
            raise DataError(f"{where}:{lineno}: malformed line (expected 'label index:value ...' "
                            f"separated by spaces)")
        rest = m.group(2)
        labels.append(m.group(1))
        rests.append(rest)
        counts.append(rest.count(":"))  # the regex allows exactly one ':' per entry
        linenos.append(lineno)
    if not labels:
        raise DataError(f"{where}: no data rows (empty file)")

    linenos = np.asarray(linenos, dtype=np.int64)
    try:
        raw_labels = np.array(labels, dtype=np.float64)
        labels_ok = bool(np.isfinite(raw_labels).all())
    except ValueError:
        labels_ok = False
    if not labels_ok:
        for ln, lab in zip(linenos, labels):
            _check_line(where, int(ln), lab)
        raise DataError(f"{where}: malformed labels (expected numbers)")

    del lines
    pairs = _entries(rests, int(sum(counts)))
    if pairs is None:
        bad = np.ones(int(sum(counts)), dtype=bool)  # which one is unknown: scan from the first entry
    else:
        bad = ~np.isfinite(pairs[:, 1]) | (pairs[:, 0] < 1)
    if bad.any():
        # Rare path: re-scan from the first suspect line to name the exact token.
        start = int(np.repeat(linenos, counts)[np.argmax(bad)])
        for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if lineno >= start:
                _check_line(where, lineno, line.split("#", 1)[0])
        raise DataError(f"{where}: malformed entries ({_ENTRY_HINT})")

    indices = pairs[:, 0].astype(np.int64) - 1
    values = np.ascontiguousarray(pairs[:, 1])
    del pairs
    max_index = int(indices.max()) + 1 if indices.size else 0
    if n_features is None:
        n_features = max(max_index, 1)
    elif max_index > n_features:
        first = int(np.argmax(indices >= n_features))
        ln = int(np.repeat(linenos, counts)[first])
        raise DataError(f"{where}:{ln}: feature index {indices[first] + 1} exceeds the number of features "
                        f"{n_features} (use --features to set it)")

    indptr = np.zeros(len(labels) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    A = sp.csr_matrix((values, indices, indptr), shape=(len(labels), int(n_features)))
    del values, indices
    A.sort_indices()  # LIBSVM files are sorted already; this is a no-op check for them
    same = np.diff(A.indices) == 0  # neighbours with one index, unless the second starts a row
    starts = A.indptr[1:-1]
    same[starts[(starts > 0) & (starts < A.nnz)] - 1] = False
    if same.any():
        pos = int(np.argmax(same))
        row = int(np.searchsorted(A.indptr, pos, side="right")) - 1
        raise DataError(f"{where}:{linenos[row]}: feature index {A.indices[pos] + 1} "
                        f"appears twice in one row")
    A.eliminate_zeros()
    return Dataset(A=A, b=_binary_labels(where, raw_labels), name=path.name, source=str(path.resolve()))


def add_intercept(A) -> sp.csr_matrix:
    """Append a column of ones (the bias feature): ``(N, d)`` -> ``(N, d + 1)``, canonical CSR float64."""
    ones = sp.csr_matrix(np.ones((A.shape[0], 1)))
    return sp.hstack([sp.csr_matrix(A, dtype=np.float64), ones], format="csr")
