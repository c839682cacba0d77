"""The compiled kernels (mpifed.kernels) against the numpy code they stand in for, bit for bit, and against
plain oracles written here: the packed Hessians (the scatter matrix's product and the dense per-client sum),
FedNL's fused Top-K step (numpy's Frobenius norm, a stable-sort Top-K, the double-double sums) and whole runs
with the kernels on and off."""
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from sparse_data import sparse_binary
from mpifed import compressors, kernels, tri
from mpifed.ddsum import dd_slots, dd_slots_total, dd_sum_rows, dd_sum_sparse_rows
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.problems.logistic import LogisticBlock

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="numba is not installed (the numpy code runs)")


@pytest.fixture
def numpy_only(monkeypatch):
    """Turn the kernels off for the duration of a test (the numpy code runs)."""
    monkeypatch.setattr(kernels, "_KERNELS", False)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def block(binary: bool, n=9, rows=12, d=17, seed=0):
    rng = np.random.default_rng(seed)
    A = sp.random(n * rows, d, density=0.25, format="csr", random_state=seed)
    A.data[:] = 1.0 if binary else rng.choice([0.5, 1.0, -2.0, 3.7], size=A.nnz)
    b = np.where(rng.random(n * rows) < 0.5, -1.0, 1.0)
    return LogisticBlock(A, b, np.arange(n + 1) * rows, 1e-3, dense=False), A


@pytest.mark.parametrize("binary", [True, False])
def test_packed_hessians_are_the_scatter_matrix_product_and_the_dense_sum(binary, monkeypatch):
    blk, A = block(binary)
    h = np.random.default_rng(1).random(A.shape[0])
    compiled = blk.hessians_from_coefficients(h)
    subset = blk.hessians_of([7, 2, 2, 0], h)
    assert blk.packed_rows()[2] is None if binary else blk.packed_rows()[2] is not None
    monkeypatch.setattr(kernels, "_KERNELS", False)
    fresh, _ = block(binary)
    assert same_bits(compiled, fresh.hessians_from_coefficients(h))  # the scatter matrix's product
    assert same_bits(subset, fresh.hessians_of([7, 2, 2, 0], h))
    for i in range(blk.n):  # (1/m) sum_j h_j a_j a_j^T + lam I, from the rows
        rows = A[i * 12:(i + 1) * 12].toarray()
        dense = rows.T @ (h[i * 12:(i + 1) * 12, None] * rows) / 12 + 1e-3 * np.eye(blk.d)
        np.testing.assert_allclose(tri.unpack(compiled[i], blk.d), dense, rtol=1e-13, atol=1e-15)


