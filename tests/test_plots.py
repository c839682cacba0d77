"""Tests of ``mpifed report`` / ``mpifed export`` (mpifed/analysis/plots.py) and the trace reader's Python API.

Oracles: the raw trace columns read here with h5py (independently of ``mpifed.trace.load``), the csv
module parsing the export, the PNG/PDF formats (``matplotlib.image.imread``, the ``%PDF`` magic), and
SHA-256 hashes of every file in the folder before and after a command that must fail. Real runs, in
process and serial: three synthetic traces (FedNL Top-K, Newton, GD) and one short a9a run with test
accuracy evaluated every other round.
"""
import csv
import hashlib
import io
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpifed
from mpifed.analysis import plots
from mpifed.cli import main
from mpifed.driver import run
from mpifed.errors import MpifedError
from mpifed.trace import load

RUNS = {"fednl": {"algorithm": "fednl", "compressor": "topk:k=8d"},
        "newton": {"algorithm": "newton"},
        "gd": {"algorithm": "gd", "step_size": 0.5}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three real synthetic traces (8 rounds each) in one folder, read-only for the tests."""
    d = tmp_path_factory.mktemp("traces")
    for name, fields in RUNS.items():
        run({"lam": 0.01, "rounds": 8, "tol": 0.0, "quiet": True, "out": str(d / f"{name}.h5"), **fields})
    return d


@pytest.fixture(scope="module")
def a9a(tmp_path_factory):
    path = tmp_path_factory.mktemp("a9a") / "gd-a9a.h5"
    run({"dataset": "a9a", "algorithm": "gd", "rounds": 5, "eval_every": 2, "quiet": True, "out": str(path)})
    return path


def raw(path, column):
    with h5py.File(path, "r") as f:
        return f["metrics"][column][()]


def hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ the plotted data

@pytest.mark.parametrize("x, xcol", [("round", "round"), ("bits", "bits_up"), ("time", "time_s")])
@pytest.mark.parametrize("y", ["grad_norm", "f_gap", "dist_to_opt"])
def test_lines_are_the_trace_columns(folder, x, xcol, y):
    paths = sorted(folder.glob("*.h5"))
    fig = plots.figure([load(p) for p in paths], x, y)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len(ax.lines) == len(paths)
    for line, path in zip(ax.lines, paths):
        xs, ys = raw(path, xcol), raw(path, y)
        keep = np.isfinite(xs) & np.isfinite(ys) & (ys > 0)  # a log axis cannot show f_gap <= 0
        np.testing.assert_array_equal(line.get_xdata(), xs[keep])
        np.testing.assert_array_equal(line.get_ydata(), ys[keep])
        assert len(line.get_xdata()) >= 2


def test_nonpositive_f_gap_is_dropped(folder):
    """Newton reaches f* in a few rounds: its f_gap column holds values <= 0, which the plot leaves out."""
    gaps = raw(folder / "newton.h5", "f_gap")
    assert (gaps <= 0).any() and (gaps > 0).any()
    xs, ys = plots.series(load(folder / "newton.h5"), "round", "f_gap")
    np.testing.assert_array_equal(xs, raw(folder / "newton.h5", "round")[gaps > 0])
    assert (ys > 0).all() and len(ys) == (gaps > 0).sum() < len(gaps)


@pytest.mark.data("a9a", "a9a.t")
def test_test_accuracy_is_linear_and_skips_unevaluated_rounds(a9a):
    fig = plots.figure([load(a9a)], "round", ["test_acc", "grad_norm"])
    acc_ax, grad_ax = fig.axes
    assert acc_ax.get_yscale() == "linear" and grad_ax.get_yscale() == "log"
    acc = raw(a9a, "test_accuracy")
    assert np.isnan(acc[1]) and np.isfinite(acc[2])  # eval_every = 2
    np.testing.assert_array_equal(acc_ax.lines[0].get_ydata(), acc[np.isfinite(acc)])
    np.testing.assert_array_equal(acc_ax.lines[0].get_xdata(), raw(a9a, "round")[np.isfinite(acc)])
    assert "a9a" in fig._suptitle.get_text() and "n = 80" in fig._suptitle.get_text()


def test_labels_and_title(folder, tmp_path):
    traces = [load(folder / f"{n}.h5") for n in ("fednl", "newton", "gd")]
    fig = plots.figure(traces, "bits", "grad_norm", title=None, ylim=(1e-9, 10))
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["FedNL topk:k=8d", "Newton", "GD γ=0.5"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == labels
    assert fig._suptitle.get_text() == "synthetic: n = 32, d = 20, λ = 0.01"
    assert fig.axes[0].get_ylim() == pytest.approx((1e-9, 10))
    assert "bits per client" in fig.axes[0].get_xlabel()
    # lines must be told apart without colour
    assert len({(line.get_marker(), line.get_linestyle()) for line in fig.axes[0].lines}) == 3
    # two traces of one configuration get their file names
    shutil.copy(folder / "gd.h5", tmp_path / "gd-copy.h5")
    fig = plots.figure([traces[2], load(tmp_path / "gd-copy.h5")], "round", "grad_norm", title="mine")
    assert [line.get_label() for line in fig.axes[0].lines] == ["GD γ=0.5 [gd]", "GD γ=0.5 [gd-copy]"]
    assert fig._suptitle.get_text() == "mine"
    with pytest.raises(MpifedError, match="-x 'epoch' is unknown; valid: round, bits, time, exchanges"):
        plots.figure(traces, "epoch")
    with pytest.raises(MpifedError, match="-y 'loss' is unknown"):
        plots.figure(traces, "round", ["grad_norm", "loss"])


def test_cli_writes_png_and_pdf(folder, tmp_path, capsys):
    before = hashes(folder)
    png, pdf = tmp_path / "out" / "fig.png", tmp_path / "fig.pdf"
    assert main(["report", str(folder), "-x", "bits", "-y", "grad_norm", "-y", "f_gap", "-o", str(png)]) == 0
    assert main(["report", str(folder / "gd.h5"), str(folder / "newton.h5"), "-o", str(pdf),
                 "--title", "t", "--ylim", "1e-12", "1"]) == 0
    from matplotlib.image import imread

    h, w, channels = imread(png).shape
    assert channels in (3, 4) and w > h > 300 and w > 2 * h - 100  # two subplots side by side
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["fig.pdf", "fig.png"]  # no temp left
    assert hashes(folder) == before
    assert capsys.readouterr().out.count("wrote ") == 2


# ------------------------------------------------------------------ export

def test_export_csv_equals_h5py(folder, tmp_path, capsys):
    path = folder / "fednl.h5"
    assert main(["export", str(path), "--csv"]) == 0
    text = capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    with h5py.File(path, "r") as f:
        columns = {name: ds[()] for name, ds in f["metrics"].items()}
    assert header[0] == "round" and sorted(header) == sorted(columns) and len(body) == 9
    for j, name in enumerate(header):
        np.testing.assert_array_equal(np.array([float(r[j]) for r in body]), columns[name])
    out = tmp_path / "fednl.csv"
    assert main(["export", str(path), "-o", str(out)]) == 0
    assert out.read_text() == text
    # the Python API: the same text, from the top-level package
    t = mpifed.load_trace(path)
    assert t.to_csv() == text and t.columns[0] == "round"
    t.to_csv(tmp_path / "api.csv")
    assert (tmp_path / "api.csv").read_text() == text


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing touched

@pytest.fixture
def bad(folder, tmp_path):
    """Damaged copies of a real trace, a non-trace HDF5 file and a text file, plus an existing figure."""
    good = tmp_path / "good.h5"
    shutil.copy(folder / "newton.h5", good)
    newer = tmp_path / "newer.h5"
    shutil.copy(good, newer)
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = 99
    truncated = tmp_path / "truncated.h5"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.arange(3)
    (tmp_path / "notes.h5").write_text("not HDF5\n")
    (tmp_path / "keep.png").write_bytes(b"an older figure")
    return tmp_path


CASES = {
    "newer schema": (["report", "newer.h5", "-o", "keep.png"], "schema 99"),
    "truncated": (["report", "good.h5", "truncated.h5", "-o", "keep.png"], "truncated"),
    "not a trace": (["report", "other.h5", "-o", "keep.png"], "not an mpifed trace"),
    "not HDF5": (["export", "notes.h5", "-o", "keep.png"], "corrupt or truncated"),
    "export truncated": (["export", "truncated.h5"], "truncated"),
    "unknown x": (["report", "good.h5", "-x", "epoch", "-o", "new.png"], "invalid choice"),
    "unknown y": (["report", "good.h5", "-y", "accuracy", "-o", "new.png"], "invalid choice"),
    "unknown extension": (["report", "good.h5", "-o", "new.jpgx"], "unknown extension"),
    "output is an input": (["report", ".", "-o", "good.h5"], "one of the input traces"),
    "export onto its input": (["export", "good.h5", "-o", "good.h5"], "one of the input traces"),
    "missing trace": (["report", "absent.h5", "-o", "new.png"], "not found"),
    "empty folder": (["report", "empty", "-o", "new.png"], "no .h5 traces"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(bad, case, capsys, monkeypatch):
    argv, expected = CASES[case]
    (bad / "empty").mkdir()
    monkeypatch.chdir(bad)
    before = hashes(bad)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpifed: error: ") and err.count("\n") == 1 and expected in err, err
    assert hashes(bad) == before  # same files, same bytes: nothing written, nothing left behind


def test_load_truncated_trace(bad):
    with pytest.raises(MpifedError, match="corrupt or truncated"):
        load(bad / "truncated.h5")
    assert load(bad / "good.h5").rounds == 9


def test_failed_save_keeps_the_old_figure(bad, monkeypatch):
    """A figure that fails half-way through saving leaves the previous file and no temporary file."""
    from matplotlib.figure import Figure

    def broken(self, f, **kwargs):
        f.write(b"partial")
        raise MpifedError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    before = hashes(bad)
    with pytest.raises(MpifedError, match="disk full"):
        plots.report([bad / "good.h5"], out=bad / "keep.png")
    assert hashes(bad) == before


def test_missing_matplotlib(bad, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    before = hashes(bad)
    assert main(["report", str(bad / "good.h5"), "-o", str(bad / "new.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mpifed[plot]'" in err
    assert hashes(bad) == before
