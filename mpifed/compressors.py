"""Compressors of symmetric matrices in packed upper-triangle form (T = d(d+1)/2 entries).

``compress(X, streams) -> Compressed`` acts on a block of clients at once: X is (n, T), one
row per client, and the result carries the decompressed rows together with the exact
number of bits each client puts on the wire (values at the configured float width;
indices, ceil(log2 T) bits each, counted separately). Classes (FedNL, Safaryan et al.
2022, Sec. 2 and Appendix):

* contractive, ||C(X) - X||_F^2 <= (1 - delta) ||X||_F^2: identity (delta = 1),
  Top-K (delta = K/T), Rank-R (delta = R/d), and u-FedNL's Top-LEK (delta = K/T, met in
  expectation with equality; Burlachenko and Richtarik 2024). For the entry-wise ones the
  delta = K/T holds in the norm of the packed vector; in the matrix Frobenius norm, where
  off-diagonal entries count twice, only K/d^2 is guaranteed (u-FedNL's
  DOPT_FIX_TOPK_CONTRACTION_FACTOR addresses the same gap); the theoretical alpha uses K/T, as u-FedNL does;
* unbiased, E C(X) = X and E||C(X)||^2 <= (omega + 1) ||X||^2: Rand-K scaled by T/K
  (omega = T/K - 1), u-FedNL's RandSeqK, K cyclically contiguous entries scaled by T/K
  (omega = T/K - 1), and natural compression, stochastic rounding to a power of two
  (omega = 1/8; Horvath et al. 2019).

Selections break ties by the lower index, so every client's result is deterministic; the
randomised ones draw only from the client's own stream (``mpifed.rng``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import tri
from .errors import ConfigError


@dataclass(frozen=True)
class Compressed:
    """Decompressed rows (n, T) and the bits each client sends: values and index part."""

    values: object
    value_bits: np.ndarray
    index_bits: np.ndarray


@dataclass(frozen=True)
class Compressor:
    """Base: identity. Subclasses set ``kind`` and override :meth:`compress`."""

    d: int
    float_bits: int = 32
    entries: int | None = None  # vector mode: compress plain d-vectors (T = entries) instead of packed matrices
    kind = "contractive"

    @property
    def T(self) -> int:
        return self.entries or tri.size(self.d)

    @property
    def delta(self) -> float:
        return 1.0

    @property
    def omega(self) -> float:
        return 0.0

    def spec(self) -> str:
        return "identity"

    def theoretical_alpha(self, option: int) -> float:
        """Hessian learning rate with FedNL's guarantees (Safaryan et al. 2022, Thms 3.5-3.6)."""
        if self.kind == "unbiased":
            return 1.0 / (self.omega + 1.0)
        return 1.0 if option == 2 else 1.0 - math.sqrt(1.0 - self.delta)

    def _message(self, kept, values: int, indices: int = 0) -> Compressed:
        """``kept`` rows, each client sending ``values`` floats and ``indices`` indices."""
        return Compressed(kept, *self._bits(len(kept), values, indices))

    def _bits(self, n: int, values: int, indices: int):
        """(value bits, index bits) of n clients, each sending ``values`` floats and ``indices`` indices."""
        return np.full(n, values * self.float_bits), np.full(n, indices * _index_bits(self.T))

    def compress(self, X, streams=None) -> Compressed:
        return self._message(X, self.T)


def _index_bits(entries: int) -> int:
    return max(1, math.ceil(math.log2(entries)))


def select(scores, K: int, xp=np):
    """Boolean mask of the K largest scores in each row (scores >= 0); ties go to the lower index.

    On the host the threshold (each row's K-th largest score) comes from a partition of the row's
    nonzero scores only, packed to the left of a narrower array: when most scores are exact zeros
    (a converged client's Hessian correction on binary features) that partition is short, and
    a row with at most K nonzeros has threshold 0 without one. Rows with more than K scores at or
    above their threshold keep the first ties with a running count, over the first K columns only
    when the tied value is 0 (nothing is smaller, so the first zeros needed lie there). Every
    step is linear in T.
    """
    n, T = scores.shape
    if K >= T:
        return xp.ones(scores.shape, dtype=bool)
    kth = (_threshold(scores, K) if xp is np else xp.partition(scores, T - K, axis=1)[:, T - K])[:, None]
    mask = scores >= kth
    over = _count(mask, xp) > K  # more ties at the threshold than places left
    if bool(over.any()):
        rows = xp.flatnonzero(over)
        sub, low = scores[rows], kth[rows]
        above = sub > low
        need = K - _count(above, xp)
        width = K if not bool(low.any()) else T
        ties = sub[:, :width] == low
        above[:, :width] |= ties & (xp.cumsum(ties, axis=1, dtype=xp.int32) <= need[:, None])
        mask[rows] = above
    return mask


