"""The image block of a network run: a rank's clients' uint8 pixels, their mini-batches and the model's loss.

Samples are standardised only when a mini-batch is drawn, so a rank holds 784 bytes per image. Mini-batches: local
step ``k`` of round ``t`` draws ``b`` sample indices per client, uniformly with replacement from the client's own
rows, from the client's stream ``(seed, "batch<k>", client, t)``, so a client's batches do not depend on the rank
layout or on the other clients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpifed.data.mnist import MEAN, STD
from mpifed.errors import ConfigError

EVAL_CHUNK = 2000  # test images per forward pass of an evaluation (and the unit the ranks share)


def standardise(xp, pixels, dtype=np.float64):
    """uint8 pixels -> ``(x/255 - 0.1307) / 0.3081`` (MNIST's mean and deviation), ``dtype`` on the backend."""
    return (xp.asarray(pixels, dtype=dtype) / dtype(255.0) - dtype(MEAN)) / dtype(STD)


@dataclass(frozen=True)
class Corruption:
    """Fault injection (``--corrupt clients=LO-HI,scale=S,from=T``): the inputs of clients LO..HI are
    multiplied by S from round T on, a sudden change of scale that a stale curvature estimate amplifies."""

    lo: int
    hi: int
    scale: float
    start: int

    @classmethod
    def parse(cls, spec: str | None) -> "Corruption | None":
        if spec is None:
            return None
        valid = "'clients=LO-HI,scale=S,from=T' (e.g. clients=0-1,scale=1e3,from=5)"
        try:
            items = dict(item.split("=", 1) for item in spec.split(","))
            lo, _, hi = items.pop("clients").partition("-")
            out = cls(int(lo), int(hi or lo), float(items.pop("scale")), int(items.pop("from", 0)))
        except (ValueError, KeyError):
            raise ConfigError(f"--corrupt = {spec!r} is malformed; valid: {valid}") from None
        if items or out.lo < 0 or out.hi < out.lo or out.start < 0 or not np.isfinite(out.scale):
            raise ConfigError(f"--corrupt = {spec!r} is out of range; valid: {valid}, 0 <= LO <= HI, T >= 0")
        return out


@dataclass(eq=False)
class ImageBlock:
    """The clients ``ids`` of one rank: pixels and labels in client order, ``offsets`` (n+1) into them."""

    pixels: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    model: object
    lam: float
    batch_size: int
    backend: object
    corrupt: Corruption | None = None
    dtype: type = np.float64

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    @property
    def d(self) -> int:
        return self.model.n_params

    @property
    def bk(self):
        return self.backend

    def batch(self, streams, step: int, clients=None, size: int | None = None):
        """Mini-batch ``step`` of the selected clients (bool mask or None = all): (X (n, b, 28, 28), y (n, b))."""
        b = size or self.batch_size
        sizes = np.diff(self.offsets)
        u = streams.uniform(f"batch{step}", b)
        if clients is not None:
            u, sizes, start = u[clients], sizes[clients], self.offsets[:-1][clients]
        else:
            start = self.offsets[:-1]
        rows = start[:, None] + np.minimum((u * sizes[:, None]).astype(np.int64), sizes[:, None] - 1)
        xp = self.backend.xp
        X = standardise(xp, self.pixels[rows], self.dtype)
        c = self.corrupt
        if c is not None and streams.round >= c.start:
            ids = streams.client_ids if clients is None else streams.client_ids[clients]
            hit = (ids >= c.lo) & (ids <= c.hi)
            if hit.any():
                X[xp.asarray(np.flatnonzero(hit))] *= c.scale
        return X, xp.asarray(self.labels[rows])

    def loss_grad(self, theta, X, y, stats: bool = False):
        """Per client: mean cross-entropy + lam/2 ||theta||^2 and its gradient (and the layer statistics)."""
        loss, grad, st = self.model.loss_grad(theta, X, y, self.backend.xp, stats=stats)
        if self.lam:
            loss = loss + 0.5 * self.lam * (theta * theta).sum(axis=-1)
            grad = grad + self.lam * theta
        return loss, grad, st


@dataclass(frozen=True, eq=False)
class ImageTestSet:
    """Held-out images, split over the ranks in chunks of ``chunk`` images: this rank holds chunks
    ``first, first+1, ...`` of ``n_chunks`` (``pixels``, ``labels``: only those). ``partial`` is this rank's
    share of an evaluation and ``combine`` (rank 0) adds the shares in chunk order, so accuracy and loss are the
    same at any number of ranks; ``evaluate`` does both for a set held whole."""

    pixels: np.ndarray
    labels: np.ndarray
    model: object
    name: str
    backend: object
    chunk: int = EVAL_CHUNK
    first: int = 0
    n_chunks: int = 0
    size: int = 0             # images in the whole set
    dtype: type = np.float64

    @classmethod
    def share(cls, pixels, labels, model, name, backend, rank: int = 0, ranks: int = 1, chunk: int = EVAL_CHUNK,
              dtype=np.float64):
        """Rank ``rank``'s contiguous run of chunks of the whole set (none when there are fewer chunks than ranks)."""
        n_chunks = -(-len(labels) // chunk)
        lo, hi = rank * n_chunks // ranks, (rank + 1) * n_chunks // ranks
        rows = slice(lo * chunk, hi * chunk)
        return cls(np.ascontiguousarray(pixels[rows]), labels[rows], model, name, backend, chunk, lo, n_chunks,
                   len(labels), dtype)

    def partial(self, x) -> np.ndarray:
        """Per chunk of this rank, ``(correct predictions, summed cross-entropy)`` of the global model ``x``."""
        xp, out = self.backend.xp, []
        theta = xp.asarray(x, dtype=self.dtype)
        for lo in range(0, len(self.labels), self.chunk):
            z = self.model.logits(theta, standardise(xp, self.pixels[lo:lo + self.chunk], self.dtype), xp)
            y = xp.asarray(self.labels[lo:lo + self.chunk])
            zmax = z.max(axis=1, keepdims=True)
            logz = xp.log(xp.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
            out.append((int((z.argmax(axis=1) == y).sum()), float((logz - z[xp.arange(len(y)), y]).sum())))
        return np.array(out, dtype=np.float64).reshape(-1, 2)

    def combine(self, parts) -> tuple[float, float]:
        """Accuracy and mean cross-entropy from every chunk's ``partial`` row, in chunk order."""
        hits, loss = 0, 0.0
        for h, s in parts:
            hits, loss = hits + int(h), loss + s
        return hits / self.size, loss / self.size

    def evaluate(self, x, lam: float) -> tuple[float, float]:
        return self.combine(self.partial(x))
