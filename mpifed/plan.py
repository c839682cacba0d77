"""A run's configuration resolved once into what each layer needs.

:func:`resolve` turns a checked :class:`~mpifed.config.RunConfig` into a :class:`Plan`: the
:class:`DataSpec` a rank's share of the federation is built from (:mod:`mpifed.federation`) and the
:class:`MethodOptions` a method's ``Params.from_options`` reads. The layers below the driver (data,
federation, problems, algorithms) take these plain values, never the whole configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass

from .algorithms.networks.local import DEFAULT_BATCH
from .config import DEFAULT_SIMILARITY, IMAGE_CLIENTS, METHOD_FIELDS, RunConfig
from .data import IMAGE_SETS, PAPER_SPLITS, SYNTHETIC_DEFAULTS, sparse_synthetic
from .data.partition import parse_spec
from .errors import ConfigError


@dataclass(frozen=True)
class DataSpec:
    """Everything that decides which rows each client holds, and the objective on them.

    ``clients`` and (for the papers' split and synthetic data) ``samples_per_client`` are resolved: the
    papers' split of a registered dataset, the synthetic defaults, or 100 clients for image sets. ``tau``
    is the number of clients per round (n under full participation). ``problem`` names the objective on tabular
    data (:data:`mpifed.problems.BLOCKS`); ``similarity`` is the saddle problem's delta. ``model`` is None for the tabular problems, else the network spec of
    :func:`mpifed.problems.nn.build_model`.
    """

    dataset: str
    clients: int
    samples_per_client: int | None
    features: int | None
    shuffle: int | None
    intercept: bool
    partition: str
    min_client_size: int | None
    test_dataset: str | None
    seed: int
    lam: float
    backend: str
    tau: int
    model: str | None = None
    batch_size: int = DEFAULT_BATCH
    corrupt: str | None = None
    dtype: str = "float64"
    validation: float | None = None
    problem: str = "logistic"
    condition: float | None = None
    eigengap: float | None = None  # the synthetic PCA federation's lambda_1 - lambda_2 (None: its default)
    similarity: float = DEFAULT_SIMILARITY

    @property
    def images(self) -> bool:
        return self.model is not None


_METHOD_TYPES = {f.name: f.type for f in fields(RunConfig)}
MethodOptions = make_dataclass(
    "MethodOptions",
    [("algorithm", str), ("network", bool), ("lam", float), ("seed", int), ("float_bits", int),
     ("reference_iterations", int), ("problem", str, field(default="logistic")), ("l1", float, field(default=0.0)),
     ("tol", float, field(default=0.0)), ("rounds", int, field(default=0))] + [(name, _METHOD_TYPES[name], field(default=None)) for name in METHOD_FIELDS],
    frozen=True)
MethodOptions.__module__ = __name__
MethodOptions.__doc__ = (
    "A method's options: its name, whether it trains a network, lam, the seed, the width of a transmitted "
    "float, whether x* is computed (reference_iterations > 0), the tabular problem, the L1 weight lam1, the stopping tolerance and the round budget (a method's target: SPPM's --step-size auto), and every hyper-parameter "
    "flag of the configuration (None: the method's default, which its ``Params.from_options`` fills in).")


@dataclass(frozen=True)
class Plan:
    data: DataSpec
    method: MethodOptions


def resolve(c: RunConfig) -> Plan:
    """The plan of a checked configuration (a one-line :class:`ConfigError` if the split cannot be resolved)."""
    clients, m = split(c)
    data = DataSpec(c.dataset, clients, m, c.features, c.shuffle, c.intercept, c.partition, c.min_client_size,
                    c.test_dataset, c.seed, c.lam, c.backend, participants(c.participation, clients), c.model,
                    c.batch_size or DEFAULT_BATCH, c.corrupt, c.dtype, c.validation, c.problem, c.condition,
                    c.eigengap, DEFAULT_SIMILARITY if c.similarity is None else c.similarity)
    method = MethodOptions(c.algorithm, c.model is not None, c.lam, c.seed, c.float_bits, c.reference_iterations,
                           problem=c.problem, l1=c.l1, tol=c.tol, rounds=c.rounds, **{name: getattr(c, name) for name in METHOD_FIELDS})
    return Plan(data, method)


def split(c: RunConfig) -> tuple[int, int | None]:
    """(clients, samples per client): the given values, else the papers' split of the dataset (the synthetic
    defaults; 100 clients for image sets). Partitions other than the papers' split may leave the sample count
    to the partition (None)."""
    if c.dataset == "synthetic" or sparse_synthetic.parse(c.dataset):
        defaults = SYNTHETIC_DEFAULTS if c.dataset == "synthetic" else sparse_synthetic.SPARSE_DEFAULTS
        return c.clients or defaults["clients"], c.samples_per_client or defaults["samples_per_client"]
    if c.dataset in IMAGE_SETS:
        return c.clients or IMAGE_CLIENTS, c.samples_per_client
    paper = PAPER_SPLITS.get(c.dataset, (None, None))
    clients = c.clients or paper[0]
    if parse_spec(c.partition)[0] == "paper":
        m = c.samples_per_client or paper[1]
        if not clients or not m:
            raise ConfigError(f"dataset {c.dataset!r} has no default split; give --clients and --samples-per-client")
        return clients, m
    if not clients:
        raise ConfigError(f"dataset {c.dataset!r} has no default number of clients; give --clients")
    return clients, c.samples_per_client


def participants(participation: float | None, n_clients: int) -> int:
    """tau, the number of clients per round: all n unless ``participation`` is a fraction in (0, 1] or a count."""
    p = participation
    if p is None:
        return n_clients
    tau = max(1, round(p * n_clients)) if p <= 1 else int(p)
    if tau > n_clients:
        raise ConfigError(f"--participation = {p:g} asks for {tau} clients per round; valid: at most n = {n_clients}")
    return tau
