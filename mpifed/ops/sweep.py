"""Parameter sweeps: a grid of run configurations, written out for a SLURM array job.

A grid file is TOML::

    name = "{compressor}-s{seed}"      # optional: each run's trace name (default "{index:04d}")
    [base]                             # RunConfig fields shared by every run
    dataset = "a9a"
    algorithm = "fednl"
    rounds = 20
    [grid]                             # key = [values ...]: the Cartesian product, first key slowest
    compressor = ["topk:k=8d", "randk:k=8d"]
    seed = [0, 1]

``mpifed sweep GRID.toml --out DIR`` builds (and so validates) every configuration before it
writes anything, then writes ``DIR/configs/0000.toml ...`` (each with ``out =
DIR/traces/<name>.h5``) and ``DIR/sweep.json`` (the index: task id, name, grid point, config,
trace), and prints the array job's command, ``sbatch --array=0-(N-1) ... jobs/slurm-sweep.sbatch
DIR``; with ``--submit`` it runs that command itself (``--wait`` waits for every task).
Task i of the array runs ``DIR/configs/<i:04d>.toml``.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import config as cfgmod
from ..errors import ConfigError, MpifedError

TOP_KEYS = ("name", "base", "grid")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]")


@dataclass(frozen=True)
class Sweep:
    folder: Path      # absolute: the configs name their traces by absolute path, so jobs may start anywhere
    runs: tuple       # ((name, grid point dict, values dict written to the config, RunConfig), ...)
    grid: dict        # key -> list of values, in file order


def default_script() -> Path:
    """jobs/slurm-sweep.sbatch of the source checkout, else of the current folder."""
    here = Path(__file__).resolve().parents[2] / "jobs" / "slurm-sweep.sbatch"
    return here if here.is_file() else Path("jobs") / "slurm-sweep.sbatch"


def expand(path: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Sweep:
    """Read a grid file and build every configuration of its product (raises ConfigError, writes nothing)."""
    path = Path(path)
    raw = cfgmod.read_toml(path, "grid")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)} "
                          "(run settings go in [base] or [grid])")
    base, grid = raw.get("base", {}), raw.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError(f"{path}: [base] and [grid] must be tables")
    base = {k.replace("-", "_"): v for k, v in base.items()}
    grid = {k.replace("-", "_"): v for k, v in grid.items()}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key {key} = {values!r}; valid: a non-empty list of values")
    both = sorted(set(base) & set(grid))
    if both:
        raise ConfigError(f"{path}: {', '.join(both)} in both [base] and [grid]; give each key in one of them")
    fixed = sorted({"out", "overwrite"} & (set(base) | set(grid)))
    if fixed:
        raise ConfigError(f"{path}: {', '.join(fixed)} is set by the sweep (traces go to DIR/traces); remove it")
    pattern = raw.get("name", "{index:04d}")
    if not isinstance(pattern, str):
        raise ConfigError(f"{path}: name = {pattern!r}; valid: a string such as \"{{compressor}}-s{{seed}}\"")
    folder = Path(out if out is not None else Path("runs") / path.stem).resolve()
    runs, names = [], {}
    for index, combo in enumerate(itertools.product(*grid.values())):
        point = dict(zip(grid, combo))
        values = {**base, **point}
        name = _name(path, pattern, index, values)
        if name in names:
            raise ConfigError(f"{path}: name pattern {pattern!r} gives {name!r} to runs {names[name]} and {index}; "
                              "add the grid keys to it")
        names[name] = index
        values.update(out=str(folder / "traces" / f"{name}.h5"), overwrite=overwrite)
        try:
            built = cfgmod.build(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: grid point {index} ({_show(point)}): {err}") from None
        runs.append((name, point, values, built))
    return Sweep(folder, tuple(runs), grid)


def write(sweep: Sweep, grid_path: str | Path, overwrite: bool = False) -> None:
    """DIR/configs/NNNN.toml and DIR/sweep.json; refuses an existing sweep unless ``overwrite``.

    Replacing a sweep removes the traces (and checkpoints) of its tasks that the new grid no longer
    names: ``mpifed info DIR/traces`` and ``plot`` read every trace in the folder, and an old grid
    point would show up among the new ones. Traces the new grid names again are kept until their run
    replaces them.
    """
    index = sweep.folder / "sweep.json"
    if (index.exists() or (sweep.folder / "configs").exists()) and not overwrite:
        raise MpifedError(f"{sweep.folder} already holds a sweep; pass --overwrite to replace its configs")
    if index.exists():
        _remove_dropped_traces(index, {values["out"] for _, _, values, _ in sweep.runs})
    configs = sweep.folder / "configs"
    if configs.exists():
        shutil.rmtree(configs)
    configs.mkdir(parents=True)
    (sweep.folder / "traces").mkdir(exist_ok=True)
    (sweep.folder / "logs").mkdir(exist_ok=True)
    entries = []
    for i, (name, point, values, _) in enumerate(sweep.runs):
        file = configs / f"{i:04d}.toml"
        file.write_text(f"# sweep {grid_path}, task {i}: {_show(point)}\n" + to_toml(values))
        entries.append({"task": i, "name": name, "point": point, "config": str(file), "trace": values["out"]})
    index.write_text(json.dumps({"grid_file": str(Path(grid_path).resolve()), "grid": sweep.grid,
                                 "runs": entries}, indent=1) + "\n")


def _remove_dropped_traces(index: Path, kept: set) -> None:
    """Delete the traces and checkpoints that the old index ``index`` lists and ``kept`` does not."""
    from ..checkpoint import path_for

    try:
        old = [entry["trace"] for entry in json.loads(index.read_text())["runs"]]
    except (ValueError, KeyError, TypeError) as err:
        raise MpifedError(f"{index} is not a sweep index ({type(err).__name__}: {err}); remove it to start over") from None
    dropped = [Path(t) for t in old if t not in kept and (Path(t).exists() or path_for(t).exists())]
    for trace in dropped:
        trace.unlink(missing_ok=True)
        path_for(trace).unlink(missing_ok=True)
    if dropped:
        print(f"sweep: removed {len(dropped)} trace(s) of the replaced grid that the new one does not name")


def sbatch_command(sweep: Sweep, script: str | Path, wait: bool = False) -> list[str]:
    """The array job's sbatch command line (logs in DIR/logs/slurm-<array job>_<task>.out)."""
    command = ["sbatch", f"--array=0-{len(sweep.runs) - 1}",
               f"--output={sweep.folder / 'logs' / 'slurm-%A_%a.out'}"]
    if wait:
        command.append("--wait")
    return command + [str(script), str(sweep.folder)]


