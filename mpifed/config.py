"""The typed run configuration: defaults < TOML file < command-line flags.

Some defaults depend on the kind of run (:func:`with_run_defaults`): a convex run stops at ``DEFAULT_TOL``;
a network run (``model``) takes an IID partition, no reference solve and no tolerance; an image dataset
alone trains the CNN with FedAvg. :mod:`mpifed.plan` then resolves the checked configuration into what the
lower layers take.

Every field is checked here, before any rank loads data, and a bad value gets a one-line
:class:`ConfigError` that names it and its valid range. Checks that need the data (a
compressor's K against d(d+1)/2, clients against rows) happen at setup, still before the
first round.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .data import IMAGE_SETS, sparse_synthetic
from .data.partition import parse_spec
from .errors import ConfigError

IMAGE_CLIENTS = 100  # clients of an image federation when --clients is not given
DTYPES = ("float64", "float32")  # a network's client arithmetic (--dtype); the convex problems are float64
# --problem: the objective on tabular data (a --model run trains a network instead); mpifed.problems.BLOCKS builds it
PROBLEMS = ("logistic", "least-squares", "pca", "saddle")
# --problem pca is an objective on the unit sphere: only the Riemannian methods (mpifed/algorithms/riemannian/)
# solve it, and they solve nothing else; the mini-batch ones sample a tenth of the clients per round by default
RIEMANNIAN_DEFAULTS = {"r-lsvrg": {"participation": 0.1}, "r-page": {"participation": 0.1}}
DEFAULT_SIMILARITY = 0.1  # --problem saddle: delta, the spread of the clients' bilinear couplings
LMO_NORMS = ("l2", "linf", "spectral")  # --lmo-norm: the ball of the LMO step (spectral: per layer, networks only)
DIAGONALS = ("exact", "hutchinson")  # Fed-Sophia's curvature diagonal on the tabular problems (--diagonal)

# A convex run stops once ||grad P(x^k)|| <= DEFAULT_TOL unless --tol says otherwise: the papers' target
# (FedNL, u-FedNL: 1e-14), a few ulps of the gradient's scale, past which rounds only repeat x*. Networks
# have no such measure (their grad_norm is of a mini-batch): they run every round.
DEFAULT_TOL = 1e-14
NETWORK_DEFAULTS = {"partition": "iid", "reference_iterations": 0, "tol": 0.0}  # what a --model run changes
IMAGE_DEFAULTS = {"model": "cnn", "algorithm": "fedavg"}  # an image dataset without --model trains a CNN

# Hyper-parameters that only some methods read; a method refuses the ones it does not use.
METHOD_FIELDS = ("compressor", "alpha", "option", "step_hessian", "mu", "step_size", "eta", "gamma",
                 "local_steps", "local_line_search", "participation", "ls_c", "ls_gamma", "hessian_lipschitz",
                 "down_compressor", "grad_probability", "server_lr", "momentum", "prox_mu", "scaffold_option",
                 "beta1", "beta2", "adam_eps", "step_decay", "f_star", "local_curvature", "radius", "ball_norm",
                 "hessian", "solver", "cg_iterations", "adaptive_regularization",
                 # Hessian-free methods: the forcing constant, L-BFGS's memory and exchanges per round
                 "forcing", "memory", "lbfgs_exchanges",
                 # LMO methods: the ball of the LMO (--radius is their step)
                 "lmo_norm",
                 "skip_probability", "sampling", "inner_rounds",
                 # approximate Newton (CG on Hessian-vector products), FedCurv, Fed-Sophia
                 "line_search", "curv_lambda", "diagonal", "clip", "hessian_every",
                 # neural-network methods (--model): mini-batches, FOOF / K-FAC, FedRCO's monitor and aggregation
                 "batch_size", "damping", "ema_decay", "inverse_every", "monitor", "tau_low", "tau_high",
                 "monitor_window", "monitor_warmup", "monitor_history", "patience", "stable_norm", "aggregation",
                 "eval_batch")


@dataclass(frozen=True)
class RunConfig:
    """One run. Field names are the flags (``--samples-per-client``) and the TOML keys."""

    dataset: str = "synthetic"
    problem: str = "logistic"
    similarity: float | None = None
    features: int | None = None
    eigengap: float | None = None
    clients: int | None = None
    samples_per_client: int | None = None
    shuffle: int | None = None
    intercept: bool = False
    condition: float | None = None
    lam: float = 1e-3
    l1: float = 0.0
    algorithm: str = "fednl"
    compressor: str | None = None
    alpha: float | None = None
    option: int | None = None
    step_hessian: str | None = None
    mu: float | None = None
    step_size: float | str | None = None  # a number, or "auto" (SPPM: the theorem's step for --tol)
    eta: float | None = None
    gamma: float | None = None
    local_steps: int | None = None
    local_line_search: bool | None = None
    participation: float | None = None
    ls_c: float | None = None
    ls_gamma: float | None = None
    hessian_lipschitz: float | None = None
    down_compressor: str | None = None
    grad_probability: float | None = None
    x0_noise: float | None = None
    server_lr: float | None = None
    momentum: float | None = None
    prox_mu: float | None = None
    scaffold_option: int | None = None
    beta1: float | None = None
    beta2: float | None = None
    adam_eps: float | None = None
    step_decay: float | None = None
    skip_probability: float | None = None
    sampling: str | None = None
    inner_rounds: int | None = None
    f_star: float | None = None
    local_curvature: bool | None = None
    radius: float | None = None
    ball_norm: str | None = None
    hessian: str | None = None
    solver: str | None = None
    cg_iterations: int | None = None
    adaptive_regularization: bool | None = None
    forcing: float | None = None
    memory: int | None = None
    lbfgs_exchanges: int | None = None
    lmo_norm: str | None = None
    line_search: bool | None = None
    curv_lambda: float | None = None
    diagonal: str | None = None
    clip: float | None = None
    hessian_every: int | None = None
    model: str | None = None
    batch_size: int | None = None
    damping: float | None = None
    ema_decay: float | None = None
    inverse_every: int | None = None
    monitor: bool | None = None
    tau_low: float | None = None
    tau_high: float | None = None
    monitor_window: int | None = None
    monitor_warmup: int | None = None
    monitor_history: str | None = None
    patience: int | None = None
    stable_norm: float | None = None
    aggregation: str | None = None
    eval_batch: int | None = None
    corrupt: str | None = None
    partition: str = "paper"
    min_client_size: int | None = None
    test_dataset: str | None = None
    validation: float | None = None
    eval_every: int = 1
    network: str = "lan"
    device: str | None = None
    checkpoint_every: int = 0
    rounds: int = 100
    tol: float = DEFAULT_TOL
    seed: int = 0
    float_bits: int = 32
    reference_iterations: int = 20
    backend: str = "numpy"
    dtype: str = "float64"
    out: str | None = None
    overwrite: bool = False
    quiet: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


_TYPES = {f.name: f.type for f in fields(RunConfig)}


def _coerce(name: str, value):
    """Check (and for ints given as floats like 1e3, convert) the value of field ``name``."""
    from .algorithms.proximal.sppm import AUTO

    kind = _TYPES[name]
    if name == "step_size" and value == AUTO:  # SPPM's step from its theorem, for the run's target
        return value
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{_flag(name)} needs a value")
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{_flag(name)} must be true or false, got {value!r}")
        return value
    if kind.startswith("int"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_flag(name)} must be an integer, got {value!r}")
        return value
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{_flag(name)} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{_flag(name)} must be a string, got {value!r}")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_ranges(c: RunConfig) -> None:
    from .algorithms import L1_METHODS, METHODS, NN_METHODS, method_for
    from .algorithms.proximal.sampling import parse as parse_sampling
    from .algorithms.networks import AGGREGATIONS
    from .algorithms.proximal.balls import BALL_NORMS
    from .algorithms.proximal.sppm import AUTO
    from .backend import BACKENDS

    def need(ok: bool, name: str, valid: str):
        if not ok:
            raise ConfigError(f"{_flag(name)} = {getattr(c, name)!r} is out of range; valid: {valid}")

    need(c.algorithm in METHODS or c.algorithm in NN_METHODS, "algorithm", ", ".join(dict.fromkeys([*METHODS, *NN_METHODS])))
    need(c.problem in PROBLEMS, "problem", ", ".join(PROBLEMS))
    need(c.similarity is None or c.similarity >= 0, "similarity", "delta >= 0 (0: identical clients)")
    need(c.lmo_norm in (None, *LMO_NORMS), "lmo_norm", ", ".join(LMO_NORMS))
    need(c.backend in BACKENDS, "backend", ", ".join(BACKENDS))
    need(c.dtype in DTYPES, "dtype", ", ".join(DTYPES))
    need(c.lam >= 0, "lam", "lam >= 0")
    need(c.l1 >= 0, "l1", "lam1 >= 0 (0: no L1 term)")
    need(c.rounds >= 0, "rounds", "an integer >= 0")
    need(c.tol >= 0, "tol", "tol >= 0 (0 runs every round)")
    need(c.float_bits in (16, 32, 64), "float_bits", "16, 32 or 64")
    need(c.reference_iterations >= 0, "reference_iterations", "an integer >= 0 (0 skips x*)")
    need(c.seed >= 0, "seed", "an integer >= 0")
    need(c.shuffle is None or c.shuffle >= 0, "shuffle", "a seed >= 0, or omit for file order")
    need(c.clients is None or c.clients >= 1, "clients", "an integer >= 1")
    need(c.samples_per_client is None or c.samples_per_client >= 1, "samples_per_client", "an integer >= 1")
    need(c.features is None or c.features >= 1, "features", "an integer >= 1")
    need(c.condition is None or c.condition >= 1, "condition", "kappa >= 1 (the synthetic features' covariance)")
    need(c.condition is None or c.dataset == "synthetic", "condition", "only with --dataset synthetic")
    need(c.eigengap is None or 0 < c.eigengap < 1, "eigengap", "0 < lambda_1 - lambda_2 < 1 (lambda_1 = 1)")
    need(c.alpha is None or c.alpha > 0, "alpha", "alpha > 0")
    need(c.option in (None, 1, 2), "option", "1 (projection [H]_mu) or 2 (H + l I)")
    need(c.step_hessian in (None, "previous", "updated"), "step_hessian", "previous (paper) or updated (u-FedNL)")
    need(c.mu is None or c.mu > 0, "mu", "mu > 0")
    if c.step_size == AUTO:
        _check_auto(c)
    else:
        need(c.step_size is None or c.step_size > 0, "step_size", "step_size > 0, or auto (sppm)")
    need(c.eta is None or c.eta > 0, "eta", "eta > 0")
    need(c.gamma is None or c.gamma > 0, "gamma", "gamma > 0")
    need(c.local_steps is None or c.local_steps >= 1, "local_steps", "an integer K >= 1")
    need(c.participation is None or 0 < c.participation <= 1 or float(c.participation).is_integer(),
         "participation", "a fraction in (0, 1] or a whole number of clients >= 1")
    need(c.ls_c is None or 0 < c.ls_c <= 0.5, "ls_c", "0 < c <= 1/2")
    need(c.ls_gamma is None or 0 < c.ls_gamma < 1, "ls_gamma", "0 < gamma < 1")
    need(c.hessian_lipschitz is None or c.hessian_lipschitz > 0, "hessian_lipschitz", "L > 0")
    need(c.grad_probability is None or 0 < c.grad_probability <= 1, "grad_probability", "0 < p <= 1")
    need(c.x0_noise is None or c.x0_noise >= 0, "x0_noise", "sigma >= 0")
    need(c.server_lr is None or c.server_lr > 0, "server_lr", "server_lr > 0")
    need(c.momentum is None or 0 <= c.momentum < 1, "momentum", "0 <= beta < 1")
    need(c.prox_mu is None or c.prox_mu >= 0, "prox_mu", "mu >= 0")
    need(c.scaffold_option in (None, 1, 2), "scaffold_option", "1 (control variate from a fresh gradient) or 2 (from the local steps)")
    need(c.beta1 is None or 0 <= c.beta1 < 1, "beta1", "0 <= beta1 < 1")
    need(c.beta2 is None or 0 <= c.beta2 < 1, "beta2", "0 <= beta2 < 1")
    need(c.adam_eps is None or c.adam_eps > 0, "adam_eps", "eps > 0")
    need(c.hessian in (None, "full", "diagonal"), "hessian", "full (the paper's) or diagonal")
    need(c.solver in (None, "cholesky", "cg"), "solver", "cholesky (the paper's) or cg")
    need(c.cg_iterations is None or c.cg_iterations >= 1, "cg_iterations", "an integer >= 1")
    need(c.min_client_size is None or c.min_client_size >= 1, "min_client_size", "an integer >= 1")
    need(c.eval_every >= 1, "eval_every", "an integer >= 1")
    need(c.validation is None or 0 < c.validation < 1, "validation", "a fraction 0 < f < 1 of the training images")
    need(c.forcing is None or c.forcing > 0, "forcing", "a forcing constant > 0")
    need(c.memory is None or c.memory >= 0, "memory", "an integer M >= 0 (0: steepest descent)")
    need(c.lbfgs_exchanges in (None, 1, 2), "lbfgs_exchanges",
         "1 (the trial point's gradient is the next round's) or 2 (gradient, then the trials along p_k)")
    need(c.step_decay is None or c.step_decay >= 0, "step_decay", "decay >= 0 (0 keeps the step constant)")
    need(c.skip_probability is None or 0 < c.skip_probability <= 1, "skip_probability", "0 < p <= 1")
    need(c.inner_rounds is None or c.inner_rounds >= 1, "inner_rounds", "an integer K >= 1")
    if c.sampling is not None:
        parse_sampling(c.sampling)
    need(c.radius is None or c.radius > 0, "radius", "a radius t > 0")
    need(c.ball_norm in (None, *BALL_NORMS), "ball_norm", ", ".join(BALL_NORMS))
    need(c.f_star is not None or c.reference_iterations > 0 or c.algorithm not in ("lcd2", "lcd3"), "reference_iterations",
         f"{c.algorithm} needs f* = min P: keep --reference-iterations > 0 or give --f-star")
    need(c.curv_lambda is None or c.curv_lambda >= 0, "curv_lambda", "lambda >= 0 (0: FedAvg)")
    need(c.diagonal in (None, *DIAGONALS), "diagonal", ", ".join(DIAGONALS))
    need(c.clip is None or c.clip > 0, "clip", "rho > 0")
    need(c.hessian_every is None or c.hessian_every >= 1, "hessian_every", "an integer tau >= 1")
    need(c.batch_size is None or c.batch_size >= 1, "batch_size", "an integer b >= 1")
    need(c.damping is None or c.damping > 0, "damping", "eps > 0")
    need(c.ema_decay is None or 0 < c.ema_decay <= 1, "ema_decay", "0 < alpha <= 1 (1: no averaging)")
    need(c.inverse_every is None or c.inverse_every >= 1, "inverse_every", "an integer T_inv >= 1")
    need(c.tau_low is None or c.tau_low > 1, "tau_low", "tau_low > 1")
    need(c.tau_high is None or c.tau_high > (c.tau_low or 10.0), "tau_high", f"tau_high > tau_low = {c.tau_low or 10.0:g}")
    need(c.monitor_window is None or c.monitor_window >= 1, "monitor_window", "an integer >= 1")
    need(c.monitor_warmup is None or 1 <= c.monitor_warmup <= (c.monitor_window or 10), "monitor_warmup",
         f"an integer 1 <= warm-up <= --monitor-window = {c.monitor_window or 10}")
    need(c.monitor_history in (None, "run", "round"), "monitor_history", "run (H kept across rounds) or round")
    need(c.patience is None or c.patience >= 1, "patience", "an integer >= 1")
    need(c.stable_norm is None or c.stable_norm > 0, "stable_norm", "a norm > 0")
    need(c.aggregation in (None, *AGGREGATIONS), "aggregation", ", ".join(AGGREGATIONS))
    need(c.eval_batch is None or c.eval_batch >= 1, "eval_batch", "an integer >= 1")
    network_profile(c)
    need(c.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0 (0: no periodic checkpoints)")
    parse_spec(c.partition)
    sparse_synthetic.parse(c.dataset)  # a bad synthetic-sparse:nnz=K fails here, before any rank generates data
    need(c.x0_noise is None or c.reference_iterations > 0, "x0_noise",
         "x0 = x* + sigma N(0, I) needs x*: keep --reference-iterations > 0")
    method = method_for(c.algorithm, c.model is not None)
    _check_sphere(c)
    _check_solves(c, method)
    if c.l1 > 0 and (c.model is not None or c.algorithm not in L1_METHODS):
        raise ConfigError(f"--l1 = {c.l1!r} needs a method that handles the L1 term; valid: --algorithm "
                          f"{', '.join(L1_METHODS)} (without --model), or --l1 0")
    if c.model is not None:
        _check_network(c)
    elif c.dataset in IMAGE_SETS:
        raise ConfigError(f"--dataset {c.dataset} is an image set: give --model (e.g. --model cnn)")
    elif c.corrupt is not None:
        raise ConfigError("--corrupt applies to neural-network runs only (give --model)")
    elif c.dtype != "float64":
        raise ConfigError(f"--dtype {c.dtype} applies to neural-network runs only (give --model); "
                          f"the convex problems run in float64")
    elif c.validation is not None:
        raise ConfigError("--validation applies to neural-network runs only (give --model)")
    extra = [name for name in METHOD_FIELDS if getattr(c, name) is not None and name not in method.Params.uses]
    if extra:
        takes = ", ".join(_flag(n) for n in method.Params.uses) or "none of them"
        raise ConfigError(f"{', '.join(_flag(n) for n in extra)} does not apply to algorithm "
                          f"{c.algorithm!r} (it takes {takes})")


def _check_auto(c: RunConfig) -> None:
    """One-line errors for ``--step-size auto`` that need no data: SPPM only, a target (--tol > 0), x* (the
    reference solve), and mu_AS > 0 on the logistic problem (its clients' strong convexity is lam alone)."""
    if c.algorithm != "sppm":
        raise ConfigError(f"--step-size auto applies to sppm only (the SPPM-AS theorem's step); {c.algorithm} takes "
                          f"a number > 0")
    if not c.tol > 0:
        raise ConfigError(f"--step-size auto needs a target: --tol = {c.tol!r} is out of range; valid: tol > 0 "
                          f"(the step is chosen so that E||x - x*||^2 <= (tol/L)^2)")
    if c.reference_iterations <= 0:
        raise ConfigError("--step-size auto needs x* (sigma^2 = E||grad f_S(x*) - grad f(x*)||^2): keep "
                          "--reference-iterations > 0")
    if c.problem == "logistic" and not c.lam > 0:
        raise ConfigError(f"--step-size auto needs mu_AS > 0: on the logistic problem mu_i = lam = {c.lam!r}; "
                          f"valid: --lam > 0, or a number for --step-size")


def _check_sphere(c: RunConfig) -> None:
    """One-line errors for a method or option that does not fit ``--problem pca`` (tabular runs)."""
    from .algorithms import RIEMANNIAN_METHODS

    if c.model is not None:
        return
    valid = ", ".join(RIEMANNIAN_METHODS)
    if c.problem != "pca":
        if c.algorithm in RIEMANNIAN_METHODS:
            raise ConfigError(f"--algorithm = {c.algorithm!r} optimises on the unit sphere; --problem {c.problem} has "
                              f"no manifold (give --problem pca, or a method of the problem such as gd)")
        if c.eigengap is not None:
            raise ConfigError("--eigengap applies to --problem pca on the synthetic dataset only")
        return
    if c.algorithm not in RIEMANNIAN_METHODS:
        raise ConfigError(f"--algorithm = {c.algorithm!r} does not apply to --problem pca (an objective on the unit "
                          f"sphere, unbounded below off it); valid: {valid}")
    if c.intercept:
        raise ConfigError("--intercept does not apply to --problem pca (the second moment of the rows as they are)")
    if c.x0_noise is not None:
        raise ConfigError("--x0-noise does not apply to --problem pca (x0 is a seeded random unit vector)")
    if c.test_dataset is not None:
        raise ConfigError("--test-dataset does not apply to --problem pca (it has no test metric; see pca_gap)")
    if c.eigengap is not None and c.dataset != "synthetic":
        raise ConfigError(f"--eigengap applies to the synthetic dataset only; --dataset = {c.dataset!r} has its own")
    if c.dataset == "synthetic":
        from .data import SYNTHETIC_DEFAULTS

        m = c.samples_per_client or SYNTHETIC_DEFAULTS["samples_per_client"]
        d = c.features or SYNTHETIC_DEFAULTS["features"]
        if m < d:
            raise ConfigError(f"--samples-per-client = {m} is out of range for the synthetic PCA federation; valid: "
                              f">= --features = {d} (each client's rows have the set second moment)")
def _check_solves(c: RunConfig, method) -> None:
    """The method solves the problem (``Params.problems``; the GLMs, logistic and least squares, when absent), and
    the saddle problem's options."""
    solves = getattr(method.Params, "problems", ("logistic", "least-squares"))
    if c.model is None and c.problem not in solves:
        raise ConfigError(f"--problem {c.problem} does not apply to algorithm {c.algorithm!r}; valid: "
                          f"{', '.join(solves)}")
    if c.problem != "saddle" and c.similarity is not None:
        raise ConfigError(f"--similarity applies to --problem saddle only (this run: --problem {c.problem})")
    if c.problem == "saddle" and c.dataset != "synthetic":
        raise ConfigError(f"--problem saddle generates its own operators; --dataset = {c.dataset!r}, valid: synthetic")
    if c.lmo_norm == "spectral" and c.model is None:
        raise ConfigError("--lmo-norm spectral applies to networks only (per-layer matrices; give --model); "
                          "valid without --model: l2, linf")


def network_profile(c: RunConfig):
    """The run's :class:`~mpifed.network.Profile` (``--network``, ``--device``), or a one-line ConfigError."""
    from .network import profiles

    if c.device is not None and c.device not in profiles.DEVICES:
        try:
            float(c.device)
        except ValueError:
            raise ConfigError(f"--device = {c.device!r} is out of range; valid: {', '.join(profiles.DEVICES)} or a "
                              f"number of GFLOP/s") from None
    return profiles.load(c.network, _device(c.device))


def _device(value):
    """A --device name, or its GFLOP/s as a number."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _check_network(c: RunConfig) -> None:
    """One-line errors for a network run, before any data is read."""
    from .problems.nn import parse_spec as model_spec
    from .problems.nn.block import Corruption

    model_spec(c.model)
    if c.problem != "logistic":
        raise ConfigError(f"--problem {c.problem} is an objective on tabular data; with --model the network's "
                          f"cross-entropy is the objective (leave --problem out)")
    if c.dataset not in IMAGE_SETS:
        raise ConfigError(f"--model needs an image dataset; --dataset = {c.dataset!r}, valid: {', '.join(IMAGE_SETS)}")
    if parse_spec(c.partition)[0] == "paper":
        raise ConfigError("--partition = 'paper' does not apply to image datasets; valid: iid (the default), "
                          "dirichlet:alpha=<a>, pathological:k=<k>")
    if c.intercept:
        raise ConfigError("--intercept does not apply to neural networks (every layer has its bias)")
    bad = Corruption.parse(c.corrupt)
    clients = c.clients or IMAGE_CLIENTS
    if bad is not None and bad.hi >= clients:
        raise ConfigError(f"--corrupt = {c.corrupt!r} names client {bad.hi}; valid: clients 0..{clients - 1}")
    if c.reference_iterations:
        raise ConfigError(f"--reference-iterations = {c.reference_iterations} needs a convex problem; "
                          f"for a neural network leave it at 0 (there is no x*)")


def with_run_defaults(values: dict) -> dict:
    """``values`` with the defaults that depend on the kind of run filled in where not given: an image dataset
    trains a CNN with FedAvg; a network run (``model``) uses an IID partition, no reference solve and no
    tolerance (:data:`NETWORK_DEFAULTS`)."""
    values = dict(values)
    for key, default in RIEMANNIAN_DEFAULTS.get(values.get("algorithm"), {}).items():
        if values.get(key) is None:
            values[key] = default
    if values.get("dataset") in IMAGE_SETS:
        for key, default in IMAGE_DEFAULTS.items():
            if values.get(key) is None:
                values[key] = default
    if values.get("model") is not None:
        for key, default in NETWORK_DEFAULTS.items():
            if values.get(key) is None:
                values[key] = default
    return values


def build(values: dict) -> RunConfig:
    """A checked RunConfig from a mapping of field names (unknown names are an error)."""
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}; valid: {', '.join(_TYPES)}")
    values = with_run_defaults(values)
    config = RunConfig(**{k: _coerce(k, v) for k, v in values.items()})
    _check_ranges(config)
    return config


def read_toml(path: str | Path, what: str = "config") -> dict:
    """A TOML file as a dict, with one-line errors for a missing or malformed file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def load(path: str | Path | None = None, **overrides) -> RunConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (None values are ignored)."""
    values = {}
    if path is not None:
        values = {k.replace("-", "_"): v for k, v in read_toml(path).items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(values)
