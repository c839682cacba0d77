"""Compressors, the counter-based client streams and the reproducible sum, against plain oracles."""
import math

import numpy as np
import pytest
import scipy.stats

from mpifed import compressors, tri
from mpifed.ddsum import dd_sum_rows
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.rng import ClientStreams

D = 12
T = tri.size(D)


def sym_batch(n=5, seed=0):
    M = np.random.default_rng(seed).standard_normal((n, D, D))
    return tri.pack(M + M.transpose(0, 2, 1))


def test_topk_keeps_the_k_largest_magnitudes_like_a_stable_sort():
    X = sym_batch()
    X[0, :10] = 0.5  # ties: the lower index wins
    c = compressors.make("topk:k=13", D).compress(X)
    order = np.argsort(-np.abs(X), axis=1, kind="stable")[:, :13]
    expected = np.zeros_like(X)
    np.put_along_axis(expected, order, np.take_along_axis(X, order, 1), 1)
    np.testing.assert_array_equal(c.values, expected)
    assert np.all(c.value_bits == 13 * 32)
    assert np.all(c.index_bits == 13 * math.ceil(math.log2(T)))


def test_topk_with_many_exact_zeros_still_sends_k():
    X = np.zeros((3, T))
    X[:, 5] = 1.0
    kept = compressors.make("topk:k=4", D).compress(X).values
    assert kept[:, 5].tolist() == [1.0] * 3 and np.count_nonzero(kept) == 3


def _score_rows(kind, rng, n, width):
    """Rows of the shapes that make selection hard: zeros, ties, few distinct values, sorted runs."""
    if kind == "random":
        return rng.random((n, width))
    if kind == "mostly zero":  # fewer nonzeros than K in some rows: zeros fill up by index
        return np.where(rng.random((n, width)) < 0.95, 0.0, rng.integers(1, 4, (n, width)) * 0.5)
    if kind == "few values":
        return rng.integers(0, 3, (n, width)).astype(float)
    if kind == "all equal":
        return np.full((n, width), 2.5)
    if kind == "all zero":
        return np.zeros((n, width))
    return np.tile(np.arange(width, 0, -1, dtype=float), (n, 1))  # descending


@pytest.mark.parametrize("kind", ["random", "mostly zero", "few values", "all equal", "all zero", "descending"])
def test_select_is_the_first_k_of_a_stable_descending_sort(kind):
    rng = np.random.default_rng(11)
    for width, K in [(7, 1), (50, 3), (50, 25), (300, 26), (300, 200), (2000, 90)]:
        scores = _score_rows(kind, rng, 6, width)
        expected = np.zeros(scores.shape, dtype=bool)
        np.put_along_axis(expected, np.argsort(-scores, axis=1, kind="stable")[:, :K], True, 1)
        np.testing.assert_array_equal(compressors.select(scores, K), expected, err_msg=f"{width=} {K=}")
        np.testing.assert_array_equal(compressors.top_indices(scores, K), np.nonzero(expected)[1].reshape(6, K))


@pytest.mark.parametrize("kind", ["random", "mostly zero", "few values", "all equal", "all zero", "descending", "sparse"])
def test_top_entries_are_the_first_k_of_a_stable_descending_sort_of_magnitudes(kind):
    """Signed rows, -0.0 among the zeros, rows below and above K nonzeros and with ties at the threshold: the
    positions of the K largest |x| (a stable argsort's first K, ascending), on the packed-nonzero path (rows at
    most half nonzero) and the dense one."""
    rng = np.random.default_rng(12)
    for width, K in [(7, 1), (50, 3), (50, 25), (300, 26), (300, 200), (2000, 90), (2000, 700)]:
        n = 9
        if kind == "sparse":  # between 0 and 2K nonzeros per row, few distinct magnitudes
            scores = np.zeros((n, width))
            for i in range(n):
                cols = rng.choice(width, size=min(width // 2, int(rng.integers(0, 2 * K + 1))), replace=False)
                scores[i, cols] = rng.integers(1, 4, cols.size) * 0.25
        else:
            scores = _score_rows(kind, rng, n, width)
        X = scores * rng.choice([-1.0, 1.0], scores.shape)  # zeros become -0.0 where the sign is negative
        order = np.sort(np.argsort(-np.abs(X), axis=1, kind="stable")[:, :K], axis=1)
        expected = (order + (np.arange(n) * width)[:, None]).ravel()
        np.testing.assert_array_equal(compressors.top_entries(X, K), expected, err_msg=f"{kind} {width=} {K=}")


def test_full_k_is_the_identity_bit_for_bit():
    X = sym_batch()
    streams = ClientStreams(0, np.arange(5), 1)
    for spec in ("identity", f"topk:k={T}", f"randk:k={T}"):
        c = compressors.make(spec, D).compress(X, streams)
        assert np.array_equal(c.values, X), spec
        assert np.all(c.index_bits == 0) and np.all(c.value_bits == T * 32)


def test_randk_is_unbiased_with_the_stated_variance():
    """E C(x) = x and E||C(x)||^2 = (omega + 1)||x||^2 over many independent rounds."""
    comp = compressors.make("randk:k=10", D)
    X = sym_batch(n=2, seed=4)
    draws = np.stack([comp.compress(X, ClientStreams(7, [0, 1], k)).values for k in range(4000)])
    assert np.all(np.count_nonzero(draws, axis=2) == 10)
    se = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - X) < 5 * se + 1e-12)
    second = (draws**2).sum(axis=2).mean(axis=0)
    np.testing.assert_allclose(second, (comp.omega + 1) * (X**2).sum(axis=1), rtol=0.05)
    assert comp.theoretical_alpha(2) == pytest.approx(10 / T)