def _count(mask, xp=np):
    """True entries per row."""
    return mask.sum(axis=1, dtype=xp.int32)


def _threshold(scores, K: int):
    """Each row's K-th largest score, partitioning only the nonzero ones when they fit in half a row."""
    n, T = scores.shape
    nonzero = scores != 0
    count = _count(nonzero)
    width = max(int(count.max()), K)
    if width > T // 2:
        return np.partition(scores, T - K, axis=1)[:, T - K]
    packed = np.zeros((n, width), dtype=scores.dtype)
    packed[np.arange(width)[None, :] < count[:, None]] = scores[nonzero]
    return np.partition(packed, width - K, axis=1)[:, width - K]


def top_indices(scores, K: int, xp=np):
    """(n, K) column indices of :func:`select`'s mask, ascending in each row."""
    return (xp.flatnonzero(select(scores, K, xp)) % scores.shape[1]).reshape(len(scores), K)


def top_entries(X, K: int):
    """Host rows X (n, T), K < T: the flat positions in X (n K,), ascending, of the K entries of largest
    magnitude in each row, ties to the lower index: :func:`select` on abs(X), the same entries.

    When every row is at most half nonzero (sparse data's Hessian corrections, a converged client's), the
    work is on each row's nonzeros, packed to the left of an (n, most nonzeros) array: the K-th largest
    magnitude from a partition of the rows with more than K, the entries at or above it (the first ones at
    it while more than K), and in a row with fewer than K nonzeros all of them and its first K - nonzeros
    zeros (all among its first K columns). Otherwise :func:`top_indices` on abs(X).
    """
    n, T = X.shape
    nonzero = X != 0
    count = _count(nonzero)
    if n == 0 or int(count.max()) > T // 2:
        return (top_indices(np.abs(X), K) + (np.arange(n) * T)[:, None]).ravel()
    width = max(int(count.max()), 1)
    filled = np.arange(width)[None, :] < count[:, None]
    packed = np.zeros((n, width), dtype=X.dtype)
    packed[filled] = np.abs(X[nonzero])
    kth = np.zeros(n, dtype=X.dtype)  # rows with at most K nonzeros keep them all
    big = np.flatnonzero(count > K)
    if big.size:
        kth[big] = np.partition(packed[big] if big.size < n else packed, width - K, axis=1)[:, width - K]
    keep = packed >= kth[:, None]
    keep &= filled
    over = np.flatnonzero(_count(keep) > K)  # more entries at the threshold than places left (kth > 0 there)
    if over.size:
        sub, low = packed[over], kth[over, None]
        above = sub > low
        ties = sub == low
        above |= ties & (np.cumsum(ties, axis=1, dtype=np.int32) <= (K - _count(above))[:, None])
        keep[over] = above
    at = np.flatnonzero(nonzero)[keep[filled]]
    short = np.flatnonzero(count < K)
    if not short.size:
        return at
    mask = np.zeros((n, T), dtype=bool)
    mask.reshape(-1)[at] = True
    zeros = ~nonzero[short, :K]
    mask[short, :K] |= zeros & (np.cumsum(zeros, axis=1, dtype=np.int32) <= (K - count[short])[:, None])
    return np.flatnonzero(mask)


