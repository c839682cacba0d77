"""Tests of the ``mpifed`` command, launched as a subprocess like a user would (exit codes, stderr, files).

Oracles: the valid ranges stated in the CLI's documentation and the FedNL setting (d = 20 gives
d(d+1)/2 = 210 packed entries), the row and feature counts in datasets/README.md, hand-written
LIBSVM and TOML files, and traces read back with h5py directly.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpifed.data import cache_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
needs_mpiexec = pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}")
TIMEOUT = 120


def env():
    e = dict(os.environ)
    # the data the tests' `data` marker found: MPIFED_DATA (../shared/datasets when present), or the cache
    e["MPIFED_DATA"] = os.pathsep.join(p for p in (os.environ.get("MPIFED_DATA"), str(cache_dir())) if p)
    e["MPIFED_CACHE"] = "/nonexistent-mpifed-cache"
    e.pop("PMI_RANK", None)
    return e


def mpifed(cwd, *args, timeout=TIMEOUT):
    return subprocess.run([sys.executable, "-m", "mpifed.cli", *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc):
    """The single ``mpifed: error:`` line of stderr (and nothing else on stderr)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mpifed: error: "), proc.stderr
    return lines[0]


def read_trace(path):
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        metrics = {name: ds[()] for name, ds in f["metrics"].items()}
    return attrs, metrics


# ------------------------------------------------------------------ bad input: exit 2, one line

# (arguments, strings the message must contain: the bad value and the valid range or choices)
BAD_FLAGS = {
    "unknown algorithm": (["--algorithm", "sgd"], ["sgd", "newton", "fednl", "gd"]),
    "unknown compressor": (["--compressor", "zip:k=3"], ["zip", "identity", "topk", "randk", "rankr"]),
    "compressor K beyond T": (["--compressor", "topk:k=1000"], ["1000", "210"]),
    "negative lam": (["--lam", "-1"], ["--lam", "-1", ">= 0"]),
    "option 3": (["--option", "3"], ["--option", "3", "1", "2"]),
    "alpha 0": (["--alpha", "0"], ["--alpha", "0", "> 0"]),
    "float bits 8": (["--float-bits", "8"], ["--float-bits", "8", "16", "32", "64"]),
    "parameter that does not apply": (["--algorithm", "newton", "--compressor", "topk:k=8d"],
                                      ["--compressor", "newton"]),
    "unknown flag": (["--bogus", "1"], ["--bogus"]),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag(tmp_path, case):
    args, needles = BAD_FLAGS[case]
    proc = mpifed(tmp_path, "run", "--rounds", 1, "--quiet", *args)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "runs").exists()  # nothing written for a refused configuration


def test_non_integer_rounds(tmp_path):
    proc = mpifed(tmp_path, "run", "--rounds", "abc")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--rounds" in line and "abc" in line


def test_non_integer_rounds_names_the_valid_range(tmp_path):
    proc = mpifed(tmp_path, "run", "--rounds", "2.5")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "2.5" in line and "integer" in line


@pytest.mark.data("phishing")
def test_more_clients_than_rows(tmp_path):
    proc = mpifed(tmp_path, "run", "--dataset", "phishing", "--clients", 1000, "--samples-per-client", 100)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "1000" in line and "11055" in line  # 11,055 rows: datasets/README.md's count for phishing


def test_missing_dataset_file(tmp_path):
    missing = tmp_path / "no-such-file.svm"
    proc = mpifed(tmp_path, "run", "--dataset", missing, "--clients", 2, "--samples-per-client", 2)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert str(missing) in line and "a9a" in line  # names the path and the registered choices


def test_malformed_libsvm_file(tmp_path):
    bad = tmp_path / "bad.svm"
    bad.write_text("+1 1:0.5 3:1\n-1 2:0.25\n+1 2:1 4:x\n-1 1:1\n")
    proc = mpifed(tmp_path, "run", "--dataset", bad, "--clients", 2, "--samples-per-client", 2)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"{bad}:3" in line and "4:x" in line


def test_feature_index_beyond_features(tmp_path):
    wide = tmp_path / "wide.svm"
    wide.write_text("+1 1:0.5 3:1\n-1 2:0.25 9:1\n+1 2:1\n-1 1:1\n")
    proc = mpifed(tmp_path, "run", "--dataset", wide, "--features", 5, "--clients", 2, "--samples-per-client", 2)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"{wide}:2" in line and "9" in line and "5" in line


