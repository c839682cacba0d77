"""The reproducible client sum: correctly rounded totals (exact rational oracle), whatever the order."""
from fractions import Fraction

import numpy as np
import pytest

from mpifed.ddsum import dd_sum_rows


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 71, 500])
def test_dd_sum_rows_is_the_correctly_rounded_exact_sum(n):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 6)) * 10.0 ** rng.integers(-12, 12, (n, 6))
    X[:, 0] = 1e16 * (-1) ** np.arange(n) + 1.0  # heavy cancellation: plain float sums lose the ones
    exact = np.array([float(sum(Fraction(v) for v in X[:, j])) for j in range(X.shape[1])])
    hi, lo = dd_sum_rows(X)
    np.testing.assert_array_equal(hi + lo, exact)
    for chunks in (1, 5, 64):  # any slicing of the rows gives the same rounded total
        h, l = dd_sum_rows(X[rng.permutation(n)], chunks=chunks)
        np.testing.assert_array_equal(h + l, exact)


def test_dd_sum_rows_keeps_trailing_shape_and_empty_blocks():
    X = np.arange(24.0).reshape(4, 3, 2)
    hi, lo = dd_sum_rows(X)
    np.testing.assert_array_equal(hi + lo, X.sum(axis=0))
    hi, lo = dd_sum_rows(np.zeros((0, 3)))
    assert hi.shape == (3,) and not hi.any()