def rows_of_every_kind(T: int, rng) -> np.ndarray:
    """Hessian-minus-H rows where a selection can go wrong: random, mostly zero, few distinct values, all
    equal, all zero, ties straddling the threshold, subnormals, exactly K nonzeros, huge and tiny together."""
    K = T // 6
    random = rng.standard_normal(T) * 10.0 ** rng.integers(-8, 3, T)
    sparse = np.where(rng.random(T) < 0.05, rng.standard_normal(T), 0.0)
    few = rng.choice([-2.0, -0.5, 0.0, 0.5, 2.0], size=T)
    equal = np.full(T, -0.25)
    zero = np.zeros(T)
    ties = np.where(np.arange(T) % 3 == 0, 1.0, rng.random(T) * 0.5)
    ties[: K // 2] = 3.0
    subnormal = rng.standard_normal(T) * 5e-320
    exactly = np.zeros(T)
    exactly[rng.choice(T, K, replace=False)] = rng.standard_normal(K)
    wide = rng.standard_normal(T) * 10.0 ** rng.integers(-300, 150, T)
    return np.stack([random, sparse, few, equal, zero, ties, subnormal, exactly, wide])


def numpy_step(diff, H, k, alpha, option2):
    """FedNL's numpy Top-K step (fednl.client_step's sparse branch), on copies."""
    H = H.copy()
    n, T = diff.shape
    norms = tri.frobenius(diff) if option2 else None
    index, values = compressors.TopK(d=tri._dim(T), k=k).sparse(diff)
    at = index + (np.arange(n) * T)[:, None]
    H.reshape(-1)[at] += values if alpha == 1.0 else alpha * values
    return norms, index, values, H, dd_sum_sparse_rows(index, values, T)


def kernel_step(hess, H, k, alpha, option2, d):
    n, T = hess.shape
    H, hess = H.copy(), hess.copy()
    norms = np.empty(n) if option2 else None
    index, values = np.empty((n, k), dtype=np.intp), np.empty((n, k))
    slot_hi, slot_lo, slots = dd_slots(n, T)
    kernels.topk_update(hess, H, k, alpha, tri.multiplicity(d), norms, index, values, slot_hi, slot_lo, slots)
    return norms, index, values, H, dd_slots_total(slot_hi, slot_lo), hess


@pytest.mark.parametrize("d", [3, 30, 256])  # T = 6 (short rows), 465, 32896 (the long rows' lane histograms)
@pytest.mark.parametrize("alpha, option2", [(1.0, True), (0.5, False)])
def test_topk_update_is_the_numpy_step_bit_for_bit(d, alpha, option2):
    rng = np.random.default_rng(d)
    T = tri.size(d)
    diff = rows_of_every_kind(T, rng)
    if d == 256:
        diff = diff[[0, 2, 5, 8]]
    H = rng.standard_normal(diff.shape)
    hess = diff + H  # so that hess - H is diff up to rounding; the kernel and numpy see the same difference
    diff = hess - H
    for k in sorted({1, max(1, T // 6), T - 1}):
        ours = kernel_step(hess, H, k, alpha, option2, d)
        theirs = numpy_step(diff, H, k, alpha, option2)
        assert same_bits(ours[5], diff)  # the differences left in place
        if option2:
            assert same_bits(ours[0], theirs[0])
            np.testing.assert_allclose(ours[0], np.sqrt((tri.unpack(diff, d) ** 2).sum(axis=(1, 2))), rtol=1e-12)
        for mine, numpys in zip(ours[1:4], theirs[1:4]):
            assert same_bits(mine, numpys)
        assert all(same_bits(a, b) for a, b in zip(ours[4], theirs[4]))
        # the oracle: the k largest |v|, ties to the lower index (a stable sort), ascending
        expected = np.sort(np.argsort(-np.abs(diff), axis=1, kind="stable")[:, :k], axis=1)
        np.testing.assert_array_equal(ours[1], expected)


@pytest.mark.parametrize("binary", [True, False])
def test_the_fused_hessian_step_is_the_hessians_then_the_step(binary):
    blk, A = block(binary, n=11, d=23)
    rng = np.random.default_rng(5)
    h = rng.random(A.shape[0])
    H = blk.hessians_from_coefficients(rng.random(A.shape[0]))
    k, d, T = 40, blk.d, blk.T
    outputs = []
    for fused in (True, False):
        Hc, norms = H.copy(), np.empty(blk.n)
        index, values = np.empty((blk.n, k), dtype=np.intp), np.empty((blk.n, k))
        slot_hi, slot_lo, slots = dd_slots(blk.n, T)
        step = (Hc, k, 1.0, tri.multiplicity(d), norms, index, values, slot_hi, slot_lo, slots)
        if fused:
            kernels.hessian_topk_update(blk.packed_rows(), h, blk.lam, d, *step)
        else:
            kernels.topk_update(blk.hessians_from_coefficients(h), *step)
        outputs.append((Hc, norms, index, values, *dd_slots_total(slot_hi, slot_lo)))
    assert all(same_bits(a, b) for a, b in zip(*outputs))


def test_dd_accumulate_is_the_numpy_double_double_sum(monkeypatch):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((n, w)) * 10.0 ** rng.integers(-30, 30, (n, w))
              for n, w in [(1, 5), (31, 3), (32, 7), (33, 2), (200, 13)]]
    arrays.append(np.asfortranarray(arrays[-1]))
    compiled = [dd_sum_rows(X) for X in arrays]
    monkeypatch.setattr(kernels, "_KERNELS", False)
    for X, (hi, lo) in zip(arrays, compiled):
        h, l = dd_sum_rows(X)
        assert same_bits(hi, h) and same_bits(lo, l)


def binary_file(tmp_path) -> str:
    """A LIBSVM file of 0/1 features (the binary-row kernel path, as a9a and w8a take)."""
    rng = np.random.default_rng(4)
    lines = []
    for i in range(240):
        cols = np.flatnonzero(rng.random(30) < 0.2) + 1
        lines.append(" ".join([f"{1 if i % 3 else -1:+d}"] + [f"{j}:1" for j in cols]))
    path = tmp_path / "binary.svm"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


RUNS = {
    "fednl-topk": {"algorithm": "fednl", "compressor": "topk:k=3d"},
    "fednl-option1-alpha": {"algorithm": "fednl", "compressor": "topk:k=2d", "option": 1, "alpha": 0.5},
    "fednl-randk": {"algorithm": "fednl", "compressor": "randk:k=3d"},
    "nl1": {"algorithm": "nl1"},
    "newton": {"algorithm": "newton"},
}


@pytest.mark.parametrize("data", ["binary", "half-values", "dense"])
@pytest.mark.parametrize("method", list(RUNS))
def test_runs_are_the_same_with_and_without_the_kernels(method, data, tmp_path, monkeypatch):
    dataset = {"binary": binary_file(tmp_path), "half-values": sparse_binary(), "dense": "synthetic"}[data]
    cfg = {"dataset": dataset, "clients": 6, "samples_per_client": 40, "lam": 1e-3, "rounds": 12, "tol": 0.0,
           "quiet": True, "reference_iterations": 0, "seed": 3, **RUNS[method]}
    if data == "dense":
        cfg["features"] = 8
    results = []
    for on in (True, False):
        monkeypatch.setattr(kernels, "_KERNELS", None if on else False)
        results.append(run({**cfg, "out": str(tmp_path / f"{on}.h5")}))
    ours, theirs = results
    assert ours.status == theirs.status != "failed"
    for key, column in theirs.metrics.items():
        if not key.startswith("time"):
            assert same_bits(ours.metrics[key], column), key
    assert same_bits(ours.x, theirs.x)


def test_a_bad_kernel_choice_is_one_line_naming_the_valid_ones(monkeypatch):
    monkeypatch.setattr(kernels, "_KERNELS", None)
    monkeypatch.setenv("MPIFED_KERNELS", "fast")
    with pytest.raises(ConfigError, match=r"MPIFED_KERNELS = 'fast'; valid: numba \(the default\) or numpy"):
        kernels.enabled()


def test_without_numba_the_numpy_code_runs(monkeypatch, tmp_path):
    import mpifed

    monkeypatch.setattr(kernels, "_KERNELS", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "mpifed._compiled")
    monkeypatch.delattr(mpifed, "_compiled")
    assert not kernels.enabled()
    result = run({"dataset": sparse_binary(), "clients": 4, "samples_per_client": 40, "rounds": 3, "tol": 0.0,
                  "quiet": True, "reference_iterations": 0, "algorithm": "fednl", "out": str(tmp_path / "t.h5")})
    assert result.status == "completed"


def test_a_method_without_packed_hessians_does_not_import_numba(tmp_path):
    """The double-double sums use the kernels only once another kernel has loaded them: a first-order run keeps
    numba (some 100 MB of resident set) out of the process."""
    code = ("import sys; from mpifed.driver import run; "
            f"r = run({{'dataset': 'synthetic', 'clients': 4, 'samples_per_client': 20, 'features': 5, 'rounds': 3, "
            f"'tol': 0.0, 'quiet': True, 'reference_iterations': 0, 'algorithm': 'gd', 'out': r'{tmp_path / 'g.h5'}'}}); "
            "print(r.status, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["completed", "False"]
