"""Reproducible sums across clients: double-double accumulation (Knuth's TwoSum).

Summing client messages in plain floating point gives answers that depend on the order,
hence on how clients are spread over ranks. Carrying each partial sum as an unevaluated
pair hi + lo (about 106 bits) makes the rounded total independent of the order for all
practical purposes, so traces agree at any number of ranks (results must not depend on the rank count).
"""
from __future__ import annotations

import numpy as np

from . import kernels


def two_sum(a, b):
    """s, e with s = fl(a + b) and s + e = a + b exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def dd_add(a_hi, a_lo, b_hi, b_lo):
    """(a_hi + a_lo) + (b_hi + b_lo) in double-double."""
    s, e = two_sum(a_hi, b_hi)
    e = e + (a_lo + b_lo)
    return two_sum(s, e)


PIECE = 1 << 16  # elements per piece of the in-place helpers below: their temporaries stay near 0.5 MB each


def pieces(size: int):
    """Slices of PIECE elements covering 0..size-1 (the in-place helpers' steps; at least one, for size 0)."""
    return [slice(lo, lo + PIECE) for lo in range(0, max(size, 1), PIECE)]


def dd_add_into(a_hi, a_lo, b_hi, b_lo) -> None:
    """(a_hi, a_lo) := :func:`dd_add` (a_hi, a_lo, b_hi, b_lo), in place and piece by piece: the same bits,
    with temporaries of a piece (PIECE elements), not of the whole array. The four are 1-D of one length
    (``b`` may be any arrays that slice alike; it must not share memory with ``a``)."""
    for at in pieces(a_hi.shape[0]):
        a_hi[at], a_lo[at] = dd_add(a_hi[at], a_lo[at], b_hi[at], b_lo[at])


def dd_add_times_into(a_hi, a_lo, k: int, y, xp=np) -> None:
    """(a_hi, a_lo) := (a_hi, a_lo) + k y (:func:`dd_times`), in place and piece by piece (1-D arrays); ``y`` is
    an array or a function of a slice giving y's entries there (formed a piece at a time)."""
    for at in pieces(a_hi.shape[0]):
        a_hi[at], a_lo[at] = dd_add(a_hi[at], a_lo[at], *dd_times(k, y(at) if callable(y) else y[at], xp))


PIECE_BYTES = 1 << 22  # dd_sum_rows on host arrays works on ~4 MB row-major pieces of a few columns


def dd_sum_rows(X, xp=np, chunks: int = 32):
    """Double-double sum over the first axis: (hi, lo), each of shape X.shape[1:].

    A 2-D host array that is not row-major (a transposed or column-major block) is summed a
    few columns at a time, each piece copied row-major, instead of through strided row slices (3.6x
    faster on 20,000 x 5,050): every column's sum is its own, so the bits are those of the one-shot sum.
    """
    n = X.shape[0]
    if xp is np and X.ndim == 2 and n > 1 and not X.flags.c_contiguous:
        step = max(1, PIECE_BYTES // (8 * n))
        if step < X.shape[1]:
            parts = [_dd_sum_rows(np.ascontiguousarray(X[:, c:c + step]), xp, chunks) for c in range(0, X.shape[1], step)]
            return np.concatenate([h for h, _ in parts]), np.concatenate([lo for _, lo in parts])
    return _dd_sum_rows(X, xp, chunks)


def _dd_sum_rows(X, xp=np, chunks: int = 32):
    """:func:`dd_sum_rows` on the whole array at once.

    The rows are cut into at most ``chunks`` interleaved slices X[j::c]; the slices are added
    one after another into a double-double accumulator of shape (n/c, ...), with in-place
    operations (no temporaries the size of X), and the n/c partial sums then go through a
    pairwise tree. The Python loop has at most ``chunks`` steps whatever the number of clients.
    """
    n = X.shape[0]
    if n == 0:
        return xp.zeros(X.shape[1:]), xp.zeros(X.shape[1:])
    c = min(n, chunks)
    rows = -(-n // c)  # the accumulator's rows; a short last slice is padded with zeros
    if xp is np and X.ndim == 2 and X.dtype == np.float64 and kernels.loaded():  # the same additions, one pass
        flat = np.ascontiguousarray(X)
        hi, lo = np.zeros((rows, flat.shape[1])), np.zeros((rows, flat.shape[1]))
        kernels.dd_accumulate(flat, hi, lo, c)
        hi, lo = _dd_tree(hi, lo, xp)
        return hi.reshape(X.shape[1:]), lo.reshape(X.shape[1:])
    hi = xp.zeros((rows,) + X.shape[1:], dtype=X.dtype)
    lo, s, bb, e = (xp.zeros_like(hi) for _ in range(4))
    for j in range(c):
        x = X[j::c]
        k = x.shape[0]
        h, l, sk, bk, ek = hi[:k], lo[:k], s[:k], bb[:k], e[:k]
        xp.add(h, x, out=sk)                   # TwoSum(h, x): s = fl(h + x), err = (h - (s - bb)) + (x - bb)
        xp.subtract(sk, h, out=bk)
        xp.subtract(sk, bk, out=ek)
        xp.subtract(h, ek, out=ek)
        xp.subtract(x, bk, out=bk)
        ek += bk
        l += ek
        h[...] = sk
    return _dd_tree(hi, lo, xp)


def dd_sum_sparse_rows(index, values, width: int, xp=np, chunks: int = 32):
    """:func:`dd_sum_rows` of the (n, width) rows that hold ``values`` (n, K) at columns ``index`` (n, K;
    distinct within a row) and zeros elsewhere, without building those rows.

    The accumulation visits the same rows in the same slots and order as :func:`_dd_sum_rows`; only
    the zeros are skipped, and adding an exact zero leaves a double-double unchanged, so the result
    is the dense one bit for bit at K/width of its cost. The slots' tree runs in place, a few columns at a
    time (:func:`_dd_tree_into`): beyond the ceil(n/32) x width slots, its temporaries are of a piece.
    """
    n = index.shape[0]
    if n == 0:
        return xp.zeros(width), xp.zeros(width)
    c = min(n, chunks)
    rows = -(-n // c)
    hi, lo = xp.zeros((rows, width)), xp.zeros((rows, width))
    flat_hi, flat_lo = hi.reshape(-1), lo.reshape(-1)
    for j in range(c):
        at = index[j::c] + (xp.arange(len(index[j::c])) * width)[:, None]  # slot q holds rows q*c .. q*c + c - 1
        x = values[j::c]
        h = flat_hi[at]
        s = h + x
        bb = s - h
        flat_lo[at] += (h - (s - bb)) + (x - bb)
        flat_hi[at] = s
    return dd_slots_total(hi, lo, xp)


def dd_slots(n: int, width: int, chunks: int = 32, xp=np):
    """Zeroed (hi, lo) slots for :func:`dd_sum_sparse_rows`'s accumulation of n rows of ``width``, and how many
    consecutive rows share a slot row (row q goes to slot row q // that)."""
    c = max(min(n, chunks), 1)
    rows = -(-n // c)
    return xp.zeros((max(rows, 1), width)), xp.zeros((max(rows, 1), width)), c


def dd_slots_total(hi, lo, xp=np):
    """The double-double sum (hi, lo) of accumulated slots (:func:`dd_slots`): their pairwise tree."""
    rows = hi.shape[0]
    hi, lo = _dd_tree_into(hi, lo, xp)
    return (hi, lo) if rows == 1 else (hi.copy(), lo.copy())  # not views that keep all the slots


def _dd_tree(hi, lo, xp):
    """Renormalise the slots' (hi, lo) and add them pairwise down to one row."""
    hi, lo = two_sum(hi, lo)
    while hi.shape[0] > 1:
        if hi.shape[0] % 2:
            zero = xp.zeros((1,) + hi.shape[1:], dtype=hi.dtype)
            hi, lo = xp.concatenate([hi, zero]), xp.concatenate([lo, zero])
        hi, lo = dd_add(hi[0::2], lo[0::2], hi[1::2], lo[1::2])
    return hi[0], lo[0]


def _dd_tree_into(hi, lo, xp):
    """:func:`_dd_tree` of (rows, width) accumulators a few columns at a time, into their row 0 (returned as
    views; one row: the renormalisation in place). Every column's tree is its own, so the bits are those of
    the whole-array tree, with temporaries of a piece of columns."""
    step = max(1, PIECE // max(hi.shape[0], 1))
    for c in range(0, hi.shape[1], step):
        cols = slice(c, c + step)
        hi[0, cols], lo[0, cols] = _dd_tree(hi[:, cols], lo[:, cols], xp)
    return hi[0], lo[0]


def dd_times(k: int, y, xp=np):
    """k y exactly as a double-double (hi, lo), for an integer 0 <= k < 2^26: the sum of k copies of y
    (the regulariser's lam x, the same for every client) without adding them one by one.

    Dekker's split cuts y into two halves of at most 26 significant bits each, so k times either is exact."""
    y = xp.asarray(y, dtype=np.float64)
    c = 134217729.0 * y  # 2^27 + 1
    y_hi = c - (c - y)
    return two_sum(k * y_hi, k * (y - y_hi))


def dd_sum_blocks(blocks, xp=np, chunks: int = 32):
    """:func:`dd_sum_rows` of the column-wise concatenation of ``blocks`` (each (n, k_i)), without building it.

    Every column is summed on its own, so the result equals ``dd_sum_rows(concatenate(blocks, axis=1))``
    bit for bit. Narrow neighbours of one dtype (together at most PIECE_BYTES) are concatenated and summed in
    one pass, which saves the per-pass overhead that dominates on a few columns (the uplink's loss, bits,
    l_i and gradient); a wider block is summed on its own, so no copy of the uplink's (clients x T)
    Hessian fields is made.
    """
    groups, size = [], 0
    for b in blocks:
        nbytes = b.shape[0] * b.shape[1] * b.itemsize
        if groups and groups[-1][0].dtype == b.dtype and size + nbytes <= PIECE_BYTES:
            groups[-1].append(b)
            size += nbytes
        else:
            groups.append([b])
            size = nbytes
    his, los = zip(*(dd_sum_rows(g[0] if len(g) == 1 else xp.concatenate(g, axis=1), xp, chunks) for g in groups))
    return xp.concatenate(his), xp.concatenate(los)
