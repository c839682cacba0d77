"""Comparison plans and the folder table: runs written where the plan says, costs read at the first
round that reaches the target (checked against the per-round metrics read back with h5py)."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpifed.ops.compare import load_plan, run_plan
from mpifed.errors import ConfigError
from mpifed.analysis.report import comparison

PLAN = """
out = "{out}"
target = 1e-8
[common]
dataset = "synthetic"
clients = 6
samples_per_client = 30
features = 5
rounds = 12
tol = 0.0
quiet = true
[runs.newton]
algorithm = "newton"
[runs.fednl-identity]
algorithm = "fednl"
compressor = "identity"
[runs.gd]
algorithm = "gd"
rounds = 3
"""


def write_plan(tmp_path, text=PLAN):
    path = tmp_path / "plan.toml"
    path.write_text(text.format(out=tmp_path / "out"))
    return path


def test_plan_runs_every_method_and_the_table_reads_the_first_round_at_target(tmp_path):
    plan = load_plan(write_plan(tmp_path))
    assert [name for name, _ in plan.runs] == ["newton", "fednl-identity", "gd"]
    assert plan.runs[2][1].rounds == 3 and plan.runs[0][1].rounds == 12  # run fields override [common]
    results = run_plan(plan)
    assert [r.status for r in results] == ["completed"] * 3
    rows = {r["name"]: r for r in comparison(tmp_path / "out", 1e-8)}
    assert set(rows) == {"newton", "fednl-identity", "gd"}
    for name in ("newton", "fednl-identity"):
        with h5py.File(tmp_path / "out" / f"{name}.h5", "r") as f:
            g, bits, secs = f["metrics/grad_norm"][()], f["metrics/bits_up"][()], f["metrics/time_s"][()]
        first = int(np.argmax(g <= 1e-8))
        assert g[first] <= 1e-8 and (first == 0 or g[first - 1] > 1e-8)
        assert rows[name]["rounds"] == first
        assert rows[name]["bits_up"] == bits[first] and rows[name]["seconds"] == secs[first]
    assert np.isnan(rows["gd"]["rounds"]) and rows["gd"]["recorded"] == 3  # GD does not get there in 3 rounds


def test_cli_compare_prints_the_table_and_refuses_to_overwrite(tmp_path):
    path = write_plan(tmp_path)
    cmd = [sys.executable, "-m", "mpifed.cli", "compare", str(path), "--only", "newton", "gd"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "to ||grad P|| <= 1e-08" in proc.stdout
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith(("newton ", "gd "))]
    assert [row[0] for row in table] == ["gd", "newton"] and table[0][3] == "-"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gd.h5", "newton.h5"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"mpifed: error: output {tmp_path / 'out' / 'newton.h5'} exists; "
                                                  "pass --overwrite to replace the plan's traces"]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("rounds = 3", "rounds = -3"), "run 'gd': --rounds = -3 is out of range"),
    (lambda t: t.replace("target = 1e-8", "target = 0"), "target = 0 is out of range; valid: a number > 0"),
    (lambda t: t.replace("[runs.gd]", "[runs.'g/d']"), "is not a plain file name"),
    (lambda t: t.split("[runs.newton]")[0], "no [runs.<name>] tables"),
    (lambda t: "bogus = 1\n" + t, "unknown key(s) bogus"),
])
def test_bad_plans_are_refused_before_any_run(tmp_path, edit, message):
    path = write_plan(tmp_path, edit(PLAN))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("|", r"\|")):
        load_plan(path)
    assert not (tmp_path / "out").exists()


def test_only_with_an_unknown_run_names_the_plan_runs(tmp_path):
    with pytest.raises(ConfigError, match="--only names unknown run"):
        load_plan(write_plan(tmp_path), only=["newton", "nope"])


def test_a_signal_stops_the_plan_and_resume_finishes_it_as_if_uninterrupted(tmp_path, monkeypatch, capsys):
    """SIGTERM in the second run: that run checkpoints, the third never starts; --resume keeps the first
    trace as it is, continues the second from its checkpoint, runs the third, and every trace equals the
    trace of the plan run without a signal."""
    from mpifed import checkpoint, trace
    from mpifed.checkpoint import EXIT_SUSPENDED
    from mpifed.cli import main
    from test_checkpoint import same_trace, signal_at_round

    whole = load_plan(write_plan(tmp_path))
    assert [r.status for r in run_plan(whole)] == ["completed"] * 3
    cut = tmp_path / "cut"
    cut.mkdir()
    first = run_plan(load_plan(write_plan(cut), only=["newton"]))
    mtime = (cut / "out" / "newton.h5").stat().st_mtime_ns
    signal_at_round(monkeypatch, 5)
    assert main(["compare", str(write_plan(cut)), "--resume"]) == EXIT_SUSPENDED
    assert "the plan stopped there; continue with: mpifed compare" in capsys.readouterr().err
    monkeypatch.undo()
    stopped = [trace.load(cut / "out" / "fednl-identity.h5")]
    assert [r.status for r in first] == ["completed"]
    assert stopped[0].attrs["status"] == "suspended"
    assert checkpoint.path_for(stopped[0].path).is_file() and not (cut / "out" / "gd.h5").exists()
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        load_plan(write_plan(cut))
    resumed = run_plan(load_plan(write_plan(cut), resume=True), resume=True)
    assert [r.status for r in resumed] == ["completed", "completed"]  # the newton trace was kept
    assert (cut / "out" / "newton.h5").stat().st_mtime_ns == mtime
    for name in ("newton", "fednl-identity", "gd"):
        same_trace(tmp_path / "out" / f"{name}.h5", cut / "out" / f"{name}.h5")


def test_resume_cannot_be_combined_with_overwrite(tmp_path):
    with pytest.raises(ConfigError, match="--resume keeps the plan's traces"):
        load_plan(write_plan(tmp_path), overwrite=True, resume=True)