def submit(command: list[str], timeout: float | None = None) -> int:
    """Run sbatch; the venv running this command is the jobs' default (MPIFED_VENV) when none is set."""
    _need_sbatch()
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:
        env.setdefault("MPIFED_VENV", sys.prefix)
    return subprocess.run(command, env=env, timeout=timeout).returncode


def to_toml(values: dict) -> str:
    """Flat key = value lines (strings, booleans, numbers; None is left out: it is the default)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
        else:
            raise ConfigError(f"{key} = {value!r}; valid: a string, number or boolean")
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _need_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise MpifedError("sbatch not found on PATH: --submit needs a SLURM cluster (drop --submit to write "
                          "the configs and print the sbatch command)")


def _name(path: Path, pattern: str, index: int, values: dict) -> str:
    fields = {k: ("" if v is None else v) for k, v in _defaults(values).items()}
    try:
        name = pattern.format(index=index, **fields)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{path}: name pattern {pattern!r}: {err!r}; valid fields: index and the config keys") from None
    name = _UNSAFE.sub("_", name).lstrip(".")
    if not name:
        raise ConfigError(f"{path}: name pattern {pattern!r} gives an empty name for run {index}")
    return name


def _defaults(values: dict) -> dict:
    """Every config key with its default for this kind of run (a network run's partition is iid, ...)."""
    from dataclasses import asdict

    return {**asdict(cfgmod.RunConfig()), **cfgmod.with_run_defaults(values)}


def _show(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def main(grid: str, out: str | None, submit_now: bool, wait: bool, overwrite: bool, script: str | None) -> int:
    """``mpifed sweep``: expand, validate, write; then print or submit the array job."""
    sweep = expand(grid, out, overwrite)
    script = Path(script) if script else default_script()
    if submit_now:  # before writing: a failed --submit leaves nothing behind
        _need_sbatch()
    if not script.is_file():
        raise MpifedError(f"job script not found: {script} (pass --script PATH)")
    write(sweep, grid, overwrite)
    command = sbatch_command(sweep, script, wait)
    print(f"sweep: {len(sweep.runs)} runs, configs in {sweep.folder / 'configs'}, traces in {sweep.folder / 'traces'}")
    if not submit_now:
        print(shlex.join(command))
        return 0
    print(f"+ {shlex.join(command)}", flush=True)
    code = submit(command)
    if wait and any((sweep.folder / "traces").glob("*.h5")):
        from ..analysis.report import info

        print()
        info(sweep.folder / "traces")
    return code