def test_unknown_toml_key(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('rounds = 2\nlearning_rate = 0.5\n')
    proc = mpifed(tmp_path, "run", cfg)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "learning_rate" in line and "samples_per_client" in line  # the bad key and the valid ones


def test_existing_out_is_left_alone(tmp_path):
    out = tmp_path / "taken.h5"
    content = bytes(range(256)) * 4
    out.write_bytes(content)
    proc = mpifed(tmp_path, "run", "--rounds", 1, "--reference-iterations", 1, "--out", out)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert str(out) in line and "--overwrite" in line
    assert out.read_bytes() == content


@needs_mpiexec
@pytest.mark.parametrize("case", ["bad value", "bad data file"])
def test_bad_input_under_mpiexec(tmp_path, case):
    if case == "bad value":
        args, needles = ["--compressor", "topk:k=1000"], ["1000", "210"]
    else:
        bad = tmp_path / "bad.svm"
        bad.write_text("+1 1:0.5\n-1 1:0.25\nyes 2:1\n-1 1:1\n")
        args, needles = ["--dataset", bad, "--clients", 2, "--samples-per-client", 2], [f"{bad}:3", "yes"]
    start = time.monotonic()
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpifed.cli", "run", "--rounds", "2",
                           *map(str, args)], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 30  # no rank left waiting
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mpifed: error:")]
    assert len(errors) == 1, proc.stderr  # printed by one rank only
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0]


# ------------------------------------------------------------------ TOML file and flags