def test_rankr_matches_the_truncated_eigendecomposition():
    X = sym_batch(n=3)
    kept = compressors.make("rankr:r=2", D).compress(X).values
    for i in range(3):
        w, U = np.linalg.eigh(tri.unpack(X[i], D))
        top = np.argsort(-np.abs(w))[:2]
        ref = (U[:, top] * w[top]) @ U[:, top].T
        np.testing.assert_allclose(tri.unpack(kept[i], D), ref, atol=1e-12)


def test_theoretical_alpha_per_class():
    assert compressors.make("topk:k=2d", D).theoretical_alpha(2) == 1.0
    delta = 2 * D / T
    assert compressors.make("topk:k=2d", D).theoretical_alpha(1) == pytest.approx(1 - math.sqrt(1 - delta))
    assert compressors.make("identity", D).theoretical_alpha(1) == 1.0


@pytest.mark.parametrize("spec, words", [
    ("foo", ["identity", "topk", "randk", "rankr", "natural", "randseqk", "toplek"]),
    ("topk:k=79", [str(T)]),
    ("topk:k=0", ["1.." + str(T)]),
    ("rankr:r=13", ["1..12"]),
    ("topk:x=3", ["k=<int>", "k=d"]),
    ("topk:k=0d", ["0d", "multiple of d"]),
    ("topk:k=-2d", ["-2d"]),
    ("randk:k=abc", ["abc"]),
    ("randseqk:k=0", ["k = 0", "1.." + str(T)]),
    ("randseqk:k=79", ["k = 79", "1.." + str(T)]),
    ("toplek:k=0", ["k = 0", "1.." + str(T)]),
    ("toplek:k=7d", ["k = 84", "1.." + str(T)]),
    ("natural:k=3", ["natural", "no parameters"]),
    ("toplek:r=2", ["k=<int>"]),
    ("rankr:r=1.5d", ["r = 18", "1..12"]),
])
def test_bad_specs_name_the_value_and_range(spec, words):
    with pytest.raises(ConfigError) as err:
        compressors.make(spec, D)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)



# ---- natural compression, RandSeqK and Top-LEK (u-FedNL) ----

def draws(spec, X, rounds, seed=7):
    """C(X) over independent rounds: (rounds, n, T)."""
    comp = compressors.make(spec, D)
    return np.stack([comp.compress(X, ClientStreams(seed, np.arange(len(X)), k)).values for k in range(rounds)])


def mean_within(samples, expected, z=5.0):
    """|sample mean - expected| < z standard errors, entrywise (the SE from the samples' own spread)."""
    se = samples.std(axis=0) / np.sqrt(len(samples))
    return bool(np.all(np.abs(samples.mean(axis=0) - expected) <= z * se + 1e-12))


def test_natural_rounds_to_one_of_the_two_bracketing_powers_of_two_keeping_the_sign():
    X = sym_batch() * 10.0 ** np.random.default_rng(1).integers(-8, 8, (5, T))
    X[0, :4] = [0.0, 0.25, -4.0, 2.0**-30]  # zero and exact powers of two stay as they are
    out = compressors.make("natural", D).compress(X, ClientStreams(3, np.arange(5), 2))
    C = out.values
    a = np.floor(np.log2(np.abs(X), where=X != 0, out=np.zeros_like(X)))
    low, high = np.sign(X) * 2.0**a, np.sign(X) * 2.0 ** (a + 1)
    assert np.all((C == low) | (C == high))
    assert np.all(C[X == 0] == 0) and np.array_equal(C[0, :4], X[0, :4])
    assert 0.2 < np.mean(C[X != 0] == high[X != 0]) < 0.8  # both sides do occur
    assert np.all(out.value_bits == 9 * T) and np.all(out.index_bits == 0)
    for bits, per_entry in ((64, 12), (16, 6)):
        assert np.all(compressors.make("natural", D, bits).compress(X, ClientStreams(3, np.arange(5), 2)).value_bits
                      == per_entry * T)


