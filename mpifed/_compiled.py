"""The numba kernels behind :mod:`mpifed.kernels` (imported only when numba is; see there for the contract)."""
from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, nogil=True, boundscheck=False)


@njit(**JIT)
def pair_count(indptr):
    """The number of pairs (a <= b) over the rows of a CSR pointer."""
    total = 0
    for r in range(len(indptr) - 1):
        c = np.int64(indptr[r + 1] - indptr[r])
        total += c * (c + 1) // 2
    return total


@njit(**JIT)
def row_pairs(indptr, indices, data, d, pos, ptr, products):
    """Fill pos (packed position of each pair), ptr (per row) and, unless it is empty, products (a_ra a_rb)."""
    t = 0
    ptr[0] = 0
    for r in range(len(indptr) - 1):
        end = indptr[r + 1]
        for i in range(indptr[r], end):
            a = np.int64(indices[i])
            base = a * d - a * (a - 1) // 2 - a  # packed position of (a, b) is base + b
            for j in range(i, end):
                pos[t] = base + indices[j]
                if len(products):
                    products[t] = data[i] * data[j]
                t += 1
        ptr[r + 1] = t


@njit(**JIT)
def packed_hessians(pos, ptr, products, starts, ends, weight, h, lam, d, out):
    """out[k] = :func:`_hessian_row` of the rows starts[k]..ends[k]-1."""
    for k in range(len(starts)):
        _hessian_row(pos, ptr, products, starts[k], ends[k], weight, h, lam, d, out[k])