def test_toml_fills_config_and_flag_overrides(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('algorithm = "newton"\nlam = 0.05\nrounds = 5\nsamples-per-client = 40\n'
                   'clients = 8\nreference_iterations = 3\nout = "from-toml.h5"\nquiet = true\n')
    proc = mpifed(tmp_path, "run", cfg, "--rounds", 2, "--seed", 7)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # quiet from the file
    attrs, metrics = read_trace(tmp_path / "from-toml.h5")
    config = json.loads(attrs["config"])
    assert config["algorithm"] == "newton" and config["lam"] == 0.05
    assert config["samples_per_client"] == 40 and config["clients"] == 8 and config["reference_iterations"] == 3
    assert config["rounds"] == 2 and config["seed"] == 7  # flags win over the file
    assert config["dataset"] == "synthetic"  # default where neither says
    assert len(metrics["round"]) == 3
    assert attrs["n_clients"] == 8


# ------------------------------------------------------------------ run with defaults

def test_run_without_arguments(tmp_path):
    """The embedded default: FedNL on 32 synthetic clients x 100 samples, d = 20, until ||grad P|| <= 1e-14
    (at most 100 rounds), and the summary says it stopped at the default tolerance."""
    proc = mpifed(tmp_path, "run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    first = tmp_path / "runs" / "fednl-synthetic-1.h5"
    assert first.is_file()
    assert "fednl on synthetic" in proc.stdout and str(Path("runs", "fednl-synthetic-1.h5")) in proc.stdout
    attrs, metrics = read_trace(first)
    g = metrics["grad_norm"]
    last = len(g) - 1
    assert 1 < last < 100 and g[-1] <= 1e-14 < g[-2]  # stopped at the first round at the tolerance
    assert f"converged after {last} rounds (||grad P|| = {g[-1]:.3e} <= --tol 1e-14, the default" in proc.stdout
    assert attrs["n_clients"] == 32 and attrs["dimension"] == 20
    assert metrics["bits_up"][0] == 210 * 32  # the initial Hessians' d(d+1)/2 entries
    # the result table: a header, rows from round 0 to the last, values as in the trace
    header = next(line for line in proc.stdout.splitlines() if "grad_norm" in line).split()
    assert header[0] == "round" and "bits_up" in header
    rows = [line.split() for line in proc.stdout.splitlines() if re.fullmatch(r"\s*\d+(\s+\S+)+", line)]
    shown = [int(r[0]) for r in rows]
    assert len(rows) >= 2 and shown[0] == 0 and shown[-1] == last and shown == sorted(set(shown))
    for name in ("grad_norm", "bits_up"):
        col = header.index(name)
        np.testing.assert_allclose([float(r[col]) for r in rows], metrics[name][shown], rtol=1e-4, err_msg=name)

    proc = mpifed(tmp_path, "run", "--rounds", 1, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fednl-synthetic-1.h5", "fednl-synthetic-2.h5"]
    _, metrics = read_trace(tmp_path / "runs" / "fednl-synthetic-2.h5")
    assert len(metrics["round"]) == 2


# ------------------------------------------------------------------ info

@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    for name, args in (("a.h5", ["--rounds", 40, "--tol", 0, "--lam", 0.02, "--compressor", "rankr:r=1"]),
                       ("b.h5", ["--rounds", 2, "--algorithm", "gd"])):
        proc = mpifed(folder, "run", "--quiet", "--reference-iterations", 5, "--out", folder / name, *args)
        assert proc.returncode == 0, proc.stderr
    return folder


def test_info_trace(traces):
    path = traces / "a.h5"
    proc = mpifed(traces, "info", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "lam=0.02" in out and "rounds=40" in out and "compressor=rankr:r=1" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["round"])
    columns = lines[head].split()
    table = [line.split() for line in lines[head + 1:] if line.strip()]
    _, metrics = read_trace(path)
    assert len(table) >= 2
    shown = [int(row[0]) for row in table]
    assert shown[0] == 0 and shown[-1] == 40 and shown == sorted(set(shown))
    gn = columns.index("grad_norm")
    for row in table:
        assert len(row) == len(columns)
        expected = metrics["grad_norm"][int(row[0])]
        assert float(row[gn]) == float(f"{expected:.4e}"), (row, expected)


def test_info_folder(traces):
    proc = mpifed(traces, "info", traces)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 + 2  # the target line, the column header and one line per trace
    body = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(body) == {"a", "b"}
    assert "fednl" in body["a"] and "gd" in body["b"]
    for name in ("a", "b"):
        _, metrics = read_trace(traces / f"{name}.h5")
        numbers = [float(tok) for tok in body[name] if re.fullmatch(r"[-+]?[0-9][-+0-9.e]*", tok)]
        assert any(abs(v - metrics["grad_norm"][-1]) <= 1e-3 * abs(metrics["grad_norm"][-1]) for v in numbers)


def test_info_on_networks_shows_accuracy_not_an_optimum(tmp_path):
    """Network traces (--model) have no f*, x* or gradient target: `info` shows the loss and test
    columns, and a folder of them its best test accuracy, the round and the bits spent by then."""
    base = ["--quiet", "--dataset", "mnist-synthetic", "--model", "mlp:hidden=8", "--clients", 3, "--partition", "iid",
            "--batch-size", 8, "--local-steps", 2, "--rounds", 3, "--reference-iterations", 0, "--step-size", 0.05]
    for name, algorithm in (("avg", "fedavg"), ("rco", "fedrco")):
        proc = mpifed(tmp_path, "run", *base, "--algorithm", algorithm, "--out", tmp_path / f"{name}.h5")
        assert proc.returncode == 0, proc.stderr
    proc = mpifed(tmp_path, "info", tmp_path / "rco.h5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "f* =" not in proc.stdout and "model mlp:hidden=8 with" in proc.stdout
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["round"])
    columns = lines[head].split()
    assert {"loss", "test_accuracy", "rollbacks"} <= set(columns) and not {"f_gap", "dist_to_opt"} & set(columns)
    proc = mpifed(tmp_path, "info", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("best test accuracy") and len(lines) == 2 + 2
    for line in lines[2:]:
        row = line.split()
        _, metrics = read_trace(tmp_path / f"{row[0]}.h5")
        acc = metrics["test_accuracy"]
        best = int(np.nanargmax(acc))
        assert float(row[4]) == float(f"{acc[best]:.4f}") and int(row[5]) == best
        assert float(row[6]) == float(f"{metrics['bits_up'][best]:.4e}")


def test_info_missing_trace(tmp_path):
    proc = mpifed(tmp_path, "info", tmp_path / "none.h5")
    assert proc.returncode == 2
    assert "none.h5" in one_error_line(proc)


# ------------------------------------------------------------------ datasets, help

def test_datasets_list(tmp_path):
    proc = mpifed(tmp_path, "datasets", "list")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert rows["a9a"][1:3] == ["123", "32561"]  # datasets/README.md's counts
    assert rows["w8a"][1:3] == ["300", "49749"]
    if (SHARED / "libsvm" / "a9a").is_file():
        assert rows["a9a"][3] == str(SHARED / "libsvm" / "a9a")


def test_help(tmp_path):
    top = mpifed(tmp_path, "--help")
    assert top.returncode == 0
    for command in ("run", "info", "datasets"):
        assert command in top.stdout
    sub = mpifed(tmp_path, "run", "--help")
    assert sub.returncode == 0
    assert "--samples-per-client" in sub.stdout
