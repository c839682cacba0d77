"""`mpifed sweep` without SLURM: the grid's product, the written configs, and the errors that write nothing."""
import itertools
import json
import tomllib
from pathlib import Path

import pytest

from mpifed import cli, config

ROOT = Path(__file__).resolve().parents[1]
GRID = """
name = "{algorithm}-{compressor}-a{alpha}-s{seed}"
[base]
dataset = "synthetic"
algorithm = "fednl"
rounds = 3
lam = 1e-2
[grid]
compressor = ["topk:k=2d", "randk:k=2d"]
alpha = [0.5, 1.0]
seed = [0, 1, 2]
"""


def write_grid(tmp_path, text=GRID):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def sweep(argv, capsys):
    code = cli.main(["sweep"] + [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_configs_are_the_cartesian_product_in_order(tmp_path, capsys):
    grid = tomllib.loads(GRID)
    expected = [dict(zip(grid["grid"], combo)) for combo in itertools.product(*grid["grid"].values())]
    folder = tmp_path / "sw"
    code, out, err = sweep([write_grid(tmp_path), "--out", folder], capsys)
    assert code == 0, err
    configs = sorted((folder / "configs").glob("*.toml"))
    assert [p.name for p in configs] == [f"{i:04d}.toml" for i in range(len(expected))] and len(expected) == 12
    index = json.loads((folder / "sweep.json").read_text())
    names = set()
    for i, (path, point, entry) in enumerate(zip(configs, expected, index["runs"])):
        name = f"fednl-{point['compressor'].replace(':', '_')}-a{point['alpha']}-s{point['seed']}"
        trace = folder.resolve() / "traces" / f"{name}.h5"
        assert tomllib.loads(path.read_text()) == {**grid["base"], **point, "out": str(trace), "overwrite": False}
        assert config.load(path) == config.build({**grid["base"], **point, "out": str(trace)})
        assert entry == {"task": i, "name": name, "point": point, "config": str(path.resolve()), "trace": str(trace)}
        names.add(name)
    assert len(names) == len(expected)
    assert not any((folder / "traces").iterdir())  # nothing run yet
    assert out.splitlines()[-1] == (f"sbatch --array=0-11 --output={folder.resolve()}/logs/slurm-%A_%a.out "
                                    f"{ROOT / 'jobs' / 'slurm-sweep.sbatch'} {folder.resolve()}")


def test_default_names_and_an_existing_sweep(tmp_path, capsys):
    path = write_grid(tmp_path, "[base]\nrounds = 2\n[grid]\nseed = [5, 6]\n")
    folder = tmp_path / "sw"
    assert sweep([path, "--out", folder], capsys)[0] == 0
    assert [r["name"] for r in json.loads((folder / "sweep.json").read_text())["runs"]] == ["0000", "0001"]
    code, _, err = sweep([path, "--out", folder], capsys)
    assert code == 2 and "already holds a sweep; pass --overwrite" in err
    assert sweep([path, "--out", folder, "--overwrite"], capsys)[0] == 0
    assert tomllib.loads((folder / "configs" / "0001.toml").read_text())["overwrite"] is True


def test_replacing_a_sweep_removes_the_traces_its_new_grid_drops(tmp_path, capsys):
    """--overwrite with a smaller grid: the dropped point's trace and checkpoint go (the folder's
    tables read every trace in it), the kept point's trace stays, and nothing else is touched."""
    folder = tmp_path / "sw"
    path = write_grid(tmp_path, "[base]\nrounds = 2\n[grid]\nseed = [5, 6]\n")
    assert sweep([path, "--out", folder], capsys)[0] == 0
    traces = [Path(r["trace"]) for r in json.loads((folder / "sweep.json").read_text())["runs"]]
    for t in traces:
        t.write_bytes(b"trace")
    Path(f"{traces[1]}.ckpt").write_bytes(b"checkpoint")
    other = folder / "traces" / "mine.h5"
    other.write_bytes(b"not the sweep's")
    path = write_grid(tmp_path, "[base]\nrounds = 2\n[grid]\nseed = [5]\n")
    code, out, _ = sweep([path, "--out", folder, "--overwrite"], capsys)
    assert code == 0 and "removed 1 trace(s)" in out
    assert traces[0].read_bytes() == b"trace" and other.exists()
    assert not traces[1].exists() and not Path(f"{traces[1]}.ckpt").exists()


@pytest.mark.parametrize("text, message", [
    ("[base]\nrounds = 2\nstepsize = 1\n[grid]\nseed = [0, 1]\n",
     "unknown configuration key(s) stepsize; valid: dataset, problem,"),
    ("[base]\nrounds = 2\n[grid]\nseed = [0, 1]\nlearning_rate = [1, 2]\n",
     "unknown configuration key(s) learning_rate; valid: dataset,"),
    ("[base]\nalgorithm = \"fednl\"\n[grid]\nalpha = [0.5, -1.0]\n",
     "grid point 1 (alpha=-1.0): --alpha = -1.0 is out of range; valid: alpha > 0"),
    ("rounds = 3\n[grid]\nseed = [0]\n", "unknown key(s) rounds; valid: name, base, grid"),
    ("name = \"run\"\n[grid]\nseed = [0, 1]\n", "name pattern 'run' gives 'run' to runs 0 and 1"),
    ("[base]\nseed = 1\n[grid]\nseed = [0, 1]\n", "seed in both [base] and [grid]"),
    ("[base]\nout = \"x.h5\"\n[grid]\nseed = [0, 1]\n", "out is set by the sweep"),
    ("[grid]\nseed = 3\n", "grid key seed = 3; valid: a non-empty list"),
])
def test_a_bad_grid_is_one_line_and_writes_nothing(tmp_path, capsys, text, message):
    folder = tmp_path / "sw"
    code, out, err = sweep([write_grid(tmp_path, text), "--out", folder], capsys)
    assert code == 2 and out == ""
    assert err.startswith("mpifed: error: ") and err.count("\n") == 1 and message in err, err
    assert not folder.exists()


def test_submit_without_sbatch_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    folder = tmp_path / "sw"
    code, out, err = sweep([write_grid(tmp_path), "--out", folder, "--submit", "--wait"], capsys)
    assert code == 2 and out == ""
    assert err == ("mpifed: error: sbatch not found on PATH: --submit needs a SLURM cluster (drop --submit to write "
                   "the configs and print the sbatch command)\n")
    assert not folder.exists()


def test_the_shipped_grid_expands_to_at_least_four_valid_runs(tmp_path, capsys):
    code, out, err = sweep([ROOT / "jobs" / "sweep-a9a.toml", "--out", tmp_path / "a9a"], capsys)
    assert code == 0, err
    assert out.startswith("sweep: 4 runs") and "--array=0-3" in out
