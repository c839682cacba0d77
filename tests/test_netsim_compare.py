"""Methods against a baseline on simulated wall-clock (``mpifed compare --baseline``), the crossover sweep and the
advisor's predictions, checked against the traces' own columns and hand computations."""
import numpy as np
import pytest

from mpifed import network
from mpifed.analysis import baseline as base
from mpifed.analysis.crossover import crossings, sweep
from mpifed.cli import main
from mpifed.ops import advise
from mpifed.trace import load

PLAN = """out = "{out}"
target = 1e-8
baseline = "gd"
networks = ["4g", "3g"]
[common]
clients = 6
samples_per_client = 25
rounds = 400
tol = 1e-9
quiet = true
reference_iterations = 0
[runs.gd]
algorithm = "gd"
[runs.newton]
algorithm = "newton"
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    path = folder / "plan.toml"
    path.write_text(PLAN.format(out=folder / "runs"))
    assert main(["compare", str(path)]) == 0
    return path, [load(folder / "runs" / f"{n}.h5") for n in ("gd", "newton")]


def first(values, target):
    return int(np.flatnonzero(np.asarray(values) <= target)[0])


def test_ratios_are_the_traces_costs_at_the_target(plan):
    _, (gd, newton) = plan
    rows = {r["name"]: r for r in base.table([gd, newton], "gd", 1e-8)}
    i, j = first(gd.metrics["grad_norm"], 1e-8), first(newton.metrics["grad_norm"], 1e-8)
    bits = lambda t, k: t.metrics["bits_up"][k] + t.metrics["bits_down"][k]  # noqa: E731
    r = rows["newton"]
    assert r["rounds"] == j
    assert r["comm_reduction"] == pytest.approx(bits(gd, i) / bits(newton, j))
    assert r["speedup"] == pytest.approx(gd.metrics["sim_time_s"][i] / newton.metrics["sim_time_s"][j])
    assert r["compute_increase"] == pytest.approx(newton.metrics["sim_compute_s"][j] / gd.metrics["sim_compute_s"][i])
    assert rows["gd"]["speedup"] == 1.0


def test_another_profile_is_a_replay_and_a_slower_link_favours_fewer_rounds(plan):
    _, (gd, newton) = plan
    fast, slow = network.load("datacenter"), network.load("3g")
    for p in (fast, slow):
        again = network.replay(newton.metrics, newton.arrays["netsim/flops"], newton.arrays["netsim/server_flops"], 0,
                               6, p)
        j = first(newton.metrics["grad_norm"], 1e-8)
        assert base.cost(newton, 1e-8, profile=p)["time_s"] == again[j, 0]
    assert base.table([gd, newton], "gd", 1e-8, profiles=[slow])[1]["speedup"] > 1


def test_crossings_interpolate_in_log_log():
    assert crossings(np.array([1.0, 100.0]), np.array([0.1, 10.0])) == [pytest.approx(10.0)]
    assert crossings(np.array([1.0, 10.0, 100.0]), np.array([2.0, 3.0, 4.0])) == []


def test_the_sweep_ratio_is_the_baselines_communication_over_computation(plan):
    _, (gd, newton) = plan
    out = sweep([gd, newton], "gd", 1e-8, network.load("4g"), [1.0, 10.0])
    i = first(gd.metrics["grad_norm"], 1e-8)
    sim = network.replay(gd.metrics, gd.arrays["netsim/flops"], gd.arrays["netsim/server_flops"], 0, 6, network.load("4g"))
    assert out["ratio"][0] == pytest.approx(sim[i, 1] / sim[i, 2])
    assert out["ratio"][1] < out["ratio"][0]  # a faster link, less communication per computation


def test_compare_table_and_crossover_commands(plan, tmp_path, capsys):
    path, _ = plan
    assert main(["compare", str(path), "--table", "--baseline", "gd", "--network", "lan"]) == 0
    out = capsys.readouterr().out
    assert "comm red." in out and "lan " in out
    assert main(["crossover", str(path), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
    assert main(["report", str(plan[1][0].path), "--x", "sim_time_s", "-o", str(tmp_path / "t.png")]) == 0
    with pytest.raises(Exception, match="names no run"):
        base.find_baseline(plan[1], "adiana")


def test_the_advisor_extrapolates_the_probes_last_rate(tmp_path):
    values = {"clients": 6, "samples_per_client": 25}
    advice = advise.advise(values, 1e-10, ("gd", "newton"), 6, tmp_path)
    gd = load(tmp_path / "probe-gd.h5")
    g = gd.metrics["grad_norm"]
    rate = (g[6] / g[3]) ** (1 / 3)
    rows = {r["algorithm"]: r for r in advice["table"]}
    assert rows["gd"]["rounds"] == 6 + np.ceil(np.log(1e-10 / g[6]) / np.log(rate))
    per_round = (gd.metrics["sim_time_s"][6] - gd.metrics["sim_time_s"][3]) / 3
    assert rows["gd"]["time_s"] == pytest.approx(gd.metrics["sim_time_s"][6] + (rows["gd"]["rounds"] - 6) * per_round)
    assert advice["kappa"] == pytest.approx(1 / (1 - rate))
    assert advice["pick"] == min(rows, key=lambda n: rows[n]["time_s"])
    assert "pick:" in advise.render(advice)