@dataclass(frozen=True)
class TopK(Compressor):
    """Top-K: keep the K entries of largest magnitude (contractive, delta = K/T)."""

    k: int = 1

    @property
    def delta(self) -> float:
        return self.k / self.T

    def spec(self) -> str:
        return f"topk:k={self.k}"

    def compress(self, X, streams=None) -> Compressed:
        xp = _xp(X)
        if self.k >= self.T:  # everything, in order: no indices on the wire
            return self._message(X, self.T)
        index, values = self.sparse(X)
        kept = xp.zeros_like(X, dtype=xp.result_type(X.dtype, 0.0))
        xp.put_along_axis(kept, index, values, axis=1)
        return self._message(kept, self.k, self.k)

    def bits(self, n: int):
        """(value bits, index bits) that :meth:`sparse`'s n clients send: K values and K indices each."""
        return self._bits(n, self.k, self.k)

    def sparse(self, X):
        """What each client sends (K < T): column indices (n, K), ascending, and their values (n, K).

        A few rows at a time, so the scores and masks are never (n, T) arrays.
        """
        xp = _xp(X)
        index = xp.empty((len(X), self.k), dtype=xp.intp)
        if xp is not np:
            for rows in tri.row_chunks(len(X), self.T, gpu=True):
                index[rows] = top_indices(xp.abs(X[rows]), self.k, xp)
            return index, xp.take_along_axis(X, index, axis=1)
        values = np.empty((len(X), self.k), dtype=X.dtype)
        for rows in tri.row_chunks(len(X), self.T):
            part = np.ascontiguousarray(X[rows])
            at = top_entries(part, self.k)
            values[rows] = part.reshape(-1)[at].reshape(-1, self.k)
            index[rows] = (at % self.T).reshape(-1, self.k)
        return index, values


@dataclass(frozen=True)
class RandK(Compressor):
    """Rand-K: K uniformly random entries scaled by T/K (unbiased, omega = T/K - 1)."""

    k: int = 1
    kind = "unbiased"

    @property
    def omega(self) -> float:
        return self.T / self.k - 1.0

    def spec(self) -> str:
        return f"randk:k={self.k}"

    def compress(self, X, streams=None) -> Compressed:
        xp = _xp(X)
        if self.k >= self.T:
            return self._message(X, self.T)
        keys = xp.asarray(streams.bits("randk", self.T))
        kept = xp.where(select(keys, self.k, xp), X * (self.T / self.k), 0.0)
        return self._message(kept, self.k, self.k)


@dataclass(frozen=True)
class RankR(Compressor):
    """Rank-R: the R eigenpairs of largest ``|eigenvalue|`` (contractive, delta = R/d)."""

    r: int = 1

    @property
    def delta(self) -> float:
        return self.r / self.d

    def spec(self) -> str:
        return f"rankr:r={self.r}"

    def compress(self, X, streams=None) -> Compressed:
        xp = _xp(X)
        w, U = xp.linalg.eigh(tri.unpack(X, self.d, xp))
        order = xp.argsort(-xp.abs(w), axis=1, kind="stable")[:, : self.r]
        w_r = xp.take_along_axis(w, order, axis=1)
        U_r = xp.take_along_axis(U, order[:, None, :], axis=2)
        low_rank = (U_r * w_r[:, None, :]) @ U_r.transpose(0, 2, 1)
        return self._message(tri.pack(low_rank, xp), self.r * (self.d + 1))


# Exponent width of the IEEE format at each float width: natural compression sends sign + exponent.
_EXPONENT_BITS = {16: 5, 32: 8, 64: 11}


@dataclass(frozen=True)
class Natural(Compressor):
    """Natural compression (Horvath et al. 2019, Def. 1): unbiased, omega = 1/8.

    An entry t != 0 with ``2^a <= |t| < 2^(a+1)`` becomes sign(t) 2^a with probability
    ``(2^(a+1) - |t|) / 2^a`` and sign(t) 2^(a+1) otherwise; zeros stay zero. The result has no
    mantissa, so each of the T entries costs sign + exponent bits: 9 at float_bits 32 (paper
    004, Sec. 6: "9d bits"), 12 at 64 (u-FedNL packs two FP64 entries in 3 bytes), 6 at 16.
    Nothing is dropped, so no indices are sent.
    """

    kind = "unbiased"

    @property
    def omega(self) -> float:
        return 0.125

    def spec(self) -> str:
        return "natural"

    def compress(self, X, streams=None) -> Compressed:
        xp = _xp(X)
        m, e = xp.frexp(xp.abs(X))  # |t| = m 2^e, m in [1/2, 1): 2^a = 2^(e-1), P(up) = |t|/2^a - 1 = 2m - 1
        up = xp.asarray(streams.uniform("natural", self.T)) < 2.0 * m - 1.0
        rounded = xp.copysign(xp.ldexp(xp.where(up, 1.0, 0.5), e), X)
        kept = xp.where(X == 0, X, rounded)
        n = len(X)
        return Compressed(kept, np.full(n, self.T * (1 + _EXPONENT_BITS[self.float_bits])), np.zeros(n, dtype=int))


