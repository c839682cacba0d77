"""Comparison plans: several methods on one federation, one trace each, one table.

A plan is a TOML file::

    out = "runs/compare-a9a"      # folder of traces, one <name>.h5 per run
    target = 1e-10                # the table reports rounds, bits and seconds to ||grad P|| <= target

    [common]                      # RunConfig fields shared by every run
    dataset = "a9a"
    rounds = 300
    tol = 1e-12

    [runs.newton]                 # one table per run: its own fields on top of [common]
    algorithm = "newton"
    [runs.fednl-topk]
    algorithm = "fednl"
    compressor = "topk:k=8d"

``mpifed compare PLAN.toml`` checks every run's configuration before the first one starts,
then runs them in order on all ranks (``mpiexec -n 4 mpifed compare ...``) and prints the
table that ``mpifed info FOLDER --target T`` prints again later.

A SIGTERM or SIGINT (SLURM's warning before the time limit) suspends the current run with a
checkpoint and stops the plan there; ``mpifed compare PLAN.toml --resume`` then keeps the finished
traces, continues the suspended run from its checkpoint and runs the rest.

Against a baseline (:mod:`mpifed.analysis.baseline`), three more optional keys (``--baseline``, ``--network``
and ``--metric`` override them)::

    baseline = "gd"               # a run name, or the algorithm of exactly one run
    networks = ["4g", "3g"]       # re-simulate the wall-clock under these profiles (default: each run's own)
    metric = "grad_norm"          # or "test_accuracy" (networks: target is then the accuracy to reach)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from .. import config as cfgmod
from ..errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Plan:
    folder: Path
    target: float
    runs: tuple  # ((name, RunConfig), ...)
    baseline: str | None = None
    networks: tuple = ()
    metric: str = "grad_norm"


def load_plan(path: str | Path, only: list[str] | None = None, overwrite: bool = False, table: bool = False,
              resume: bool = False) -> Plan:
    """Read and check a plan; every run's RunConfig is built (and validated) here (``table``: the traces are only
    read, so existing ones are expected; ``resume``: existing traces are kept or continued, see :func:`run_plan`)."""
    if resume and (overwrite or table):
        raise ConfigError("--resume keeps the plan's traces; it cannot be combined with --overwrite or --table")
    path = Path(path)
    raw = cfgmod.read_toml(path, "plan")
    keys = ("out", "target", "common", "runs", "baseline", "networks", "metric")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(keys)}")
    runs = raw.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ConfigError(f"{path}: no [runs.<name>] tables; a plan needs at least one run")
    target = raw.get("target", 1e-10)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise ConfigError(f"{path}: target = {target!r} is out of range; valid: a number > 0")
    folder = Path(raw.get("out", Path("runs") / path.stem))
    common = raw.get("common", {})
    if only:
        missing = sorted(set(only) - set(runs))
        if missing:
            raise ConfigError(f"--only names unknown run(s) {', '.join(missing)}; the plan has {', '.join(runs)}")
        runs = {k: v for k, v in runs.items() if k in only}
    built = []
    for name, fields in runs.items():
        if not _NAME.match(name):
            raise ConfigError(f"{path}: run name {name!r} is not a plain file name (letters, digits, _ . + -)")
        values = {k.replace("-", "_"): v for k, v in {**common, **fields}.items()}
        values.update(out=str(folder / f"{name}.h5"), overwrite=overwrite or values.get("overwrite", False))
        try:
            built.append((name, cfgmod.build(values)))
        except ConfigError as err:
            raise ConfigError(f"{path}: run {name!r}: {err}") from None
    if not (overwrite or table or resume):
        present = [str(c.out) for _, c in built if Path(c.out).exists()]
        if present:
            raise ConfigError(f"output {present[0]} exists; pass --overwrite to replace the plan's traces")
    metric = raw.get("metric", "grad_norm")
    if metric not in ("grad_norm", "test_accuracy"):
        raise ConfigError(f"{path}: metric = {metric!r} is out of range; valid: grad_norm, test_accuracy")
    networks = raw.get("networks", [])
    if isinstance(networks, str) or not all(isinstance(n, str) for n in networks):
        raise ConfigError(f"{path}: networks = {networks!r} is out of range; valid: a list of profile names or paths")
    return Plan(folder, float(target), tuple(built), raw.get("baseline"), tuple(networks), metric)


def existing(plan: Plan, table: bool) -> None:
    """With ``table`` (print from the traces, run nothing): every run's trace must exist."""
    missing = [str(c.out) for _, c in plan.runs if not Path(c.out).is_file()]
    if table and missing:
        raise ConfigError(f"--table reads the plan's traces, but {missing[0]} does not exist; run the plan first")


FINISHED = ("completed", "converged", "failed")  # a trace with one of these statuses is a result


def run_plan(plan: Plan, comm=None, resume: bool = False) -> list:
    """Run the plan's configurations in order on all ranks; returns the RunResults of the runs made.

    A run that ends ``suspended`` (a signal) stops the plan: its result is the last one returned. With
    ``resume``, a trace that is already a result is kept, one with a checkpoint beside it is continued from
    the checkpoint (the plan's ``rounds`` and ``tol`` apply), and any other is run afresh.
    """
    from ..comm import world
    from ..driver import run

    comm = comm or world()
    results = []
    for _, config in plan.runs:
        # rank 0 reads the trace (only it loads h5py); every rank takes its answer
        action = comm.allgather(_resume_action(Path(config.out)) if resume and comm.is_root else None)[0] or "run"
        if action == "keep":
            continue
        if action == "continue":
            result = run({"rounds": config.rounds, "tol": config.tol, "quiet": config.quiet}, comm=comm,
                         resume=config.out)
        else:
            result = run(config if action == "run" else replace(config, overwrite=True), comm=comm)
        results.append(result)
        if result.status == "suspended":
            break
    return results


def _resume_action(trace: Path) -> str:
    """keep (a finished trace), continue (a checkpoint is there), rerun (a trace cut short without one) or run."""
    from ..checkpoint import path_for
    from ..trace import load

    if path_for(trace).is_file():
        return "continue"
    if not trace.exists():
        return "run"
    try:
        status = load(trace).attrs.get("status")
    except Exception:  # a damaged trace is run again
        return "rerun"
    return "keep" if status in FINISHED else "rerun"
