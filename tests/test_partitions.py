"""Client partitions (mpifed.data.partition, mpifed.federation) against independent oracles: statistics of the
Dirichlet split in its two limits and on average, label counts by plain Python, the rows of every simulated
rank block, and a 2+-rank MPI run against the serial one."""
from collections import Counter

import numpy as np
import pytest

from mpifed.comm import MPIComm, SerialComm, client_range
from mpifed.config import build
from mpifed.data.partition import make_partition, parse_spec
from mpifed.driver import run
from mpifed.errors import ConfigError, DataError, MpifedError
from mpifed.federation import build_federation
from mpifed.plan import resolve


def labels(counts, seed=0):
    """A shuffled label vector with counts[c] rows of label c."""
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y)


def histogram(part, y):
    """Oracle: per-client label counts by plain Python."""
    L = int(y.max()) + 1
    return np.array([[Counter(y[part.rows[part.offsets[i]:part.offsets[i + 1]]].tolist())[c] for c in range(L)]
                     for i in range(part.n_clients)])


def check_cover(part, n_rows, used):
    """Every client owns distinct rows of the file, and the clients together own ``used`` rows."""
    assert part.rows.size == used == part.sizes.sum()
    assert np.unique(part.rows).size == used and part.rows.min() >= 0 and part.rows.max() < n_rows


def test_dirichlet_with_huge_alpha_gives_every_client_the_global_label_mix():
    y = labels([6000, 3000, 1000])
    part = make_partition("dirichlet:alpha=1e5", y, 10, seed=3)
    check_cover(part, y.size, y.size)
    share = histogram(part, y) / part.sizes[:, None]
    np.testing.assert_allclose(share, np.tile([0.6, 0.3, 0.1], (10, 1)), atol=0.02)
    np.testing.assert_allclose(part.sizes, 1000, rtol=0.05)
    assert part.info["redraws"] == 0 and part.info["moved_rows"] == 0


def test_dirichlet_with_tiny_alpha_puts_most_clients_on_one_label():
    y = labels([5000] * 5)
    part = make_partition("dirichlet:alpha=0.01", y, 20, seed=1)
    check_cover(part, y.size, y.size)
    h = histogram(part, y)
    dominant = h.max(axis=1) / h.sum(axis=1)
    assert np.mean(dominant >= 0.95) >= 0.8
    assert part.sizes.min() >= 2 and part.sizes.max() > 10 * np.median(part.sizes)  # very unequal clients


def test_dirichlet_client_shares_average_to_one_over_n():
    """E[q_ci] = 1/n for Dir(alpha 1_n): over many seeds each client's share of each label averages 1/n."""
    y, n = labels([400, 200]), 5
    shares = np.mean([histogram(make_partition("dirichlet:alpha=0.5", y, n, seed=s, min_client_size=1), y)
                      / np.array([400, 200]) for s in range(300)], axis=0)
    np.testing.assert_allclose(shares, 1 / n, atol=0.04)  # sd of one share ~ 0.27 / sqrt(300) = 0.016


def test_dirichlet_minimum_size_guard_redraws_then_tops_up_and_says_so():
    y = labels([24720, 7841])  # a9a's label counts
    part = make_partition("dirichlet:alpha=0.5", y, 100, seed=0)
    assert part.sizes.min() >= 2 and 0 < part.info["redraws"] < 100 and part.info["moved_rows"] == 0
    hard = make_partition("dirichlet:alpha=0.1", y, 100, seed=0, min_client_size=5)
    check_cover(hard, y.size, y.size)
    assert hard.sizes.min() == 5 and hard.info["redraws"] == 100 and hard.info["moved_rows"] > 0
    assert np.sum(hard.sizes == 5) <= hard.info["moved_rows"]


def test_samples_per_client_uses_a_random_subset_of_n_times_m_rows():
    y = labels([700, 300])
    for spec in ("iid", "dirichlet:alpha=1", "pathological:k=1"):
        part = make_partition(spec, y, 8, samples_per_client=50, seed=2)
        check_cover(part, y.size, 400)
    np.testing.assert_array_equal(make_partition("iid", y, 8, samples_per_client=50).sizes, 50)


def test_same_seed_same_partition_other_seed_other_partition():
    y = labels([900, 450, 150])
    for spec in ("iid", "dirichlet:alpha=0.3", "pathological:k=2"):
        a, b = make_partition(spec, y, 12, seed=7), make_partition(spec, y, 12, seed=7)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        assert not np.array_equal(a.rows, make_partition(spec, y, 12, seed=8).rows)


def test_pathological_gives_every_client_exactly_k_labels_split_evenly():
    y = labels([1000, 800, 600, 400, 200])
    for k in (1, 2, 5):
        part = make_partition(f"pathological:k={k}", y, 12, seed=4)
        h = histogram(part, y)
        np.testing.assert_array_equal((h > 0).sum(axis=1), k)
        check_cover(part, y.size, y.size)  # n >= L: every label is held, every row used
        for c in range(5):  # a label's rows are split evenly over the clients that hold it
            held = h[h[:, c] > 0, c]
            assert held.max() - held.min() <= 1
        assert np.all(h[np.arange(12), np.arange(12) % 5] > 0)  # client i holds label i mod L