def test_natural_is_unbiased_with_omega_one_eighth_and_a_biased_rounding_fails_the_same_check():
    """E C(x) = x entrywise; E||C(x) - x||^2 <= (1/8)||x||^2 (Horvath et al. 2019, Thm 1)."""
    X = sym_batch(n=2, seed=4)
    C = draws("natural", X, 4000)
    assert mean_within(C, X)
    # A rounding that goes up with probability 1.1 (|t|/2^a - 1): biased by 10% of the gap.
    a = np.floor(np.log2(np.abs(X)))
    u = np.stack([ClientStreams(7, [0, 1], k).uniform("natural", T) for k in range(4000)])
    biased = np.sign(X) * np.where(u < 1.1 * (np.abs(X) / 2.0**a - 1), 2.0 ** (a + 1), 2.0**a)
    assert not mean_within(biased, X)
    error = ((C - X) ** 2).sum(axis=2).mean(axis=0)
    assert np.all(error <= 0.125 * (X**2).sum(axis=1))
    assert compressors.make("natural", D).theoretical_alpha(1) == pytest.approx(8 / 9)


def plain_randseqk(X, K, seed, rnd, wrap=True):
    """u-FedNL's block: start s uniform on 0..T-1, entries s..s+K-1 wrapping around, times T/K."""
    out = np.zeros_like(X)
    starts = ClientStreams(seed, np.arange(len(X)), rnd).bits("randseqk", 1)[:, 0] % np.uint64(T)
    for i, s in enumerate(starts.astype(int)):
        idx = np.r_[s:min(s + K, T), 0:max(0, s + K - T) if wrap else 0]
        out[i, idx] = X[i, idx] * (T / K)
    return out


def test_randseqk_is_a_contiguous_cyclic_block_scaled_by_t_over_k():
    X = sym_batch(n=40)
    comp = compressors.make("randseqk:k=20", D)
    wrapped = 0
    for rnd in range(5):
        out = comp.compress(X, ClientStreams(2, np.arange(40), rnd))
        ref = plain_randseqk(X, 20, 2, rnd)
        np.testing.assert_array_equal(out.values, ref)
        wrapped += np.sum((ref[:, 0] != 0) & (ref[:, -1] != 0))
    assert wrapped > 0  # some blocks did wrap around the end
    assert np.all(out.value_bits == 20 * 32) and np.all(out.index_bits == math.ceil(math.log2(T)))
    assert comp.omega == T / 20 - 1 and comp.theoretical_alpha(1) == pytest.approx(20 / T)


def test_randseqk_is_unbiased_with_the_stated_variance():
    X = sym_batch(n=2, seed=4)
    C = draws("randseqk:k=10", X, 4000)
    assert mean_within(C, X)
    truncated = np.stack([plain_randseqk(X, 10, 7, k, wrap=False) for k in range(4000)])  # no wrap: biased
    assert not mean_within(truncated, X)
    second = (C**2).sum(axis=2).mean(axis=0)
    np.testing.assert_allclose(second, T / 10 * (X**2).sum(axis=1), rtol=0.05)


def plain_toplek(x, K, u):
    """u-FedNL's Top-LEK for one client, as its code reads: start from Top-K (stable argsort) and
    drop the smallest kept entry while the target residual (1 - K/T)||X||_F^2 is not bracketed;
    when it is, drop that entry too with probability p. Top-K itself when it misses the target."""
    w = tri.multiplicity(D)
    order = list(np.argsort(-np.abs(x), kind="stable")[:K])
    total = np.sum(w * x**2)
    target = (1 - K / T) * total
    residual = total - sum(w[i] * x[i] ** 2 for i in order)
    if residual <= target:
        while order:
            before = residual
            after = residual + w[order[-1]] * x[order[-1]] ** 2
            if before <= target < after:
                if u < (target - before) / (after - before):
                    order.pop()
                break
            order.pop()
            residual = after
    out = np.zeros_like(x)
    out[order] = x[order]
    return out, len(order)


@pytest.mark.parametrize("K", [1, 5, 30, 60, T - 1])
def test_toplek_matches_a_plain_per_client_loop(K):
    X = sym_batch(n=6, seed=K)
    X[1] *= 0.0  # nothing to send
    X[2, 3:10] = 0.7  # ties: the lower index goes first
    X[3] = 0.0
    X[3, tri.diagonal(D)] = np.arange(1.0, D + 1)  # diagonal-only (weight 1)
    X[4] = 1.0  # all tied; off-diagonals weigh twice, so Top-K may miss the target
    comp = compressors.make(f"toplek:k={K}", D)
    for rnd in range(4):
        streams = ClientStreams(5, np.arange(6), rnd)
        out = comp.compress(X, streams)
        u = streams.uniform("toplek", 1)[:, 0]
        for i in range(6):
            ref, count = plain_toplek(X[i], K, u[i])
            np.testing.assert_array_equal(out.values[i], ref)
            assert out.value_bits[i] == 32 * count
            assert out.index_bits[i] == count * math.ceil(math.log2(T)) + math.ceil(math.log2(K + 1))
        assert out.value_bits[1] == 0


