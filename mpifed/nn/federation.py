"""A rank's share of an image federation (``dataset = mnist | mnist-synthetic``, ``model = ...``).

Every rank reads the same training images, draws the same partition (``--partition``: iid, dirichlet:alpha=..,
pathological:k=..; from the run's seed only) and keeps the uint8 pixels of its own contiguous block of clients;
samples are standardised only when a mini-batch is drawn, so a rank holds 784 bytes per image. Rank 0 alone holds
the test images. Mini-batches: local step ``k`` of round ``t`` draws ``b`` sample indices per client, uniformly
with replacement from the client's own rows, from the client's stream ``(seed, "batch<k>", client, t)``, so a
client's batches do not depend on the rank layout or on the other clients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import data
from ..backend import get_backend
from ..comm import client_range
from ..data.mnist import MEAN, STD
from ..data.partition import make_partition, parse_spec
from ..errors import ConfigError
from ..federation import Federation
from .models import build_model

IMAGE_SETS = ("mnist", "mnist-synthetic")
SYNTHETIC_SIZE = (6000, 1000)  # train, test images of mnist-synthetic
N_CLASSES = 10


def _images(name: str, split: str, seed: int):
    """(uint8 images (N, 28, 28), int64 labels, source text) of an image set."""
    if name == "mnist":
        X, y = data.load_mnist(split, "none")
        return X, y, f"MNIST {split} (LeCun, Cortes & Burges; sha256-checked IDX files)"
    n = SYNTHETIC_SIZE[split == "test"]
    X, y = data.synthetic_images(n, seed, stream=int(split == "test"))
    return np.round(X * 255).astype(np.uint8), y, f"mnist-synthetic(n={n}, seed={seed})"


def standardise(xp, pixels):
    """uint8 pixels -> ``(x/255 - 0.1307) / 0.3081`` (MNIST's mean and deviation), float64 on the backend."""
    return (xp.asarray(pixels, dtype=np.float64) / 255.0 - MEAN) / STD


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
        X = standardise(xp, self.pixels[rows])
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
    """Held-out images on rank 0; ``evaluate`` is the driver's test hook (accuracy and cross-entropy at x)."""

    pixels: np.ndarray
    labels: np.ndarray
    model: object
    name: str
    backend: object
    chunk: int = 2000

    def evaluate(self, x, lam: float) -> tuple[float, float]:
        xp, hits, loss = self.backend.xp, 0, 0.0
        theta = xp.asarray(x)
        for lo in range(0, len(self.labels), self.chunk):
            z = self.model.logits(theta, standardise(xp, self.pixels[lo:lo + self.chunk]), xp)
            y = xp.asarray(self.labels[lo:lo + self.chunk])
            zmax = z.max(axis=1, keepdims=True)
            logz = xp.log(xp.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
            loss += float((logz - z[xp.arange(len(y)), y]).sum())
            hits += int((z.argmax(axis=1) == y).sum())
        return hits / len(self.labels), loss / len(self.labels)


class ImageFederation(Federation):
    """A :class:`~mpifed.federation.Federation` whose block is an :class:`ImageBlock`; ``x0`` is the model's
    He-normal initialisation from the run's seed (the same on every rank)."""

    labels = tuple(range(N_CLASSES))

    def initial_point(self) -> np.ndarray:
        return np.asarray(self.block.model.init(self.config.seed), dtype=np.float64)


def check_config(config) -> None:
    """One-line errors for an image run, before any data is read."""
    if config.dataset not in IMAGE_SETS:
        raise ConfigError(f"--model needs an image dataset; --dataset = {config.dataset!r}, valid: "
                          f"{', '.join(IMAGE_SETS)}")
    scheme, _ = parse_spec(config.partition)
    if scheme == "paper":
        raise ConfigError("--partition = 'paper' does not apply to image datasets; valid: iid, "
                          "dirichlet:alpha=<a>, pathological:k=<k>")
    if config.intercept:
        raise ConfigError("--intercept does not apply to neural networks (every layer has its bias)")
    bad = Corruption.parse(config.corrupt)
    if bad is not None and bad.hi >= (config.clients or 100):
        raise ConfigError(f"--corrupt = {config.corrupt!r} names client {bad.hi}; valid: clients 0..{(config.clients or 100) - 1}")
    if config.reference_iterations:
        raise ConfigError(f"--reference-iterations = {config.reference_iterations} needs a convex problem; "
                          f"for a neural network set it to 0 (there is no x*)")


def build_image_federation(config, comm) -> ImageFederation:
    check_config(config)
    backend = get_backend(config.backend)
    model = build_model(config.model, (28, 28), N_CLASSES)  # a spec that does not fit 28x28 fails here
    X, y, source = _images(config.dataset, "train", config.seed)
    clients = config.clients or 100
    seed = config.shuffle if config.shuffle is not None else config.seed
    part = make_partition(config.partition, y, clients, config.samples_per_client, seed, config.min_client_size,
                          name=config.dataset)
    lo, hi = client_range(clients, comm.size, comm.rank)
    rows, offsets = part.block(lo, hi)
    pixels, labels = np.ascontiguousarray(X[rows]), y[rows]
    del X, y
    block = ImageBlock(pixels, labels, np.asarray(offsets), model, config.lam, config.batch_size or 32, backend,
                       Corruption.parse(config.corrupt))
    client_of_row = np.repeat(np.arange(hi - lo), np.diff(offsets))
    counts = np.zeros((hi - lo, N_CLASSES), dtype=np.int64)
    np.add.at(counts, (client_of_row, labels), 1)
    sizes = part.sizes
    fed = ImageFederation(config, comm, backend, block, np.arange(lo, hi), clients, model.n_params,
                          f"{source}; model {model.describe()} ({model.n_params} parameters)",
                          tau=config.participants(clients), m_min=int(sizes.min()), m_max=int(sizes.max()),
                          label_counts=counts, partition=part.info)
    if comm.is_root:
        Xt, yt, test_source = _images(config.dataset, "test", config.seed)
        fed.test = ImageTestSet(Xt, yt, model, test_source, backend)
        fed.test_note = f"test set {test_source}"
    return fed