@dataclass(frozen=True)
class RandSeqK(Compressor):
    """RandSeqK (u-FedNL, Burlachenko and Richtarik 2024): K contiguous packed entries from a
    uniformly random start s, wrapping around cyclically, scaled by T/K.

    As in u-FedNL (``generateRandSeqKItemsInUpperTriangularPart``), s is uniform on 0..T-1
    and the block is s, s+1, ..., s+K-1 modulo T, so every entry is kept with probability
    exactly K/T: unbiased with omega = T/K - 1 (alpha = K/T). Bits: K values plus the start,
    one index of ceil(log2 T) bits. u-FedNL counts the K values only by default (the server
    regenerates s from the client's seed) or K 32-bit indices with
    ``--transfer_indicies_for_randk``; here the start is counted, as a real client must send it
    unless it shares its random stream with the server.
    """

    k: int = 1
    kind = "unbiased"

    @property
    def omega(self) -> float:
        return self.T / self.k - 1.0

    def spec(self) -> str:
        return f"randseqk:k={self.k}"

    def compress(self, X, streams=None) -> Compressed:
        xp = _xp(X)
        if self.k >= self.T:
            return self._message(X, self.T)
        start = (streams.bits("randseqk", 1) % np.uint64(self.T)).astype(np.int64)
        offset = (xp.arange(self.T)[None, :] - xp.asarray(start)) % self.T
        kept = xp.where(offset < self.k, X * (self.T / self.k), 0.0)
        return self._message(kept, self.k, 1)


@dataclass(frozen=True)
class TopLEK(Compressor):
    """Top-LEK, "Top Less-or-Equal K" (u-FedNL, Burlachenko and Richtarik 2024,
    ``getTopLEKFromUpperDiagonalPart``): the fewest largest entries that, after one random
    rounding, make E||C(X) - X||_F^2 = (1 - delta)||X||_F^2 exactly, delta = K/T.

    Order the Top-K entries by magnitude (ties: lower index first) and let r_j be the
    residual ||X - Top_j(X)||_F^2 (off-diagonal entries counted twice, as in the full
    matrix, like u-FedNL). With target t = (1 - delta)||X||_F^2 and j the smallest count with
    r_j <= t < r_(j-1), send the top j - 1 entries with probability p = (t - r_j) /
    (r_(j-1) - r_j) and the top j otherwise, so E r = t: contractive with delta = K/T in
    expectation, and alpha = 1 (Option 2) or 1 - sqrt(1 - delta) (Option 1), as u-FedNL sets.
    When Top-K itself misses t (possible only because off-diagonals weigh twice, e.g. all
    entries equal and K < d) Top-K is sent; so, like Top-K's delta = K/T here, the worst-case
    Frobenius constant is K/d^2 (u-FedNL's DOPT_FIX_TOPK_CONTRACTION_FACTOR).

    Deviations from the u-FedNL code, which drops entries from Top-K one at a time: (1) its
    sign-ignoring branch (the one its FedNL uses) widens the bracket test and p by a
    "numerical" eps = 0.1 ||X||_F^2, so it stops as soon as r_(j-1) > t - eps and E r lands
    anywhere in (t - eps, t + eps), usually below t with more entries sent; this uses the exact
    rule of its signed branch and of the derivation in its comments. (2) Where Top-K misses t
    that code drops everything and sends nothing; this sends Top-K. (3) K >= T: everything,
    as there. Bits: the values and indices actually sent (count <= K) plus the count,
    ceil(log2(K + 1)) bits in the index part (u-FedNL sends it as a uint32 header).
    """

    k: int = 1

    @property
    def delta(self) -> float:
        return self.k / self.T

    def spec(self) -> str:
        return f"toplek:k={self.k}"

    def compress(self, X, streams=None) -> Compressed:
        xp = _xp(X)
        n, T, K = len(X), self.T, self.k
        if K >= T:
            return self._message(X, T)
        top = select(xp.abs(X), K, xp)
        cols = xp.nonzero(top)[1].reshape(n, K)  # ascending per row
        cols = xp.take_along_axis(cols, xp.argsort(-xp.abs(xp.take_along_axis(X, cols, 1)), axis=1, kind="stable"), 1)
        weight = xp.asarray(tri.multiplicity(self.d))
        energy = weight[cols] * xp.take_along_axis(X, cols, 1) ** 2  # largest first
        outside = xp.where(top, 0.0, weight * X**2).sum(axis=1)
        # r[:, j] = residual after sending the first j: suffix sums keep it non-increasing in j.
        tail = xp.cumsum(energy[:, ::-1], axis=1)[:, ::-1]
        r = outside[:, None] + xp.concatenate([tail, xp.zeros((n, 1))], axis=1)
        target = (1.0 - self.delta) * r[:, 0]
        reached = r <= target[:, None]
        feasible = reached[:, -1]
        j = xp.where(feasible, xp.argmax(reached, axis=1), K)
        rows = xp.arange(n)
        r_with, r_without = r[rows, j], r[rows, xp.maximum(j - 1, 0)]
        randomise = feasible & (j > 0)
        p = xp.where(randomise, (target - r_with) / xp.where(randomise, r_without - r_with, 1.0), 0.0)
        count = j - (xp.asarray(streams.uniform("toplek", 1)[:, 0]) < p)
        mask = xp.zeros((n, T), dtype=bool)
        mask[rows[:, None], cols] = xp.arange(K)[None, :] < count[:, None]
        kept = xp.where(mask, X, 0.0)
        count = np.asarray(count.get() if xp is not np else count)
        header = math.ceil(math.log2(K + 1))
        return Compressed(kept, count * self.float_bits, count * _index_bits(T) + header)


