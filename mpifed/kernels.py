"""Compiled loops (numba) for the per-round hot paths of the packed-Hessian methods, on the host.

Each kernel does the floating-point operations of the numpy code it stands in for, in the same order, so a
trace is the same bit for bit with or without them: they only fuse passes that numpy makes one after another
over (clients x T) arrays, and keep a client's packed row in cache while they do.

* :func:`packed_hessians`: (1/m_i) sum_j h_ij a_ij a_ij^T + lam I, packed, from the CSR rows themselves, where
  numpy multiplies the precomputed scatter matrix by h (each entry sums its rows in ascending order, as
  scipy's CSR product does, so the scatter matrix, some 100 MB per rank on w8a, is never built);
* :func:`topk_update`: FedNL's client step after the Hessian, for Top-K: the difference, its Frobenius norm
  (numpy's pairwise sum), the K entries of largest magnitude (ties to the lower index, as
  :func:`mpifed.compressors.top_entries`), H_i += alpha S_i and the double-double slots of
  :func:`mpifed.ddsum.dd_sum_sparse_rows`, one client at a time.

``MPIFED_KERNELS=numpy`` turns them off (the tests compare the two paths); without numba installed the
numpy code runs. Kernels compile on first use and are cached beside this file.
"""
from __future__ import annotations

import os

import numpy as np

_KERNELS = None  # the compiled module once loaded; False when numba is missing or turned off


def enabled() -> bool:
    """Whether the compiled kernels run (numba importable and ``MPIFED_KERNELS`` is not ``numpy``)."""
    return _load() is not False


def _load():
    global _KERNELS
    if _KERNELS is None:
        choice = os.environ.get("MPIFED_KERNELS", "numba").strip().lower()
        if choice not in ("numba", "numpy"):
            from .errors import ConfigError
            raise ConfigError(f"MPIFED_KERNELS = {choice!r}; valid: numba (the default) or numpy")
        if choice == "numpy":
            _KERNELS = False
        else:
            try:
                from . import _compiled
            except ImportError:
                _KERNELS = False
            else:
                _KERNELS = _compiled
    return _KERNELS


def row_pairs(indptr, indices, data, d: int):
    """Every non-zero pair (a <= b) of each canonical CSR row, in the scatter matrix's order (row by row, a then b
    ascending): (packed positions (pairs,), the pairs' pointer per row (rows + 1,), the products a_ra a_rb, or
    None when every value is 1.0, whose products are 1.0)."""
    K = _load()
    binary = bool(np.all(data == 1.0))
    count = K.pair_count(indptr)
    pos = np.empty(count, dtype=np.int32 if d * (d + 1) // 2 < 2**31 else np.int64)
    ptr = np.empty(len(indptr), dtype=np.int64)
    products = np.empty(0 if binary else count)
    K.row_pairs(indptr, indices, data, d, pos, ptr, products)
    return pos, ptr, (None if binary else products)


def packed_hessians(rows, h, lam: float, d: int, clients=None):
    """Packed (1/m_i) sum_j h_ij a_ij a_ij^T + lam I of each client (or of ``clients`` only): (n, T).

    ``rows``: :meth:`mpifed.problems.logistic.LogisticBlock.packed_rows` (the rows' pairs, each client's range
    of rows and every row's 1/m_i); ``h``: every row's coefficient. The bits of the scatter-matrix product.
    """
    pos, ptr, products, starts, ends, weight = rows
    if clients is not None:
        starts, ends = starts[clients], ends[clients]
    out = np.empty((len(starts), d * (d + 1) // 2))
    _load().packed_hessians(pos, ptr, _products(products), starts, ends, weight, h, float(lam), d, out)
    return out


def _products(products):
    return np.empty(0) if products is None else products


def hessian_topk_update(rows, h, lam: float, d: int, H, k: int, alpha: float, weights, norms, index, values,
                        slot_hi, slot_lo, slots: int) -> None:
    """:func:`topk_update` with each client's Hessian formed from its rows (``rows``, ``h`` as in
    :func:`packed_hessians`) in one row of scratch that stays in cache for the rest of its step, instead of
    a chunk of Hessians written out and read back."""
    pos, ptr, products, starts, ends, weight = rows
    want = norms is not None
    _load().hessian_topk_update(pos, ptr, _products(products), starts, ends, weight, h, float(lam), d, H, int(k),
                                float(alpha), weights, want, norms if want else np.empty(0), index, values,
                                slot_hi, slot_lo, int(slots))


def topk_update(hess, H, k: int, alpha: float, weights, norms, index, values, slot_hi, slot_lo, slots: int) -> None:
    """FedNL's Top-K client step for a chunk of clients (see the module docstring), in place.

    hess (c, T): the chunk's Hessians, overwritten by the differences; H (c, T): their learned Hessians, updated;
    weights (T,): :func:`mpifed.tri.multiplicity`; norms (c,) or None (Option 1: no l_i); index, values (c, k):
    what each client sends; slot_hi, slot_lo (ceil(c / slots), T): zeroed double-double slots, client q adding
    into row q // slots.
    """
    want = norms is not None
    _load().topk_update(hess, H, int(k), float(alpha), weights, want, norms if want else np.empty(0), index, values,
                        slot_hi, slot_lo, int(slots))


def dd_accumulate(X, hi, lo, c: int) -> None:
    """Row q of X (n, w) added into the double-double slot row q // c of (hi, lo) by TwoSum, rows in order: the
    accumulation of :func:`mpifed.ddsum.dd_sum_rows` (its interleaved slices X[j::c] fill the same slots in the
    same order) in one pass instead of six numpy calls per slice."""
    _load().dd_accumulate(X, hi, lo, int(c))


def loaded() -> bool:
    """Whether the kernels are on and already loaded. The double-double sums use them only then: a run whose
    method needs no other kernel (the first-order ones) does not import numba for them."""
    return bool(_KERNELS)


KINDS = ("hessians", "topk", "fused", "sums")


def warm_up(*kinds: str) -> None:
    """Load (the first time: compile) the kernels of ``kinds`` (default all of KINDS: packed Hessians, the Top-K
    step, its fused form with the Hessians, the double-double sums) on tiny inputs, so a timed round never
    includes it."""
    if not enabled():
        return
    kinds = kinds or KINDS
    one = np.array([0], dtype=np.int64)
    for value in (1.0, 2.0):  # binary rows and others (scipy's 32-bit CSR indices)
        pairs = row_pairs(np.array([0, 2], dtype=np.int32), np.array([0, 1], dtype=np.int32), np.full(2, value), 2)
        rows = (*pairs, one, one + 1, np.ones(1))
        if "hessians" in kinds:
            packed_hessians(rows, np.ones(1), 0.0, 2)
    step = (np.zeros((1, 3)), 1, 1.0, np.ones(3), np.empty(1), np.empty((1, 1), dtype=np.intp), np.empty((1, 1)),
            np.zeros((1, 3)), np.zeros((1, 3)), 1)
    if "fused" in kinds:
        hessian_topk_update(rows, np.ones(1), 0.0, 2, *step)
    if "topk" in kinds:
        topk_update(np.ones((1, 3)), *step)
    if "sums" in kinds:
        dd_accumulate(np.ones((2, 3)), np.zeros((1, 3)), np.zeros((1, 3)), 2)
