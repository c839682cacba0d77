"""A rank's share of an image federation (``dataset = mnist | mnist-synthetic``, ``model = ...``).

Every rank reads the same training images, draws the same partition (``--partition``: iid, dirichlet:alpha=..,
pathological:k=..; from the run's seed only) and keeps the uint8 pixels of its own contiguous block of clients
(an :class:`~mpifed.problems.nn.block.ImageBlock`), and its share of the test images (chunks of 2000, which the
ranks evaluate together). ``x0`` is the model's
He-normal initialisation from the run's seed (the same on every rank).

``--validation f`` first holds out round(f N) of the N training images, drawn from the run's seed alone (so the
same rows on every rank and at every rank count), before the partition: rank 0 keeps them to measure the global
model's ``val_accuracy`` and ``val_loss``, which a step size can be tuned on without looking at the test set.
"""
from __future__ import annotations

import numpy as np

from .. import data
from ..backend import get_backend
from ..comm import client_range
from ..data.partition import make_partition
from ..problems.nn.block import Corruption, ImageBlock, ImageTestSet
from ..problems.nn.models import build_model
from ..rng import ClientStreams
from .base import Federation

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


def build_images(spec, comm) -> Federation:
    """This rank's share of an image federation (``spec``: a :class:`~mpifed.plan.DataSpec` with a model)."""
    backend = get_backend(spec.backend)
    model = build_model(spec.model, (28, 28), N_CLASSES)  # a spec that does not fit 28x28 fails here
    X, y, source = _images(spec.dataset, "train", spec.seed)
    held = validation_rows(len(y), spec.validation, spec.seed)
    if held is not None:
        keep = np.ones(len(y), dtype=bool)
        keep[held] = False
        Xv, yv = X[held], y[held]
        X, y = X[keep], y[keep]
        source += f"; {len(held)} training images held out for validation (--validation {spec.validation:g})"
    clients = spec.clients
    seed = spec.shuffle if spec.shuffle is not None else spec.seed
    part = make_partition(spec.partition, y, clients, spec.samples_per_client, seed, spec.min_client_size,
                          name=spec.dataset)
    lo, hi = client_range(clients, comm.size, comm.rank)
    rows, offsets = part.block(lo, hi)
    pixels, labels = np.ascontiguousarray(X[rows]), y[rows]
    del X, y
    dtype = np.dtype(spec.dtype).type
    block = ImageBlock(pixels, labels, np.asarray(offsets), model, spec.lam, spec.batch_size, backend,
                       Corruption.parse(spec.corrupt), dtype)
    client_of_row = np.repeat(np.arange(hi - lo), np.diff(offsets))
    counts = np.zeros((hi - lo, N_CLASSES), dtype=np.int64)
    np.add.at(counts, (client_of_row, labels), 1)
    sizes = part.sizes
    fed = Federation(spec.seed, comm, backend, block, np.arange(lo, hi), clients, model.n_params,
                     f"{source}; model {model.describe()} ({model.n_params} parameters)",
                     tau=spec.tau, m_min=int(sizes.min()), m_max=int(sizes.max()), label_counts=counts,
                     partition=part.info, labels=tuple(range(N_CLASSES)),
                     x0=np.asarray(model.init(spec.seed), dtype=np.float64), dtype=spec.dtype,
                     client_shape=np.stack([sizes[lo:hi], sizes[lo:hi] * int(np.prod(model.input_shape)),
                                            np.zeros(hi - lo)], axis=1).astype(np.float64),
                     layers=tuple((rows, *layer.shape) for rows, layer in zip(model.batch_rows(1), model.weighted)),
                     batch=spec.batch_size)
    Xt, yt, test_source = _images(spec.dataset, "test", spec.seed)
    fed.test = ImageTestSet.share(Xt, yt, model, test_source, backend, comm.rank, comm.size, dtype=dtype)
    fed.test_note = f"test set {test_source}"
    if held is not None and comm.is_root:  # rank 0 evaluates the validation images whole
        fed.validation = ImageTestSet.share(Xv, yv, model, f"{len(held)} held-out training images", backend,
                                            dtype=dtype)
    return fed


def validation_rows(n: int, fraction: float | None, seed: int):
    """The sorted indices of the round(fraction n) held-out training images (None without ``--validation``):
    a permutation drawn from (seed, "validation") alone."""
    if fraction is None:
        return None
    count = min(n - 1, max(1, round(fraction * n)))
    keys = ClientStreams(seed, np.arange(n), 0).bits("validation", 1)[:, 0]
    return np.sort(np.argsort(keys, kind="stable")[:count])