@njit(**JIT)
def _hessian_row(pos, ptr, products, r0, r1, weight, h, lam, d, row):
    """row = packed sum over rows r0..r1-1 of ((a_ra a_rb) w_r) h_r over the row's pairs, then + lam on the
    diagonal: the scatter matrix's entries ((a_ra a_rb) w_r) times h_r, each packed entry summed over its rows
    in ascending order from 0.0, as the CSR product M h adds them. Binary rows (no products) add
    (1.0 w_r) h_r = w_r h_r, the same bits."""
    row[:] = 0.0
    binary = len(products) == 0
    for r in range(r0, r1):
        w, hr = weight[r], h[r]
        if binary:
            c = w * hr
            for t in range(ptr[r], ptr[r + 1]):
                row[pos[t]] += c
        else:
            for t in range(ptr[r], ptr[r + 1]):
                row[pos[t]] += (products[t] * w) * hr
    for a in range(d):
        row[a * d - a * (a - 1) // 2] += lam


@njit(**JIT)
def _sq(a, w, i):
    """The summand of the Frobenius norm: (a_i a_i) w_i, as tri.frobenius forms it."""
    return (a[i] * a[i]) * w[i]


@njit(**JIT)
def _block_sum(a, w, lo, n):
    """numpy's sum of a block of at most 128 entries (8 accumulators, then the rest one by one) of :func:`_sq`."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += _sq(a, w, lo + i)
        return res
    r0, r1, r2, r3 = _sq(a, w, lo), _sq(a, w, lo + 1), _sq(a, w, lo + 2), _sq(a, w, lo + 3)
    r4, r5, r6, r7 = _sq(a, w, lo + 4), _sq(a, w, lo + 5), _sq(a, w, lo + 6), _sq(a, w, lo + 7)
    i = lo + 8
    stop = lo + n - n % 8
    while i < stop:
        r0 += _sq(a, w, i)
        r1 += _sq(a, w, i + 1)
        r2 += _sq(a, w, i + 2)
        r3 += _sq(a, w, i + 3)
        r4 += _sq(a, w, i + 4)
        r5 += _sq(a, w, i + 5)
        r6 += _sq(a, w, i + 6)
        r7 += _sq(a, w, i + 7)
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < lo + n:
        res += _sq(a, w, i)
        i += 1
    return res


@njit(**JIT)
def _pairwise(a, w, n):
    """numpy's pairwise summation of (a a w)[:n] (the bits of ``square.sum()`` on a contiguous row of the
    squares, which are formed here as they are read): halves cut at a multiple of 8, down to blocks of at most
    128 (:func:`_block_sum`). numpy recurses; this walks the same tree with an
    explicit stack (numba's cache cannot hold recursive functions)."""
    lo_of, n_of, phase = np.empty(64, np.int64), np.empty(64, np.int64), np.empty(64, np.int64)
    sums = np.empty(64)
    top, done = 1, 0
    lo_of[0], n_of[0], phase[0] = 0, n, 0
    while top > 0:
        f = top - 1
        lo, m = lo_of[f], n_of[f]
        if m <= 128:
            sums[done] = _block_sum(a, w, lo, m)
            done += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        if phase[f] == 0:  # the left half first
            phase[f] = 1
            lo_of[top], n_of[top], phase[top] = lo, half, 0
            top += 1
        elif phase[f] == 1:  # then the right
            phase[f] = 2
            lo_of[top], n_of[top], phase[top] = lo + half, m - half, 0
            top += 1
        else:  # left + right
            sums[done - 2] = sums[done - 2] + sums[done - 1]
            done -= 1
            top -= 1
    return sums[0]


RADIX = ((52, 0x7FF), (41, 0x7FF), (30, 0x7FF), (19, 0x7FF), (8, 0x7FF), (0, 0xFF))  # (shift, mask) per level
MAGNITUDE = np.uint64(0x7FFFFFFFFFFFFFFF)  # a double's bits without the sign


@njit(**JIT)
def _bucket(hist, mask, kk):
    """(the bucket from the top of ``hist`` that holds the kk-th largest, how many lie in the buckets above)."""
    above, bucket = 0, mask
    while above + hist[bucket] < kk:
        above += hist[bucket]
        bucket -= 1
    return bucket, above


@njit(**JIT)
def _kth_largest(values, n, kk, spare, hist, level):
    """(the kk-th largest of values[:n], how many of the kk largest equal it), for positive values that share
    their bits above RADIX[level] (1 <= kk <= n).

    A radix select on the bits: a positive double's bit pattern orders as its value, so each level counts 11
    bits (the exponent, then the mantissa from the top) in a histogram, keeps the bucket holding the wanted
    one and gathers it into the other buffer: a few counting passes, whatever the ties, and a short sort once
    a handful is left. ``values`` and ``spare`` (at least n) are overwritten; ``hist`` has 2048 entries."""
    src, dst = values.view(np.uint64), spare.view(np.uint64)
    fsrc, fdst = values, spare  # the same buffers as doubles
    m = n
    while level < len(RADIX) and m > 32:
        shift, mask = RADIX[level]
        ushift, umask = np.uint64(shift), np.uint64(mask)
        hist[:mask + 1] = 0
        for i in range(m):
            hist[(src[i] >> ushift) & umask] += 1
        bucket, above = _bucket(hist, mask, kk)
        level += 1
        if hist[bucket] == m:  # all in one bucket (equal values, say): nothing to gather
            continue
        kk -= above
        kept, ubucket = 0, np.uint64(bucket)
        for i in range(m):  # branch-free gather of the bucket
            v = src[i]
            dst[kept] = v
            kept += ((v >> ushift) & umask) == ubucket
        src, dst, fsrc, fdst, m = dst, src, fdst, fsrc, kept
    for i in range(1, m):  # the rest by insertion sort, descending
        v, j = src[i], i - 1
        while j >= 0 and src[j] < v:
            src[j + 1] = src[j]
            j -= 1
        src[j + 1] = v
    greater = 0
    while src[greater] > src[kk - 1]:
        greater += 1
    return fsrc[kk - 1], kk - greater


LANES = 4  # sub-histograms of the exponent count on long rows (a run of equal exponents then chains through four
LONG_ROW = 1 << 15  # counters, not one); a short row clears one histogram instead of four


@njit(**JIT)
def _work(T):
    """A client row's scratch: (bucket values, two spares, LANES histograms, positions above the bucket, positions
    in it (each with a slot past them for the branch-free writes))."""
    return (np.empty(T + 1), np.empty(T + 1), np.empty(T + 1), np.empty(LANES * 2048, np.int64),
            np.empty(T + 1, np.int64), np.empty(T + 1, np.int64))


@njit(**JIT)
def _difference(diff, Hq, hist):
    """diff -= H_q, counting the magnitudes' exponents (radix level 0) into hist[:2048]; returns the zeros."""
    T = diff.shape[0]
    bits = diff.view(np.uint64)
    zeros = 0
    if T >= LONG_ROW:
        hist[:] = 0
        for p in range(T):
            v = diff[p] - Hq[p]
            diff[p] = v
            hist[((p & (LANES - 1)) << 11) | np.int64(bits[p] >> np.uint64(52) & np.uint64(0x7FF))] += 1
            zeros += v == 0.0
        for lane in range(1, LANES):
            hist[:2048] += hist[lane * 2048:(lane + 1) * 2048]
    else:
        hist[:2048] = 0
        for p in range(T):
            v = diff[p] - Hq[p]
            diff[p] = v
            hist[np.int64(bits[p] >> np.uint64(52) & np.uint64(0x7FF))] += 1
            zeros += v == 0.0
    return zeros


@njit(**JIT)
def _topk_row(diff, Hq, k, alpha, weights, want_norms, norms, q, index, values, sh, sl, work):
    """FedNL's Top-K step for client q, its Hessian in ``diff``: v = diff - H_q (left in diff), l_q = ||v||_F,
    the k largest |v| (ties to the lower index), H_q += alpha S_q and S_q into the slots (sh, sl)."""
    cand, spare, spare2, hist, upper, inside = work
    T = diff.shape[0]
    zeros = _difference(diff, Hq, hist)
    if want_norms:  # tri.frobenius: sqrt of the pairwise sum of (v v) w over the row
        norms[q] = np.sqrt(_pairwise(diff, weights, T))
    # the K largest |v|, ties to the lower index: all above the K-th largest, then the first ones equal to it
    nonzero = T - zeros
    taken = 0
    if nonzero <= k:  # the K-th largest is 0: every nonzero, then the first zeros
        ties = k - nonzero
        for p in range(T):
            tie = (diff[p] == 0.0) & (ties > 0)
            upper[taken] = p
            taken += (diff[p] != 0.0) | tie
            ties -= tie
    else:
        hist[0] -= zeros  # bucket 0 keeps the subnormals
        bucket, above = _bucket(hist, 0x7FF, k)
        top, bits, cbits = np.uint64(bucket), diff.view(np.uint64), cand.view(np.uint64)
        n_up = n_in = 0
        for p in range(T):  # positions above the bucket, and the bucket's positions and magnitudes, without branches
            b = bits[p] & MAGNITUDE
            e = b >> np.uint64(52)
            upper[n_up] = p
            n_up += e > top
            inside[n_in] = p
            cbits[n_in] = b
            n_in += (e == top) & (b != np.uint64(0))
        spare2[:n_in] = cand[:n_in]
        kth, ties = _kth_largest(spare2, n_in, k - above, spare, hist, 1)
        # merge the positions above with the bucket's chosen ones, ascending (upper is rewritten behind its reader)
        chosen_in = 0
        for t in range(n_in):  # the bucket's entries taken: above kth, or the first ties
            m = cand[t]
            tie = (m == kth) & (ties > 0)
            keep = (m > kth) | tie
            inside[chosen_in] = inside[t]
            chosen_in += keep
            ties -= tie
        i, j, out = n_up - 1, chosen_in - 1, n_up + chosen_in - 1
        while j >= 0:  # merge from the back into upper (which has room: n_up + chosen_in <= k <= T)
            if i >= 0 and upper[i] > inside[j]:
                upper[out] = upper[i]
                i -= 1
            else:
                upper[out] = inside[j]
                j -= 1
            out -= 1
        taken = n_up + chosen_in
    if taken < k:  # only with NaN (no order): the first unused positions, so every index is valid
        _fill(upper, taken, k, T)
    for j in range(k):
        p = upper[j]
        index[q, j] = p
        x = diff[p]
        values[q, j] = x
        Hq[p] += x if alpha == 1.0 else alpha * x
        s = sh[p] + x  # TwoSum into the slot, as dd_sum_sparse_rows adds
        bb = s - sh[p]
        sl[p] += (sh[p] - (s - bb)) + (x - bb)
        sh[p] = s


@njit(**JIT)
def topk_update(hess, H, k, alpha, weights, want_norms, norms, index, values, slot_hi, slot_lo, slots):
    """:func:`_topk_row` for each client q of the chunk (Hessians in ``hess``), client q's S into slot row q // slots."""
    c, T = hess.shape
    work = _work(T)
    for q in range(c):
        _topk_row(hess[q], H[q], k, alpha, weights, want_norms, norms, q, index, values, slot_hi[q // slots],
                  slot_lo[q // slots], work)


@njit(**JIT)
def hessian_topk_update(pos, ptr, products, starts, ends, weight, h, lam, d, H, k, alpha, weights, want_norms,
                        norms, index, values, slot_hi, slot_lo, slots):
    """:func:`topk_update` with each client's Hessian formed by :func:`_hessian_row` in one row of scratch, which
    stays in cache through the whole step (no chunk of Hessians is written out and read back)."""
    c, T = H.shape
    row = np.empty(T)
    work = _work(T)
    for q in range(c):
        _hessian_row(pos, ptr, products, starts[q], ends[q], weight, h, lam, d, row)
        _topk_row(row, H[q], k, alpha, weights, want_norms, norms, q, index, values, slot_hi[q // slots],
                  slot_lo[q // slots], work)


@njit(**JIT)
def _fill(index, taken, k, T):
    used = np.zeros(T, np.bool_)
    for j in range(taken):
        used[index[j]] = True
    p = 0
    while taken < k:
        if not used[p]:
            index[taken] = p
            taken += 1
        p += 1
    index[:k] = np.sort(index[:k])


@njit(**JIT)
def dd_accumulate(X, hi, lo, c):
    """TwoSum of row q of X into slot row q // c of (hi, lo), rows in order (see :func:`mpifed.kernels.dd_accumulate`)."""
    n, w = X.shape
    for q in range(n):
        sh, sl = hi[q // c], lo[q // c]
        for p in range(w):
            x, h = X[q, p], sh[p]
            s = h + x
            bb = s - h
            sl[p] += (h - (s - bb)) + (x - bb)
            sh[p] = s
