"""The large-d paths against their small-d forms: DANE's and GIANT's local solves in ranges of clients against the
one batch, their block-summed gradients against the (clients x d) ones, GD's matrix-free L against the Gram L and
a dense eigensolver, the in-place double-double helpers against the plain ones, and the footprint's refusals."""
import numpy as np
import pytest
import scipy.sparse.linalg as sla

from mpifed import ddsum, driver, footprint
from mpifed.algorithms.approx_newton import cg, giant
from mpifed.algorithms.first_order import gd
from mpifed.comm import SerialComm
from mpifed.config import build
from mpifed.driver import run
from mpifed.errors import ConfigError
from mpifed.federation import build_federation
from mpifed.plan import resolve
from sparse_data import sparse_binary

SPARSE = {"dataset": sparse_binary(), "clients": 6, "samples_per_client": 40}
SYN = {"dataset": "synthetic", "clients": 5, "samples_per_client": 30, "features": 6}
BASE = {"quiet": True, "reference_iterations": 0, "out": None, "lam": 1e-3, "tol": 0.0}


def runs(cfg, **extra):
    return run({**BASE, **cfg, **extra}, comm=SerialComm())


def test_in_place_double_double_helpers_keep_the_bits(monkeypatch):
    monkeypatch.setattr(ddsum, "PIECE", 7)  # many pieces, a short last one
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 50)) * np.exp(20 * rng.standard_normal((4, 50)))
    hi, lo = ddsum.two_sum(a[0], a[1])
    b_hi, b_lo = ddsum.two_sum(a[2], a[3])
    want = ddsum.dd_add(hi, lo, b_hi, b_lo)
    ddsum.dd_add_into(hi, lo, b_hi, b_lo)
    assert hi.tobytes() == want[0].tobytes() and lo.tobytes() == want[1].tobytes()
    want = ddsum.dd_add(hi, lo, *ddsum.dd_times(37, 0.3 * a[0]))
    ddsum.dd_add_times_into(hi, lo, 37, lambda at: 0.3 * a[0][at])
    assert hi.tobytes() == want[0].tobytes() and lo.tobytes() == want[1].tobytes()
    index = np.argsort(rng.random((70, 50)), axis=1)[:, :9]
    values = rng.standard_normal((70, 9)) * 1e6
    dense = np.zeros((70, 50))
    np.put_along_axis(dense, index, values, axis=1)
    s_hi, s_lo = ddsum.dd_sum_sparse_rows(index, values, 50)
    w_hi, w_lo = ddsum._dd_sum_rows(dense)
    assert s_hi.tobytes() == w_hi.tobytes() and s_lo.tobytes() == w_lo.tobytes()


@pytest.mark.parametrize("method, extra", [("giant", {}), ("dane", {"local_steps": 2, "mu": 1e-3})])
def test_local_solves_in_ranges_of_clients_are_the_one_batch(monkeypatch, method, extra):
    """One client per range (a budget below one client's arrays): the same iterates as the whole block at once."""
    whole = runs(SPARSE, algorithm=method, rounds=4, **extra)
    monkeypatch.setattr(cg, "LOCAL_CHUNK_BYTES", 1)
    assert [hi - lo for lo, hi, _ in cg.chunks(_block(SPARSE))] == [1] * 6
    ranged = runs(SPARSE, algorithm=method, rounds=4, **extra)
    np.testing.assert_allclose(ranged.x, whole.x, rtol=1e-14, atol=1e-16)
    np.testing.assert_array_equal(ranged.metrics["local_iterations"], whole.metrics["local_iterations"])


