"""Compressors, the counter-based client streams and the reproducible sum, against plain oracles."""
import math

import numpy as np
import pytest
import scipy.stats

from mpifed import compressors, tri
from mpifed.ddsum import dd_sum_rows
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
    ("foo", ["identity", "topk", "randk", "rankr"]),
    ("topk:k=79", [str(T)]),
    ("topk:k=0", ["1.." + str(T)]),
    ("rankr:r=13", ["1..12"]),
    ("topk:x=3", ["k=<int>"]),
    ("randk:k=abc", ["abc"]),
])
def test_bad_specs_name_the_value_and_range(spec, words):
    with pytest.raises(ConfigError) as err:
        compressors.make(spec, D)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


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
