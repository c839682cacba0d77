"""Assignment of dataset rows to clients: the papers' equal split and the heterogeneous splits of FL benchmarks.

Schemes (``--partition``), all returning a :class:`Partition` over the whole file; client sizes ``m_i`` may differ:

``paper``
    The FedNL family of papers (Safaryan et al. 2022, FedNL; Islamov et al. 2021, Newton-Learn, Sec. 6): ``n``
    clients of ``m`` consecutive rows each, the remainder dropped (rows optionally permuted first by ``--shuffle``).
``iid``
    A seeded permutation, then ``n`` nearly equal clients (sizes differ by at most one) over all rows, or ``n``
    clients of exactly ``m`` rows when ``--samples-per-client`` is given.
``dirichlet:alpha=<a>``
    The label-Dirichlet split of Yurochkin et al. (2019) as used by FedPM (Ishii et al. 2026, Sec. "Datasets", after
    Vogels et al. 2021) and FedRCO (App. E.2): for every label c, draw ``q_c ~ Dir(alpha * 1_n)`` (a
    symmetric Dirichlet over the ``n`` clients, concentration ``alpha`` per client, *not* ``alpha / n``) and give
    client i the share ``q_{c,i}`` of label c's rows. Smaller ``alpha`` = stronger skew (``alpha -> 0``: each label
    on few clients; ``alpha -> inf``: every client holds the global label proportions). Client sizes are unequal.
``pathological:k=<k>``
    Each client holds rows of exactly ``k`` distinct labels (FedRCO App. E.2, after Li et al. 2022's "#C=k"):
    client i gets label ``i mod L`` plus ``k - 1`` others drawn without replacement; each label's rows are then
    split evenly among the clients holding it. (McMahan et al. 2017's shards do not guarantee k distinct labels.)

Randomness: the non-paper schemes draw from ``np.random.default_rng([seed, scheme tag])`` in a fixed order, so
every rank computes the same full partition regardless of the rank count and keeps its own block. When
``--samples-per-client m`` is given, a random subset of ``n * m`` rows is used, else every row.

Minimum-size guard (``dirichlet`` and ``pathological``, ``--min-client-size``, default 2; any client needs at
least one row because f_i is a mean over its rows): a Dirichlet draw that leaves some client below the minimum is
redrawn, up to :data:`DIRICHLET_TRIES` times; if no draw qualifies (with two labels, alpha = 0.1 and 100 clients
about a quarter of the clients get fewer than 2 rows in every draw), the qualifying-closest draw is kept and each
short client is topped up with rows taken one at a time from the currently largest client. ``Partition.info``
records the spec, the seed, the redraws (rejected draws) and the rows moved, for the trace. ``iid`` only
checks the minimum (default 1); ``paper`` clients all have ``m`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mpifed.errors import ConfigError, DataError

SCHEMES = ("paper", "iid", "dirichlet", "pathological")
DIRICHLET_TRIES = 100  # draws before the top-up fallback
DEFAULT_MIN_CLIENT_SIZE = 2
_TAGS = {"iid": 1, "dirichlet": 2, "pathological": 3}  # stream keys, so schemes never share draws


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; compare fields explicitly
class Partition:
    """Rows of all clients, concatenated in client order (a CSR-like layout).

    Attributes
    ----------
    rows : numpy.ndarray
        int64 dataset row indices; client ``i`` owns ``rows[offsets[i]:offsets[i + 1]]``.
    offsets : numpy.ndarray
        int64, length ``n_clients + 1``, non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == len(rows)``.
    info : dict
        What produced it (``spec``, ``seed``, ``redraws``, ``moved_rows``), for the trace.
    """

    rows: np.ndarray
    offsets: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        rows = np.array(self.rows, dtype=np.int64).reshape(-1)
        offsets = np.array(self.offsets, dtype=np.int64).reshape(-1)
        if (offsets.size < 1 or offsets[0] != 0 or offsets[-1] != rows.size
                or np.any(np.diff(offsets) < 0)):
            raise DataError(f"invalid partition: offsets must rise from 0 to {rows.size} (the number of rows), "
                            f"got {offsets[:3].tolist()}...{offsets[-2:].tolist()}")
        rows.setflags(write=False)  # shared between ranks' views: keep it immutable
        offsets.setflags(write=False)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "offsets", offsets)

    @property
    def n_clients(self) -> int:
        """Number of clients."""
        return self.offsets.size - 1

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client, int64, shape ``(n_clients,)``."""
        return np.diff(self.offsets)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and rebased offsets of the contiguous clients ``[lo, hi)`` (e.g. one rank's share)."""
        if not 0 <= lo <= hi <= self.n_clients:
            raise DataError(f"client block [{lo}, {hi}) is outside [0, {self.n_clients}]")
        return self.rows[self.offsets[lo]:self.offsets[hi]], self.offsets[lo:hi + 1] - self.offsets[lo]


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"dirichlet:alpha=0.1"`` -> ``("dirichlet", {"alpha": 0.1})``; a one-line ConfigError for bad input."""
    name, _, args = str(spec).partition(":")
    valid = "paper, iid, dirichlet:alpha=<a > 0>, pathological:k=<k >= 1>"
    if name not in SCHEMES:
        raise ConfigError(f"--partition = {spec!r} is unknown; valid: {valid}")
    want = {"paper": (), "iid": (), "dirichlet": ("alpha",), "pathological": ("k",)}[name]
    params = {}
    for part in filter(None, args.split(",")):
        key, eq, raw = part.partition("=")
        if key not in want or not eq or key in params:
            raise ConfigError(f"--partition = {spec!r}: unexpected {part!r}; valid: {valid}")
        try:
            params[key] = int(raw) if key == "k" else float(raw)
        except ValueError:
            kind = "an integer" if key == "k" else "a number"
            raise ConfigError(f"--partition = {spec!r}: {key} = {raw!r} is not {kind}; valid: {valid}") from None
    if set(params) != set(want):
        raise ConfigError(f"--partition = {spec!r} needs {', '.join(want)}; valid: {valid}")
    if name == "dirichlet" and not (np.isfinite(params["alpha"]) and params["alpha"] > 0):
        raise ConfigError(f"--partition = {spec!r}: alpha = {params['alpha']:g} is out of range; valid: alpha > 0")
    if name == "pathological" and params["k"] < 1:
        raise ConfigError(f"--partition = {spec!r}: k = {params['k']} is out of range; valid: k >= 1")
    return name, params


def paper_split(n_rows: int, clients: int, samples_per_client: int, shuffle: int | None = None,
                name: str | None = None) -> Partition:
    """The papers' split: client ``i`` gets the ``i``-th block of ``m`` consecutive rows.

    Parameters
    ----------
    n_rows : int
        Rows in the dataset.
    clients : int
        Number of clients ``n >= 1``.
    samples_per_client : int
        ``m >= 1``; the first ``n * m`` rows are used and the rest dropped.
    shuffle : int, optional
        Seed: rows are first permuted by ``np.random.default_rng(shuffle).permutation(n_rows)``.
        ``None`` keeps file order, as in the papers.
    name : str, optional
        Dataset name used in error messages.

    Returns
    -------
    Partition
    """
    _check_count("clients", clients)
    _check_count("samples_per_client", samples_per_client)
    if shuffle is not None and (isinstance(shuffle, bool) or not isinstance(shuffle, (int, np.integer))
                                or shuffle < 0):
        raise DataError(f"shuffle must be None or an integer seed >= 0, got {shuffle!r}")
    total = clients * samples_per_client
    if total > n_rows:
        raise DataError(f"{clients} clients x {samples_per_client} samples = {total} rows exceed the "
                        f"{n_rows} rows of {name or 'the dataset'}")
    order = np.arange(n_rows) if shuffle is None else np.random.default_rng(shuffle).permutation(n_rows)
    return Partition(rows=order[:total], offsets=np.arange(clients + 1) * samples_per_client,
                     info={"spec": "paper", "seed": shuffle, "redraws": 0, "moved_rows": 0})


def make_partition(spec: str, labels, clients: int, samples_per_client: int | None = None, seed: int = 0,
                   min_client_size: int | None = None, name: str | None = None) -> Partition:
    """Partition the rows of a dataset with ``labels`` (shape ``(N,)``) by the scheme ``spec``.

    Parameters
    ----------
    spec : str
        ``paper``, ``iid``, ``dirichlet:alpha=<a>`` or ``pathological:k=<k>`` (see the module docstring).
    labels : array_like
        One label per dataset row; only their distinct values matter.
    clients : int
        ``n >= 1``.
    samples_per_client : int, optional
        ``m``: use ``n * m`` rows (the first ones for ``paper``, a random subset otherwise). Required for
        ``paper``; ``None`` uses every row for the other schemes.
    seed : int
        Seed of the random schemes (and the row permutation of ``paper``; ``None`` there keeps file order).
    min_client_size : int, optional
        Smallest allowed client for ``dirichlet`` / ``pathological`` (default :data:`DEFAULT_MIN_CLIENT_SIZE`).
    name : str, optional
        Dataset name used in error messages.

    Raises
    ------
    ConfigError
        An unknown scheme, alpha <= 0, or k outside [1, number of labels].
    DataError
        More clients than rows (or than ``rows / min_client_size``), or a label too rare for its k-label clients.
    """
    scheme, params = parse_spec(spec)
    labels = np.asarray(labels).reshape(-1)
    n_rows, where = labels.size, name or "the dataset"
    _check_count("clients", clients)
    if scheme == "paper":
        if samples_per_client is None:
            raise ConfigError("--partition paper needs --samples-per-client (m)")
        return paper_split(n_rows, clients, samples_per_client, seed, name)
    if samples_per_client is not None:
        _check_count("samples_per_client", samples_per_client)
    low = min_client_size if min_client_size is not None else (1 if scheme == "iid" else DEFAULT_MIN_CLIENT_SIZE)
    _check_count("min_client_size", low)
    used = n_rows if samples_per_client is None else clients * samples_per_client
    if used > n_rows:
        raise DataError(f"{clients} clients x {samples_per_client} samples = {used} rows exceed the "
                        f"{n_rows} rows of {where}")
    if clients * low > used:
        raise DataError(f"--clients = {clients} is out of range for {used} rows of {where} with at least {low} "
                        f"row(s) per client; valid: 1 <= clients <= {used // low}")
    rng = np.random.default_rng([int(seed), _TAGS[scheme]])
    pool = rng.permutation(n_rows)[:used]
    info = {"spec": str(spec), "seed": int(seed), "redraws": 0, "moved_rows": 0, "min_client_size": low}
    if scheme == "iid":
        sizes = np.full(clients, used // clients) + (np.arange(clients) < used % clients)
        return Partition(pool, np.concatenate([[0], np.cumsum(sizes)]), info)
    classes = np.unique(labels)
    by_class = [pool[labels[pool] == c] for c in classes]  # each in random order
    totals = np.array([len(r) for r in by_class])
    if scheme == "dirichlet":
        counts = _dirichlet_counts(rng, params["alpha"], clients, totals, low, info)
    else:
        counts = _pathological_counts(rng, params["k"], clients, totals, low, spec, where)
    return _assemble(by_class, counts, info)


def _check_count(label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{label} must be an integer >= 1, got {value!r}")


def _split_counts(q: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """(L, n) integer shares: label c's ``totals[c]`` rows cut at ``floor(cumsum(q_c) * totals[c])``."""
    cuts = np.floor(np.cumsum(q, axis=1) * totals[:, None]).astype(np.int64)
    cuts = np.minimum(cuts, totals[:, None])
    cuts[:, -1] = totals  # the last cut is the label's end, whatever the rounding of cumsum
    return np.diff(cuts, axis=1, prepend=0)


def _dirichlet_counts(rng, alpha: float, n: int, totals, low: int, info: dict) -> np.ndarray:
    best, best_deficit = None, None
    for t in range(DIRICHLET_TRIES):
        q = rng.dirichlet(np.full(n, alpha), size=totals.size)
        if not np.all(np.isfinite(q)):
            raise DataError(f"--partition dirichlet: alpha = {alpha:g} is too small for a finite Dir(alpha) draw "
                            f"over n = {n} clients; valid: a larger alpha")
        counts = _split_counts(q, totals)
        deficit = int(np.maximum(low - counts.sum(axis=0), 0).sum())
        if best is None or deficit < best_deficit:
            best, best_deficit = counts, deficit
        if deficit == 0:
            info["redraws"] = t
            return counts
    # No draw qualifies: top up the short clients from the largest one, one row at a time (the donor gives
    # its most frequent label, so its own label mix changes least).
    info["redraws"] = DIRICHLET_TRIES
    counts, sizes = best.copy(), best.sum(axis=0)
    for i in np.flatnonzero(sizes < low):
        while sizes[i] < low:
            j = int(np.argmax(sizes))
            c = int(np.argmax(counts[:, j]))
            counts[c, j] -= 1
            counts[c, i] += 1
            sizes[j] -= 1
            sizes[i] += 1
    info["moved_rows"] = best_deficit
    return counts


def _pathological_counts(rng, k: int, n: int, totals, low: int, spec, where) -> np.ndarray:
    L = totals.size
    if k > L:
        raise ConfigError(f"--partition = {spec!r}: k = {k} is out of range; valid: 1 <= k <= {L} "
                          f"(the labels of {where})")
    held = np.zeros((L, n), dtype=bool)
    for i in range(n):  # label i mod L first, so every label is held when n >= L
        first = i % L
        others = np.delete(np.arange(L), first)
        held[np.concatenate([[first], rng.choice(others, size=k - 1, replace=False)]), i] = True
    holders = held.sum(axis=1)
    counts = np.zeros((L, n), dtype=np.int64)
    for c in np.flatnonzero(holders):  # label c's rows split evenly over its holders, as np.array_split does
        share = np.full(holders[c], totals[c] // holders[c]) + (np.arange(holders[c]) < totals[c] % holders[c])
        counts[c, held[c]] = share
    sizes = counts.sum(axis=0)
    if sizes.min() < low or np.any(counts[held] == 0):
        raise DataError(f"--partition = {spec!r} with n = {n} clients leaves a client with {sizes.min()} row(s) "
                        f"(rows per label {totals.tolist()}, clients per label {holders.tolist()}); valid: fewer "
                        f"clients, so that each has >= 1 row of each of its k labels and >= {low} rows in all")
    return counts


def _assemble(by_class, counts: np.ndarray, info: dict) -> Partition:
    """Concatenate client by client: client i takes its ``counts[c, i]`` rows of each label c in turn."""
    n = counts.shape[1]
    starts = np.cumsum(counts, axis=1) - counts  # where client i's slice of label c begins
    pieces = [by_class[c][starts[c, i]:starts[c, i] + counts[c, i]]
              for i in range(n) for c in range(counts.shape[0])]
    rows = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return Partition(rows, np.concatenate([[0], np.cumsum(counts.sum(axis=0))]), info)
