"""A sparse synthetic federation at large d, text-like: ``--dataset synthetic-sparse`` (or
``synthetic-sparse:nnz=K`` for K non-zeros per row; default 50), with ``--features`` d (default 10,000),
``--clients`` and ``--samples-per-client``.

Feature frequencies are heavy-tailed as word counts are: a row's columns are distinct draws from a truncated
Zipf law P(column j) proportional to 1 / (j + 1) over 0..d-1 (column 0 the most frequent); its values are
abs(N(0, 1)) scaled to ||a|| = 1. Labels are +1 with probability sigmoid(3 a^T x_true + beta_c), x_true ~ N(0, I_d)
shared by all clients and beta_c ~ N(0, 1) a per-client label bias (heterogeneous clients). Client c draws
everything from ``default_rng([seed, c, SPARSE_STREAM])``, so a rank generates exactly its own clients' rows,
whatever the layout, and no dense (rows x d) array ever exists.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from .synthetic import ground_truth

NAME = "synthetic-sparse"
SPARSE_STREAM = 7  # keeps these streams apart from the dense synthetic federation's [seed, c]
SPARSE_DEFAULTS = {"clients": 100, "samples_per_client": 100, "features": 10_000, "nnz": 50}


def parse(dataset: str) -> int | None:
    """K, the non-zeros per row, of a ``synthetic-sparse[:nnz=K]`` name; None for any other dataset."""
    name, _, rest = dataset.partition(":")
    if name != NAME:
        return None
    if not rest:
        return SPARSE_DEFAULTS["nnz"]
    key, _, value = rest.partition("=")
    if key != "nnz" or not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--dataset = {dataset!r}: valid {NAME} or {NAME}:nnz=K with an integer K >= 1")
    return int(value)


def _zipf_columns(rng, rows: int, k: int, d: int) -> np.ndarray:
    """(rows, min(k, d)) distinct columns per row, in draw order, from P(j) ~ 1/(j+1) on 0..d-1.

    2k candidates per row by inverse transform of the continuous law (log-uniform on [1, d + 1)); the first k
    distinct ones are kept (a row short of k distinct candidates, at tiny d, draws again)."""
    k = min(k, d)
    out = np.empty((rows, k), dtype=np.int64)
    todo = np.arange(rows)
    while len(todo):
        cand = np.minimum(np.floor(np.exp(rng.random((len(todo), 2 * k)) * np.log(d + 1.0))) - 1, d - 1)
        cand = cand.astype(np.int64)
        order = np.argsort(cand, axis=1, kind="stable")
        ranked = np.take_along_axis(cand, order, axis=1)
        first = np.ones_like(ranked, dtype=bool)
        first[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
        position = np.where(first, order, 2 * k)  # a repeat's draw position is pushed past every first occurrence
        keep = np.sort(position, axis=1)[:, :k]
        full = keep[:, -1] < 2 * k
        out[todo[full]] = np.take_along_axis(cand[full], keep[full], axis=1)
        todo = todo[~full]
    return out


def sparse_clients(client_ids, samples_per_client: int, features: int, nnz: int, seed: int):
    """(A (rows x d CSR, canonical), b) of the given clients, rows concatenated in client order.

    Every row has exactly min(nnz, d) entries, so the CSR arrays are allocated once at their final size and
    filled client by client (no list of per-client matrices to stack: the data exist once)."""
    from scipy.special import expit

    x_true = ground_truth(features, seed)
    ids = np.asarray(client_ids, dtype=np.int64).reshape(-1)
    m, k = samples_per_client, min(nnz, features)
    values, columns = np.empty(len(ids) * m * k), np.empty(len(ids) * m * k, dtype=np.int32)
    labels = np.empty(len(ids) * m)
    for at, c in enumerate(ids.tolist()):  # one vectorised draw per client
        rng = np.random.default_rng([seed, c, SPARSE_STREAM])
        bias = rng.standard_normal()
        cols = _zipf_columns(rng, m, k, features)
        vals = np.abs(rng.standard_normal((m, k)))
        vals /= np.linalg.norm(vals, axis=1, keepdims=True)
        order = np.argsort(cols, axis=1)  # canonical CSR: ascending columns in each row
        rows = slice(at * m * k, (at + 1) * m * k)
        columns[rows] = np.take_along_axis(cols, order, axis=1).ravel()
        values[rows] = np.take_along_axis(vals, order, axis=1).ravel()
        margin = (values[rows].reshape(m, k) * x_true[columns[rows].reshape(m, k)]).sum(axis=1)
        labels[at * m:(at + 1) * m] = np.where(rng.random(m) < expit(3.0 * margin + bias), 1.0, -1.0)
    A = sp.csr_matrix((values, columns, np.arange(len(ids) * m + 1, dtype=np.int64) * k),
                      shape=(len(ids) * m, features), copy=False)
    return A, labels