def _xp(X):
    return np if isinstance(X, np.ndarray) else __import__("cupy")


COMPRESSORS = {"identity": (Compressor, None), "topk": (TopK, "k"), "randk": (RandK, "k"), "rankr": (RankR, "r"),
               "natural": (Natural, None), "randseqk": (RandSeqK, "k"), "toplek": (TopLEK, "k")}


VECTOR_COMPRESSORS = ("identity", "topk", "randk", "natural", "randseqk")


def make(spec: str, d: int, float_bits: int = 32, vector: bool = False) -> Compressor:
    """Build a compressor from ``name[:param=value]``; a value ``d``, ``8d`` or ``0.5d`` is that multiple of the
    dimension d (rounded to the nearest integer).

    By default it acts on packed symmetric d x d matrices (T = d(d+1)/2 entries); with
    ``vector=True`` on plain d-vectors (T = d: FedNL-BC's model compression).

    >>> make("topk:k=8d", d=301).k
    2408
    """
    name, _, args = spec.partition(":")
    if name not in COMPRESSORS:
        raise ConfigError(f"unknown compressor {spec!r}; valid: {', '.join(COMPRESSORS)} (e.g. topk:k=8d)")
    if vector and name not in VECTOR_COMPRESSORS:
        raise ConfigError(f"compressor {spec!r} cannot compress a vector; valid: {', '.join(VECTOR_COMPRESSORS)}")
    cls, param = COMPRESSORS[name]
    entries = d if vector else None
    if param is None:
        if args:
            raise ConfigError(f"compressor {name!r} takes no parameters, got {args!r}")
        return cls(d=d, float_bits=float_bits, entries=entries)
    key, _, raw = args.partition("=")
    if key != param or not raw:
        raise ConfigError(f"compressor {name!r} needs {param}=<int> or a multiple of d ({param}=d, {param}=8d), "
                          f"got {spec!r}")
    value = _parse_count(raw, d, spec)
    upper = (d if vector else tri.size(d)) if param == "k" else d
    if not 1 <= value <= upper:
        what = (f"the d = {d} vector entries" if vector else f"the d(d+1)/2 = {upper} packed entries") \
            if param == "k" else f"the dimension d = {d}"
        raise ConfigError(f"compressor {spec!r}: {param} = {value} is outside 1..{upper} ({what})")
    return cls(d=d, float_bits=float_bits, entries=entries, **{param: value})


def _parse_count(raw: str, d: int, spec: str) -> int:
    """An integer, or a multiple of d: ``d``, ``8d``, ``0.5d`` (rounded to the nearest integer)."""
    try:
        if not raw.endswith("d"):
            return int(raw)
        factor = float(raw[:-1]) if raw[:-1] else 1.0
        if not 0 < factor < float("inf"):
            raise ValueError
        return int(round(factor * d))
    except ValueError:
        raise ConfigError(f"compressor {spec!r}: cannot read {raw!r} as an integer or a multiple of d "
                          f"(d, 8d, 0.5d)") from None