def test_iid_sizes_are_nearly_equal_and_use_every_row():
    y = labels([603, 400])
    part = make_partition("iid", y, 10, seed=0)
    check_cover(part, y.size, y.size)
    assert sorted(part.sizes.tolist()) == [100] * 7 + [101] * 3


@pytest.mark.parametrize("spec, clients, kind, words", [
    ("dirichlet:alpha=0", 4, ConfigError, "alpha > 0"),
    ("dirichlet:alpha=-1", 4, ConfigError, "alpha = -1"),
    ("dirichlet", 4, ConfigError, "needs alpha"),
    ("dirichlet:beta=1", 4, ConfigError, "'beta=1'"),
    ("pathological:k=0", 4, ConfigError, "k >= 1"),
    ("pathological:k=3", 4, ConfigError, "1 <= k <= 2"),
    ("shards", 4, ConfigError, "valid: paper, iid"),
    ("iid", 101, DataError, "1 <= clients <= 100"),
    ("dirichlet:alpha=1", 51, DataError, "1 <= clients <= 50"),
])
def test_bad_partitions_get_one_line_errors(spec, clients, kind, words):
    with pytest.raises(kind) as err:
        make_partition(spec, labels([60, 40]), clients)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_parse_spec():
    assert parse_spec("dirichlet:alpha=0.1") == ("dirichlet", {"alpha": 0.1})
    assert parse_spec("pathological:k=2") == ("pathological", {"k": 2})
    assert parse_spec("iid") == ("iid", {})


class FakeRank(SerialComm):
    """One rank of a simulated world: build_federation only asks for rank, size and is_root."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.data("phishing")
def test_every_rank_block_holds_its_clients_of_the_one_partition():
    """Built at 1, 2 and 3 ranks, the blocks concatenate to the same rows and labels in client order."""
    config = build({"dataset": "phishing", "clients": 11, "partition": "dirichlet:alpha=0.3", "seed": 5})
    serial = build_federation(resolve(config).data, SerialComm())
    whole = serial.block
    for size in (2, 3):
        feds = [build_federation(resolve(config).data, FakeRank(r, size)) for r in range(size)]
        assert [f.client_ids.tolist() for f in feds] == [list(range(*client_range(11, size, r))) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate([f.block.sizes for f in feds]), whole.sizes)
        np.testing.assert_array_equal(np.concatenate([f.label_counts for f in feds]), serial.label_counts)
        for f in feds:
            assert (f.m_min, f.m_max) == (whole.sizes.min(), whole.sizes.max())  # global, not the block's
    assert serial.m_min < serial.m_max


@pytest.mark.data("phishing")
def test_partition_statistics_are_in_the_trace(tmp_path):
    from mpifed import trace
    from mpifed.data import load

    r = run({"dataset": "phishing", "clients": 9, "partition": "pathological:k=1", "algorithm": "gd", "rounds": 2,
             "reference_iterations": 0, "quiet": True, "out": str(tmp_path / "t.h5"), "seed": 3})
    t = trace.load(r.path)
    part = make_partition("pathological:k=1", load("phishing").b, 9, seed=3)
    y = (load("phishing").b > 0).astype(int)  # columns: -1, +1
    np.testing.assert_array_equal(t.arrays["partition/labels"], histogram(part, y))
    np.testing.assert_array_equal(t.arrays["partition/sizes"], part.sizes)
    assert t.attrs["partition"]["spec"] == "pathological:k=1" and t.attrs["partition"]["redraws"] == 0
    assert t.attrs["partition"]["m_min"] == part.sizes.min()


def test_synthetic_refuses_label_partitions():
    with pytest.raises(MpifedError, match="valid: paper or iid"):
        run({"dataset": "synthetic", "partition": "dirichlet:alpha=1", "rounds": 1, "quiet": True, "out": None},
            comm=SerialComm())


@pytest.mark.mpi
@pytest.mark.data("phishing")
def test_partition_and_run_are_the_same_at_any_rank_count(tmp_path):
    config = {"dataset": "phishing", "clients": 9, "partition": "dirichlet:alpha=0.5", "algorithm": "gd",
              "rounds": 3, "reference_iterations": 2, "quiet": True, "out": str(tmp_path / "mpi.h5"), "seed": 1}
    distributed = run(config, comm=MPIComm())
    if distributed.metrics:  # rank 0
        from mpifed import trace

        serial = run({**config, "out": str(tmp_path / "serial.h5")}, comm=SerialComm())
        a, b = trace.load(tmp_path / "mpi.h5"), trace.load(tmp_path / "serial.h5")
        for key in ("partition/sizes", "partition/labels"):
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
        np.testing.assert_allclose(distributed.metrics["grad_norm"], serial.metrics["grad_norm"], rtol=1e-12)
        assert a.attrs["mpi_size"] > 1
