"""``mpifed bench``: the rows are the u-FedNL reference setups, and the numbers it reports are
consistent with each other and with an ordinary run of the same configuration."""
import json

import numpy as np
import pytest

from mpifed import cli

from mpifed.ops import bench
from mpifed.comm import SerialComm
from mpifed.driver import run

COLUMNS = {"row", "dataset", "config", "n_clients", "d", "status", "rounds_run", "rounds_to_tol", "final_grad_norm",
           "seconds_to_tol", "seconds_run", "wall_s", "s_per_round", "s_per_round_by_phase", "rounds_per_s",
           "client_rounds_per_s", "peak_rss_mb_per_rank", "peak_rss_mb", "peak_rss_method", "reference",
           "rss_at_start_mb_per_rank", "peak_above_start_mb", "s_per_round_early", "s_per_round_late",
           "late_over_early", "s_per_round_after_tol", "ratio_seconds_to_tol", "ratio_s_per_round",
           "ratio_peak_above_start"}
MACHINE = {"cpu", "cores", "mpi_size", "mpi", "python", "numpy", "scipy", "mpi4py", "mpifed", "load_average",
           "load_average_end"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert cli.main(["bench", "--only", "tiny", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_reference_rows_are_the_ufednl_setups_in_both_orders():
    assert bench.DEFAULT == ["w8a", "w8a-file", "a9a", "a9a-file", "phishing", "phishing-file"]
    figures = {"w8a": (301, 0.162, 246, 40.9, 693), "a9a": (124, 0.026, 94, 2.7, 179),
               "phishing": (69, 0.0054, 74, 0.5, 42)}
    for name, (d, s_round, rounds, seconds, rss) in figures.items():
        for row, shuffle in ((bench.ROWS[name], 123), (bench.ROWS[name + "-file"], None)):
            cfg = row.config()
            assert row.reference["s_per_round"] == s_round and row.reference["rounds_to_tol"] == rounds
            assert row.reference["seconds_to_tol"] == seconds and row.reference["peak_rss_mb"] == rss
            assert cfg["clients"] == 142 and cfg["samples_per_client"] == row.rows // 142
            assert (cfg["algorithm"], cfg["compressor"], cfg["option"], cfg["alpha"]) == ("fednl", "topk:k=8d", 2, None)
            # a fixed budget past convergence: the run never stops at the tolerance
            assert cfg["tol"] == 0.0 and cfg["rounds"] == 1000 and cfg["intercept"] and cfg["lam"] == 1e-3
            assert cfg["shuffle"] == shuffle and cfg["dataset"] == name
    # m = floor(rows / 142) from the registry's row counts; K = 8d < T for every d here
    from mpifed.data.registry import DATASETS

    names = list(figures)
    assert [bench.ROWS[n].config()["samples_per_client"] for n in names] == [
        DATASETS[n].rows // 142 for n in names] == [350, 229, 77]
    assert all(8 * d < d * (d + 1) // 2 for d, *_ in figures.values())


def test_json_has_every_column_and_consistent_numbers(tiny):
    assert MACHINE <= set(tiny["machine"]) and tiny["machine"]["mpi_size"] == 1
    (r,) = tiny["rows"]
    assert COLUMNS <= set(r)
    assert set(r["s_per_round_by_phase"]) == set(bench.PHASES)
    k, seconds, ph, R = r["rounds_to_tol"], r["seconds_to_tol"], r["s_per_round_by_phase"], r["rounds_run"]
    assert R == 30 and r["final_grad_norm"] <= 1e-14 and 0 < k < R  # the whole budget, past convergence
    # s/round is the mean round time over the budget's R rounds, i.e. the sum of the per-phase means
    assert r["s_per_round"] == pytest.approx(ph["client"] + ph["comm"] + ph["server"], rel=1e-9)
    assert 0 < seconds < R * r["s_per_round"]
    assert ph["client"] == pytest.approx(ph["hessian"] + ph["compress"] + ph["client_other"], rel=1e-9)
    assert all(ph[p] > 0 for p in ("client", "hessian", "compress", "trace"))
    assert r["late_over_early"] == pytest.approx(r["s_per_round_late"] / r["s_per_round_early"], rel=1e-12)
    assert r["s_per_round_after_tol"] > 0
    for when in ("early", "late"):  # per-phase medians over rounds 1-20 and over the second half
        assert set(r[f"s_per_round_by_phase_{when}"]) == set(bench.PHASES)
    assert r["rounds_per_s"] == pytest.approx(1 / r["s_per_round"], rel=1e-12)
    assert r["client_rounds_per_s"] == pytest.approx(8 * r["rounds_per_s"], rel=1e-12)
    assert r["wall_s"] > R * r["s_per_round"]
    ref = r["reference"]
    assert r["ratio_seconds_to_tol"] == pytest.approx(seconds / ref["seconds_to_tol"], rel=1e-12)
    assert r["ratio_s_per_round"] == pytest.approx(r["s_per_round"] / ref["s_per_round"], rel=1e-12)
    assert r["peak_rss_mb"] == pytest.approx(sum(r["peak_rss_mb_per_rank"]))
    assert r["peak_above_start_mb"] == pytest.approx(
        sum(p - f for p, f in zip(r["peak_rss_mb_per_rank"], r["rss_at_start_mb_per_rank"])))
    assert r["ratio_peak_above_start"] == pytest.approx(r["peak_above_start_mb"] / ref["peak_rss_mb"], rel=1e-12)
    assert 10 < r["peak_rss_mb"] < 4000  # a Python process with numpy, in MB (not kB or bytes)
    assert 0 <= r["peak_above_start_mb"] < r["peak_rss_mb"]


def test_rounds_match_an_ordinary_run_and_timers_are_removed(tiny, tmp_path):
    from mpifed import compressors, trace
    from mpifed.problems import logistic as problems

    (r,) = tiny["rows"]
    cfg = bench.ROWS["tiny"].config()
    assert r["config"] == cfg
    result = run({**cfg, "out": str(tmp_path / "plain.h5")}, SerialComm())
    g = result.metrics["grad_norm"]
    assert r["rounds_to_tol"] == int(np.flatnonzero(g <= 1e-14)[0]) and r["rounds_run"] == result.rounds
    assert r["final_grad_norm"] == g[-1]  # the bench run is the same deterministic run
    names = [f.__qualname__ for f in (problems.LogisticBlock.derivatives, compressors.TopK.sparse,
                                      trace.TraceWriter.write)]
    assert names == ["LogisticBlock.derivatives", "TopK.sparse", "TraceWriter.write"]  # not the timing wrappers


def test_unknown_row_is_one_line_naming_the_rows(capsys):
    assert cli.main(["bench", "--only", "w9a"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("mpifed: error: no benchmark row w9a; rows: w8a, w8a-file, a9a, a9a-file, phishing, "
                   "phishing-file, scale, weak, gpu-w8a, gpu-scale")
    assert cli.main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in bench.LISTED) and "tiny" not in listing
    assert all(f"{name} " in listing and "[only with --only]" in listing.split(f"{name} ", 1)[1].split("\n")[0]
               for name in ("scale", "weak", "gpu-w8a", "gpu-scale"))


@pytest.mark.mpi
def test_bench_under_mpi_sums_every_rank_and_matches_a_serial_run():
    import tempfile

    from mpifed.comm import world

    comm = world()
    assert comm.size > 1
    report = bench.bench(["tiny"], comm=comm)
    if comm.rank == 0:
        (r,) = report["rows"]
        assert report["machine"]["mpi_size"] == comm.size and len(r["peak_rss_mb_per_rank"]) == comm.size
        assert r["peak_rss_mb"] == pytest.approx(sum(r["peak_rss_mb_per_rank"]))
        with tempfile.TemporaryDirectory() as tmp:  # the same configuration on this rank alone
            serial = run({**bench.ROWS["tiny"].config(), "out": f"{tmp}/serial.h5"}, SerialComm())
        assert r["rounds_run"] == serial.rounds  # rank-independent results
        assert r["rounds_to_tol"] == int(np.flatnonzero(serial.metrics["grad_norm"] <= 1e-14)[0])
        assert r["final_grad_norm"] == serial.metrics["grad_norm"][-1]
    else:
        assert report is None


def test_scale_rows_are_the_scale_and_gpu_setups():
    """The scale and GPU rows: 10^5 clients at d = 100, weak scaling per rank, GPU rows on cupy."""
    scale, weak = bench.ROWS["scale"].config(), bench.ROWS["weak"].config(size=4)
    assert (scale["dataset"], scale["clients"], scale["features"]) == ("synthetic", 100_000, 100)
    assert (weak["clients"], weak["features"]) == (4 * 25_000, 100)
    assert bench.ROWS["weak"].config(size=2, per_rank=7)["clients"] == 14
    assert bench.ROWS["scale"].config(clients=500)["clients"] == 500
    for cfg in (scale, weak):
        assert cfg["compressor"] == "topk:k=8d" and cfg["tol"] == 0.0 and cfg["rounds"] == bench.FIXED_ROUNDS
    gpu_w8a, gpu_scale = bench.ROWS["gpu-w8a"].config(), bench.ROWS["gpu-scale"].config()
    assert gpu_w8a == {**bench.ROWS["w8a"].config(), "backend": "cupy"}
    assert (gpu_scale["clients"], gpu_scale["features"], gpu_scale["backend"]) == (10_000, 300, "cupy")
    assert not any(bench.ROWS[n].default for n in ("scale", "weak", "gpu-w8a", "gpu-scale"))


def test_scale_row_reports_state_and_data_from_the_arrays(tmp_path):
    """State per client = the packed learned Hessian, T float64 (FedNL's only client state); data = the
    block's arrays; the ratio columns are the peak over them; the weak row appends to the same JSON."""
    from mpifed import tri

    out = tmp_path / "scale.json"
    assert cli.main(["bench", "--only", "tiny-scale", "--json", str(out)]) == 0
    assert cli.main(["bench", "--only", "tiny-weak", "--per-rank", "12", "--json", str(out), "--append"]) == 0
    report = json.loads(out.read_text())
    scale, weak = report["rows"]
    assert len(report["runs"]) == 2
    d = 20
    assert scale["state_bytes_per_client"] == tri.size(d) * 8
    assert scale["state_mb_per_rank"] == [40 * tri.size(d) * 8 / 2**20]
    m, n = 6, 40  # the block's data: rows (dense, padded to m), weights, labels, R's CSR arrays, ...
    assert scale["data_mb_per_rank"][0] * 2**20 >= n * m * d * 8
    st, data, peak = scale["state_mb_per_rank"][0], scale["data_mb_per_rank"][0], scale["peak_rss_mb_per_rank"][0]
    assert scale["ratio_rss_to_state_data_per_rank"] == [pytest.approx(peak / (st + data))]
    assert scale["rounds_run"] == 3 and scale["status"] == "completed"
    assert scale["s_per_round"] == pytest.approx(np.mean(
        [sum(scale["s_per_round_by_phase"][p] for p in ("client", "comm", "server"))]), rel=1e-9)
    assert scale["client_rounds_per_s"] == pytest.approx(n / scale["s_per_round"])
    assert (weak["n_clients"], weak["clients_per_rank"], weak["mpi_size"]) == (12, [12], 1)


def test_scale_rows_run_other_second_order_methods(tmp_path, capsys):
    """--algorithm: the fixed rows run another method with its own defaults (FedNL's variants keep Top-K 8d);
    the state is that method's (NL1: its coefficients h_i, one float per row; FedPM: none); the set-up's and
    the method's peaks are reported apart, the row's peak being the larger."""
    nl1, star, pp = (bench.ROWS["scale"].config(algorithm=a) for a in ("nl1", "newton-star", "fednl-pp"))
    assert nl1["algorithm"] == "nl1" and "compressor" not in nl1 and "option" not in nl1
    assert star["reference_iterations"] == bench.SCALE_REFERENCE >= 1
    assert pp["compressor"] == "topk:k=8d" and "option" not in pp
    assert bench.ROWS["scale"].config(algorithm="fednl") == bench.ROWS["scale"].config()
    out = tmp_path / "scale.json"
    for algorithm in ("nl1", "fedpm"):
        assert cli.main(["bench", "--only", "tiny-scale", "--algorithm", algorithm, "--json", str(out)]) == 0
        (row,) = json.loads(out.read_text())["rows"]
        assert row["algorithm"] == algorithm and row["config"]["algorithm"] == algorithm and row["status"] == "completed"
        assert row["state_bytes_per_client"] == (6 * 8 if algorithm == "nl1" else 0)  # m = 6 rows of 8 bytes
        assert row["peak_rss_mb_per_rank"] == [max(row["setup_peak_rss_mb_per_rank"][0],
                                                   row["method_peak_rss_mb_per_rank"][0])]
        assert f"tiny-scale{algorithm:>12}" in capsys.readouterr().out
    assert cli.main(["bench", "--only", "tiny", "--algorithm", "nl1"]) == 2
    assert "--algorithm applies to the scale, weak and gpu-scale rows" in capsys.readouterr().err
    assert cli.main(["bench", "--only", "tiny-scale", "--algorithm", "resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mpifed: error: --algorithm 'resnet' is not a method on the logistic problem") and "\n" not in err


def test_gpu_rows_fail_with_one_line_without_a_gpu(capsys):
    from mpifed import backend

    if backend._cupy_backend() is not None:
        pytest.skip("a GPU is usable here")
    for row in ("gpu-w8a", "gpu-scale"):
        assert cli.main(["bench", "--only", row]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mpifed: error: row {row}: backend 'cupy' needs cupy and a visible CUDA GPU")
        assert "\n" not in err


def test_a_row_too_large_for_memory_is_refused_before_it_runs(capsys):
    assert cli.main(["bench", "--only", "scale", "--clients", "100000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mpifed: error: row scale: 100000000 clients at d = 100 need about") and "--clients N" in err


def test_bad_bench_flags_are_one_line(capsys):
    assert cli.main(["bench", "--only", "tiny", "--append"]) == 2
    assert "--append adds rows to the file named by --json" in capsys.readouterr().err
    assert cli.main(["bench", "--only", "scale", "--clients", "0"]) == 2
    assert "--clients must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.mpi
def test_weak_row_under_mpi_holds_per_rank_clients_on_every_rank():
    from mpifed.comm import world

    comm = world()
    report = bench.bench(["tiny-weak"], comm=comm)
    if comm.rank == 0:
        (r,) = report["rows"]
        assert r["n_clients"] == 10 * comm.size and r["clients_per_rank"] == [10] * comm.size
        assert len(r["peak_rss_mb_per_rank"]) == comm.size
        assert r["state_mb_per_rank"] == [10 * 210 * 8 / 2**20] * comm.size