def test_toplek_meets_its_contraction_in_expectation_and_sends_at_most_k():
    """E||C(X) - X||_F^2 = (1 - K/T)||X||_F^2 exactly, while Top-K alone does better than needed."""
    X = sym_batch(n=3, seed=9)
    w = tri.multiplicity(D)
    K = 20
    C = draws(f"toplek:k={K}", X, 2000)
    residual = ((C - X) ** 2 * w).sum(axis=2)
    target = (1 - K / T) * (X**2 * w).sum(axis=1)
    assert mean_within(residual, target)
    assert residual.std(axis=0).min() > 0  # the rounding is random
    topk = compressors.make(f"topk:k={K}", D).compress(X).values
    assert np.all(((topk - X) ** 2 * w).sum(axis=1) < target)
    assert np.count_nonzero(C, axis=2).max() <= K
    comp = compressors.make(f"toplek:k={K}", D)
    assert comp.theoretical_alpha(1) == pytest.approx(1 - math.sqrt(1 - K / T)) and comp.theoretical_alpha(2) == 1.0


def test_new_specs_round_trip_through_make():
    for spec in ("natural", "randseqk:k=17", "toplek:k=17", "randseqk:k=78", "toplek:k=1"):
        assert compressors.make(spec, D).spec() == spec
    assert compressors.make("toplek:k=17", D).k == 17 and compressors.make("randseqk:k=78", D).k == 78
    assert compressors.make("toplek:k=2d", D).k == 24 and compressors.make("randseqk:k=2d", D).spec() == "randseqk:k=24"


def test_a_multiple_of_d_may_omit_the_factor_or_be_fractional():
    assert compressors.make("topk:k=d", D).k == D == compressors.make("topk:k=1d", D).k
    assert compressors.make("randk:k=0.5d", D).k == D // 2 and compressors.make("rankr:r=d", D).r == D
    assert compressors.make("topk:k=d", D, vector=True).k == D  # FedNL-BC's model compressor: all d entries


def test_full_k_randseqk_and_toplek_are_the_identity_in_a_fednl_run():
    X = sym_batch()
    streams = ClientStreams(0, np.arange(5), 1)
    for spec in (f"toplek:k={T}", f"randseqk:k={T}"):
        c = compressors.make(spec, D).compress(X, streams)
        assert np.array_equal(c.values, X) and np.all(c.index_bits == 0) and np.all(c.value_bits == T * 32)
    base = {"dataset": "synthetic", "clients": 6, "samples_per_client": 30, "features": 5, "algorithm": "fednl",
            "rounds": 8, "quiet": True, "reference_iterations": 0}
    full = tri.size(5)
    runs = [run({**base, "compressor": spec}) for spec in ("identity", f"toplek:k={full}", f"randseqk:k={full}")]
    for other in runs[1:]:
        assert np.array_equal(other.metrics["grad_norm"], runs[0].metrics["grad_norm"])
        assert np.array_equal(other.x, runs[0].x)
    assert runs[0].metrics["grad_norm"][-1] < 1e-3 * runs[0].metrics["grad_norm"][0]

def test_client_streams_depend_only_on_the_client_and_round():
    together = ClientStreams(3, [4, 9, 17], 5).uniform("s", 50)
    alone = ClientStreams(3, [17], 5).uniform("s", 50)
    assert np.array_equal(together[2], alone[0])
    assert not np.array_equal(together[0], together[1])
    assert not np.array_equal(ClientStreams(3, [4], 6).uniform("s", 50), together[:1])
    assert not np.array_equal(ClientStreams(3, [4], 5).uniform("t", 50), together[:1])


def test_client_streams_are_uniform():
    u = ClientStreams(11, np.arange(20), 0).uniform("ks", 5000).ravel()
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
    assert 0.0 <= u.min() and u.max() < 1.0


def test_dd_sum_is_the_correctly_rounded_sum_in_any_order():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((37, 40)) * 10.0 ** rng.integers(-12, 12, (37, 40))
    exact = np.array([math.fsum(X[:, j]) for j in range(40)])
    for perm in (np.arange(37), rng.permutation(37), rng.permutation(37)):
        hi, lo = dd_sum_rows(X[perm])
        np.testing.assert_array_equal(hi + lo, exact)
