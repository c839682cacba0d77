"""Compressors of symmetric matrices in packed upper-triangle form (T = d(d+1)/2 entries).

``compress(X, streams) -> Compressed`` acts on a block of clients at once: X is (n, T), one
row per client, and the result carries the decompressed rows together with the exact
number of bits each client puts on the wire (values at the configured float width;
indices, ceil(log2 T) bits each, counted separately). Classes (FedNL, Safaryan et al.
2022, Sec. 2 and Appendix; ALGORITHMS.md):

* contractive, ||C(X) - X||_F^2 <= (1 - delta) ||X||_F^2: identity (delta = 1),
  Top-K (delta = K/T), Rank-R (delta = R/d);
* unbiased, E C(X) = X and E||C(X)||^2 <= (omega + 1) ||X||^2: Rand-K scaled by T/K
  (omega = T/K - 1).

Selections break ties by the lower index, so every client's result is deterministic.
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
    kind = "contractive"

    @property
    def T(self) -> int:
        return tri.size(self.d)

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
        n = len(kept)
        return Compressed(kept, np.full(n, values * self.float_bits), np.full(n, indices * _index_bits(self.T)))

    def compress(self, X, streams=None) -> Compressed:
        return self._message(X, self.T)


def _index_bits(entries: int) -> int:
    return max(1, math.ceil(math.log2(entries)))


def select(scores, K: int, xp=np):
    """Boolean mask of the K largest scores in each row; ties go to the lower index.

    A partition plus a threshold, O(T) per row (a full sort or argpartition is slower).
    """
    n, T = scores.shape
    if K >= T:
        return xp.ones(scores.shape, dtype=bool)
    kth = xp.partition(scores, T - K, axis=1)[:, T - K][:, None]
    mask = scores > kth
    ties = scores == kth
    need = K - mask.sum(axis=1)
    if bool((ties.sum(axis=1) != need).any()):
        ties &= xp.cumsum(ties, axis=1) <= need[:, None]
    return mask | ties


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
        kept = xp.where(select(xp.abs(X), self.k, xp), X, 0.0)
        return self._message(kept, self.k, self.k)


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
    """Rank-R: the R eigenpairs of largest |eigenvalue| (contractive, delta = R/d)."""

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


def _xp(X):
    return np if isinstance(X, np.ndarray) else __import__("cupy")


COMPRESSORS = {"identity": (Compressor, None), "topk": (TopK, "k"), "randk": (RandK, "k"), "rankr": (RankR, "r")}


def make(spec: str, d: int, float_bits: int = 32) -> Compressor:
    """Build a compressor from ``name[:param=value]``; a value ``8d`` means 8 times the dimension d.

    >>> make("topk:k=8d", d=301).k
    2408
    """
    name, _, args = spec.partition(":")
    if name not in COMPRESSORS:
        raise ConfigError(f"unknown compressor {spec!r}; valid: {', '.join(COMPRESSORS)} (e.g. topk:k=8d)")
    cls, param = COMPRESSORS[name]
    if param is None:
        if args:
            raise ConfigError(f"compressor {name!r} takes no parameters, got {args!r}")
        return cls(d=d, float_bits=float_bits)
    key, _, raw = args.partition("=")
    if key != param or not raw:
        raise ConfigError(f"compressor {name!r} needs {param}=<int> or {param}=<int>d, got {spec!r}")
    value = _parse_count(raw, d, spec)
    upper = tri.size(d) if param == "k" else d
    if not 1 <= value <= upper:
        what = f"the d(d+1)/2 = {upper} packed entries" if param == "k" else f"the dimension d = {d}"
        raise ConfigError(f"compressor {spec!r}: {param} = {value} is outside 1..{upper} ({what})")
    return cls(d=d, float_bits=float_bits, **{param: value})


def _parse_count(raw: str, d: int, spec: str) -> int:
    try:
        return int(raw[:-1]) * d if raw.endswith("d") else int(raw)
    except ValueError:
        raise ConfigError(f"compressor {spec!r}: cannot read {raw!r} as an integer or <int>d") from None