def test_block_summed_gradients_above_dense_client_d_are_the_summed_client_gradients(monkeypatch):
    """Above DENSE_CLIENT_D, exchange 1 of GIANT and DANE sends the gradients summed over the block: the server's
    grad P and P agree with the (clients x d) uplink's to rounding, and DANE's recomputed range gradients are the
    kept ones bit for bit."""
    fed, x = _fed(SPARSE), np.random.default_rng(2).standard_normal(_fed(SPARSE).d) * 0.1
    params = giant.Params()
    kept, dense = giant.client_step(params, fed.block, None, x, None)
    monkeypatch.setattr(giant, "DENSE_CLIENT_D", 0)
    summed_state, summed = giant.client_step(params, fed.block, None, x, None)
    assert summed_state.grad is None and isinstance(summed.grad, tuple)
    a, b = driver.exchange(fed, dense), driver.exchange(fed, summed)
    np.testing.assert_allclose(b.grad, a.grad, rtol=1e-13, atol=1e-16)
    assert b.loss == a.loss
    for lo, hi, piece in [(0, 2, fed.block.clients(0, 2, keep=False)), (2, 6, fed.block.clients(2, 6, keep=False))]:
        assert giant.local_gradients(summed_state, lo, hi, piece).tobytes() == kept.grad[lo:hi].tobytes()


def test_gd_with_block_summed_gradients_keeps_its_run(monkeypatch):
    whole = runs(SPARSE, algorithm="gd", rounds=6)
    monkeypatch.setattr(gd, "DENSE_CLIENT_D", 0)
    summed = runs(SPARSE, algorithm="gd", rounds=6)
    np.testing.assert_allclose(summed.x, whole.x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(summed.metrics["loss"], whole.metrics["loss"], rtol=1e-14)


def _block(cfg):
    return build_federation(resolve(build({**BASE, **cfg, "algorithm": "gd"})).data, SerialComm()).block


def _fed(cfg):
    return build_federation(resolve(build({**BASE, **cfg, "algorithm": "gd"})).data, SerialComm())


def _gram_L(fed):
    params = gd.Params(lam=fed.block.lam, curvature=fed.block.curvature_bound)
    _, init = gd.client_init(params, fed.block, np.zeros(fed.d), None)
    return gd.server_init(params, driver.exchange(fed, init), np.zeros(fed.d)).L


@pytest.mark.parametrize("cfg", [SPARSE, SYN, pytest.param({"dataset": "a9a"}, marks=pytest.mark.data("a9a"))],
                         ids=["sparse", "dense", "a9a"])
def test_matrix_free_L_is_the_gram_L(cfg):
    """lam + c lambda_max((1/n) sum_i A_i^T A_i / m_i) by Lanczos on exchanged products, against the Gram matrices'
    eigenvalue and, independently, scipy's dense eigensolver on the stacked rows."""
    fed = _fed(cfg)
    block = fed.block
    L = driver.smoothness_matrix_free(fed, block.lam, block.curvature_bound)
    assert abs(L - _gram_L(fed)) <= 1e-9 * L
    if block.dense:
        return
    A = block._A
    weights = 1.0 / block.sizes[block.row_client]
    M = (A.T @ A.multiply(weights[:, None])).toarray() / block.n
    top = sla.eigsh(M, k=1, which="LA", tol=1e-14)[0][0] if M.shape[0] > 2 else np.linalg.eigvalsh(M)[-1]
    assert abs(L - (block.lam + block.curvature_bound * top)) <= 1e-9 * L


def test_gd_above_gram_max_d_computes_L_matrix_free_and_keeps_its_run(monkeypatch):
    whole = runs(SPARSE, algorithm="gd", rounds=5)
    monkeypatch.setattr(gd, "GRAM_MAX_D", 2)
    free = runs(SPARSE, algorithm="gd", rounds=5)
    np.testing.assert_allclose(free.metrics["loss"], whole.metrics["loss"], rtol=1e-12)
    np.testing.assert_allclose(free.x, whole.x, rtol=1e-9, atol=1e-14)
    assert free.metrics["exchanges"][-1] == whole.metrics["exchanges"][-1]  # the setup is not counted


def test_footprint_refuses_per_client_vectors_and_not_matrix_free_gd():
    with pytest.raises(ConfigError, match=r"fedsophia keeps 4 \(clients x d\) arrays .*: 16 GB for d = 1000000"):
        footprint.check("fedsophia", 10**6, 500, False, False, available=10**9)
    footprint.check("fedsophia", 10**4, 500, False, False, available=10**9)  # 160 MB: fits
    footprint.check("gd", 10**6, 500, True, False, available=10**9)  # matrix-free above GRAM_MAX_D
    with pytest.raises(ConfigError, match="a packed d"):
        footprint.check("gd", gd.GRAM_MAX_D, 500, True, False, available=10**9)
