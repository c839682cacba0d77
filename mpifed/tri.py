"""Packed upper-triangle storage of symmetric d x d matrices.

A symmetric matrix is stored as its T = d(d+1)/2 upper-triangle entries in row-major
order (``numpy.triu_indices``). Compressors act on this vector, as FedNL's do, and a
batch of matrices is an array of shape (..., T).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


ROW_CHUNK_BYTES = 1 << 22  # row-wise work on (n, T) blocks goes some 4 MB of rows at a time on the host,
GPU_CHUNK_BYTES = 1 << 28  # and some 256 MB on a GPU (fewer, larger kernels)


def size(d: int) -> int:
    """T = d(d+1)/2, the number of packed entries."""
    return d * (d + 1) // 2


@lru_cache(maxsize=16)
def _indices(d: int):
    rows, cols = np.triu_indices(d)
    diag = np.flatnonzero(rows == cols)
    # Off-diagonal entries appear twice in the full matrix.
    multiplicity = np.where(rows == cols, 1.0, 2.0)
    return rows, cols, diag, multiplicity


def flat_index(i, j, d: int):
    """Packed position of entry (i, j) with i <= j (vectorised)."""
    return i * d - i * (i - 1) // 2 + (j - i)


def rows_cols(d: int):
    """Row and column of each packed entry."""
    return _indices(d)[:2]


def diagonal(d: int) -> np.ndarray:
    """Packed positions of the diagonal entries."""
    return _indices(d)[2]


def multiplicity(d: int) -> np.ndarray:
    """1 for diagonal entries, 2 for off-diagonal ones (their count in the full matrix)."""
    return _indices(d)[3]


def pack(full, xp=np):
    """(..., d, d) symmetric -> (..., T), keeping the upper triangle."""
    rows, cols = rows_cols(full.shape[-1])
    return full[..., xp.asarray(rows), xp.asarray(cols)]


def unpack(packed, d: int, xp=np):
    """(..., T) -> (..., d, d) symmetric."""
    rows, cols = (xp.asarray(a) for a in rows_cols(d))
    full = xp.zeros(packed.shape[:-1] + (d, d), dtype=packed.dtype)
    full[..., rows, cols] = packed
    full[..., cols, rows] = packed
    return full


def frobenius(packed, xp=np):
    """Frobenius norm of each packed matrix along the last axis."""
    weights = xp.asarray(multiplicity(_dim(packed.shape[-1])))
    # A row-wise sum (not a BLAS gemv) so a client's norm never depends on the batch it is in;
    # a batch goes a few rows at a time, so its (n, T) temporaries are never all allocated. Each piece
    # is made row-major first: a row's sum is then pairwise along it whatever the block's layout
    # (column-major dense-path Hessians, a slice of a chunked block), so the bits never depend on it.
    if packed.ndim != 2:
        return xp.sqrt((packed * packed * weights).sum(axis=-1))
    out = xp.empty(packed.shape[0], dtype=xp.result_type(packed.dtype, weights.dtype))
    for rows in row_chunks(*packed.shape, gpu=xp is not np):
        part = xp.ascontiguousarray(packed[rows])
        square = part * part
        square *= weights  # (part * part) * weights, without a second temporary
        out[rows] = xp.sqrt(square.sum(axis=-1))
    return out


def row_chunks(n: int, T: int, gpu: bool = False) -> list:
    """Slices of rows covering 0..n-1, each about ROW_CHUNK_BYTES of float64, for row-wise work on (n, T)."""
    step = max(1, (GPU_CHUNK_BYTES if gpu else ROW_CHUNK_BYTES) // (8 * max(T, 1)))
    return [slice(lo, min(lo + step, n)) for lo in range(0, n, step)]


def _dim(t: int) -> int:
    d = int((np.sqrt(8 * t + 1) - 1) // 2)
    if size(d) != t:
        raise ValueError(f"{t} is not a triangular number d(d+1)/2")
    return d
