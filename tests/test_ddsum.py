"""The reproducible client sum: correctly rounded totals (exact rational oracle), whatever the order."""
from fractions import Fraction

import numpy as np
import pytest

from mpifed.ddsum import dd_sum_rows, dd_sum_sparse_rows


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


def test_blocks_sum_equals_the_sum_of_their_concatenation():
    """dd_sum_blocks never concatenates, yet gives the very bits of dd_sum_rows on the concatenation."""
    from mpifed.ddsum import dd_sum_blocks, dd_sum_rows

    rng = np.random.default_rng(7)
    for n in (1, 5, 33, 100):
        blocks = [rng.standard_normal((n, 1)) * 1e8, rng.standard_normal((n, 7)),
                  np.asfortranarray(rng.standard_normal((n, 40)) * np.exp(20 * rng.standard_normal((n, 40))))]
        hi, lo = dd_sum_blocks(blocks)
        whole_hi, whole_lo = dd_sum_rows(np.concatenate(blocks, axis=1))
        assert hi.tobytes() == whole_hi.tobytes() and lo.tobytes() == whole_lo.tobytes()


@pytest.mark.parametrize("piece_bytes", [8 * 33 * 3, 1 << 22])
def test_blocks_summed_together_or_alone_give_the_same_bits(monkeypatch, piece_bytes):
    """Narrow blocks are summed in one pass, wide ones and blocks of another dtype alone: each column's bits are
    those of summing its own block alone (a float32 block stays a float32 sum)."""
    from mpifed import ddsum

    monkeypatch.setattr(ddsum, "PIECE_BYTES", piece_bytes)
    rng = np.random.default_rng(9)
    n = 33
    blocks = [rng.standard_normal((n, 4)) * 1e12, rng.standard_normal((n, 1)), rng.standard_normal((n, 5)).astype(np.float32),
              np.asfortranarray(rng.standard_normal((n, 9)) * np.exp(20 * rng.standard_normal((n, 9)))),
              rng.standard_normal((n, 2))]
    hi, lo = ddsum.dd_sum_blocks(blocks)
    alone = [ddsum.dd_sum_rows(b) for b in blocks]
    want_hi, want_lo = np.concatenate([h for h, _ in alone]), np.concatenate([l for _, l in alone])
    assert hi.dtype == np.float64 and hi.tobytes() == want_hi.tobytes() and lo.tobytes() == want_lo.tobytes()
    np.testing.assert_array_equal(hi[5:10], alone[2][0])  # summed in float32, then widened


def test_large_arrays_summed_in_column_pieces_keep_every_bit(monkeypatch):
    """Pieces of a few columns (either memory layout) give the bits of the whole-array sum."""
    from mpifed import ddsum

    rng = np.random.default_rng(8)
    X = rng.standard_normal((75, 50)) * np.exp(15 * rng.standard_normal((75, 50)))
    whole = ddsum._dd_sum_rows(X)
    monkeypatch.setattr(ddsum, "PIECE_BYTES", 8 * 75 * 3)  # 3 columns a piece
    for layout in (X, np.asfortranarray(X)):
        hi, lo = ddsum.dd_sum_rows(layout)
        assert hi.tobytes() == whole[0].tobytes() and lo.tobytes() == whole[1].tobytes()
    exact = np.array([float(sum(Fraction(v) for v in X[:, j])) for j in range(X.shape[1])])
    np.testing.assert_array_equal(hi + lo, exact)


@pytest.mark.parametrize("n", [0, 1, 2, 31, 33, 71])
def test_sparse_rows_sum_to_the_dense_rows_bit_for_bit(n):
    """K values per row at distinct columns, zeros elsewhere: the same (hi, lo) as summing the dense rows."""
    rng = np.random.default_rng(n)
    width, K = 40, 7
    index = np.sort(np.argsort(rng.random((n, width)), axis=1)[:, :K], axis=1)
    values = rng.standard_normal((n, K)) * 10.0 ** rng.integers(-12, 12, (n, K))
    values[:, 0] = 1e16 * (-1) ** np.arange(n) + 1.0  # cancellation, where the low part matters
    values[::3, 1] = 0.0  # selected entries may themselves be zero
    dense = np.zeros((n, width))
    np.put_along_axis(dense, index, values, axis=1)
    for chunks in (1, 5, 32):
        got, want = dd_sum_sparse_rows(index, values, width, chunks=chunks), dd_sum_rows(dense, chunks=chunks)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.view(np.uint64), w.view(np.uint64))
