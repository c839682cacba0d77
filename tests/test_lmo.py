"""The LMO methods lmo-momentum and lmo-hcm: the oracles against their closed forms (dual norms), the GLM's
Hessian-vector products against the packed Hessians, the network's finite-difference HVP against central
differences, the Hessian correction's defining property on a quadratic (m^k = grad f(x^k) at every k), beta = 0
against a plain LMO-GD, one-line errors before round 0, and (under mpiexec) the same trace at 1, 2 and 4 ranks."""
import numpy as np
import pytest
import scipy.sparse

from method_loop import rounds
from rank_invariance import assert_same, batches, distributed_and_serial
from sparse_data import sparse_binary
from mpifed import config, tri
from mpifed.algorithms.lmo import hcm, momentum
from mpifed.algorithms.lmo.oracle import lmo
from mpifed.algorithms.lmo.oracles import glm_hvp, network_gradients, network_hvp
from mpifed.comm import SerialComm
from mpifed.driver import run
from mpifed.errors import ConfigError, MpifedError
from mpifed.federation import build_federation
from mpifed.plan import resolve
from mpifed.problems.logistic import LogisticBlock
from mpifed.rng import ClientStreams

SPARSE = {"dataset": sparse_binary(), "clients": 9, "samples_per_client": 40}
NN = {"dataset": "mnist-synthetic", "model": "mlp:hidden=16", "clients": 4, "batch_size": 8}


def test_the_oracles_attain_the_dual_norms_on_their_unit_balls():
    rng = np.random.default_rng(0)
    m = rng.standard_normal(30)
    s2, sinf = lmo(m, "l2"), lmo(m, "linf")
    assert np.linalg.norm(s2) == pytest.approx(1.0) and m @ s2 == pytest.approx(-np.linalg.norm(m))
    assert np.abs(sinf).max() == 1.0 and m @ sinf == pytest.approx(-np.abs(m).sum())
    for other in rng.standard_normal((200, 30)):  # no point of either ball does better
        assert m @ s2 <= m @ (other / np.linalg.norm(other)) + 1e-12
        assert m @ sinf <= m @ np.clip(other, -1, 1) + 1e-12
    assert not lmo(np.zeros(3), "l2").any()
    layers = ((0, 12, 4, 3), (12, 30, 3, 6))
    s = lmo(m, "spectral", layers)
    for lo, hi, r, c in layers:  # each layer: spectral norm 1, <M, S> = -||M||_nuclear
        M, S = m[lo:hi].reshape(r, c), s[lo:hi].reshape(r, c)
        assert np.linalg.norm(S, 2) == pytest.approx(1.0)
        assert np.sum(M * S) == pytest.approx(-np.linalg.norm(M, "nuc"))


@pytest.mark.parametrize("dense", [False, True])
def test_the_glm_hessian_vector_products_are_the_packed_hessians_times_v(dense):
    rng = np.random.default_rng(1)
    A = scipy.sparse.random(60, 7, density=0.4, random_state=2, format="csr")
    b, offsets, x, v = rng.choice([-1.0, 1.0], 60), np.array([0, 10, 35, 60]), rng.standard_normal(7), rng.standard_normal(7)
    block = LogisticBlock(A, b, offsets, 0.3, dense=dense)
    _, _, curvature = block.derivatives_and_coefficients(x)
    _, _, packed = block.derivatives(x)
    expected = np.stack([tri.unpack(h, 7) @ v for h in packed])
    np.testing.assert_allclose(glm_hvp(block, curvature, v), expected, rtol=1e-12, atol=1e-14)


class LeastSquares:
    """f_i(x) = (1/2m_i) ||A_i x - b_i||^2 + lam/2 ||x||^2 with the GLM block's interface (phi'' = 1): a quadratic."""

    def __init__(self, A, b, m: int, lam: float):
        self.A, self.b, self.m, self.lam = A, b, m, lam  # A (n, m, d), b (n, m)
        self.n, self.d = A.shape[0], A.shape[2]

    def derivatives_and_coefficients(self, x):
        r = self.A @ x - self.b
        loss = 0.5 * (r * r).mean(axis=1) + 0.5 * self.lam * x @ x
        return loss, np.einsum("imd,im->id", self.A, r) / self.m + self.lam * x, np.ones_like(r)

    def derivatives(self, x, hessian=False):
        return self.derivatives_and_coefficients(x)[:2] + (None,)

    def margins(self, v):
        return self.A @ v

    def hvp_from_coefficients(self, h, v):
        """(A_i^T diag(h_i) A_i / m_i + lam I) v for every client, written out with einsum."""
        return np.einsum("imd,im->id", self.A, h * (self.A @ v)) / self.m + self.lam * v


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hcm_with_exact_oracles_on_a_quadratic_keeps_the_momentum_at_the_gradient(norm):
    """A least-squares objective (quadratic) stands in for the sheet's quadratic; LMO-momentum lags behind."""
    rng = np.random.default_rng(3)
    block = LeastSquares(rng.standard_normal((3, 8, 5)), rng.standard_normal((3, 8)), 8, 0.1)
    grad = lambda x: block.derivatives_and_coefficients(x)[1].mean(axis=0)  # noqa: E731
    for method, exact in ((hcm, True), (momentum, False)):
        seen = []
        params = method.Params(t=0.05, beta=0.9, norm=norm)
        xs = rounds(method, params, block, rng.standard_normal(5), 12, on_server=lambda k, s, agg: seen.append(
            method.next_momentum(params, s, agg)))
        errors = [np.linalg.norm(m - grad(x)) / np.linalg.norm(grad(x)) for m, x in zip(seen, xs)]
        if exact:
            assert max(errors) < 1e-13
        else:
            assert max(errors) > 1e-2  # plain momentum is a lagging average


def test_beta_zero_is_lmo_gd_on_the_logistic_problem(tmp_path):
    """x+ = x - t_k grad P / ||grad P|| with t_k = t / (1 + c k), from a plain logistic gradient."""
    conf = {**SPARSE, "algorithm": "lmo-hcm", "momentum": 0.0, "radius": 0.3, "step_decay": 0.5, "rounds": 6,
            "tol": 0.0, "quiet": True, "out": str(tmp_path / "t.h5")}
    result = run(conf, comm=SerialComm())
    fed = build_federation(resolve(config.build(conf)).data, SerialComm())
    A, lam = fed.block._A.toarray(), conf.get("lam", 1e-3)
    y, owner = np.asarray(fed.block.b), fed.block.row_client
    x = np.zeros(A.shape[1])
    for k in range(6):
        coef = -y / (1 + np.exp(y * (A @ x))) / 40  # (1/m) phi'(b a^T x) b per row, m = 40
        g = np.stack([coef[owner == i] @ A[owner == i] for i in range(9)]).mean(axis=0) + lam * x
        x = x - 0.3 / (1 + 0.5 * k) * g / np.linalg.norm(g)
    np.testing.assert_allclose(result.x, x, rtol=1e-12, atol=1e-14)


def test_the_network_hvp_is_a_difference_of_gradients_on_the_same_mini_batch():
    fed = build_federation(resolve(config.build({**NN, "algorithm": "lmo-hcm"})).data, SerialComm())
    block, rng = fed.block, np.random.default_rng(4)
    x = block.model.init(0)
    u, v = rng.standard_normal(block.d), rng.standard_normal(block.d)
    streams = ClientStreams(0, fed.client_ids, 3)
    _, grad, batch = network_gradients(block, x, streams)
    hv = network_hvp(block, x, grad, batch, v)
    h = 1e-4 / np.linalg.norm(v)  # central differences, a larger step
    plus = block.loss_grad(np.broadcast_to(x + h * v, (block.n, block.d)), *batch)[1]
    minus = block.loss_grad(np.broadcast_to(x - h * v, (block.n, block.d)), *batch)[1]
    np.testing.assert_allclose(hv, (plus - minus) / (2 * h), rtol=1e-4, atol=1e-5 * np.abs(hv).max())
    hu = network_hvp(block, x, grad, batch, u)
    np.testing.assert_allclose((hv * u).sum(axis=1), (hu * v).sum(axis=1), rtol=1e-4)  # symmetric


@pytest.mark.parametrize("algorithm, norm", [("lmo-hcm", "spectral"), ("lmo-momentum", "linf")])
def test_the_network_runs_record_test_accuracy_every_round(algorithm, norm, tmp_path):
    m = run({**NN, "model": "softmax", "algorithm": algorithm, "lmo_norm": norm, "radius": 0.05, "rounds": 3,
             "quiet": True, "out": str(tmp_path / "t.h5")}, comm=SerialComm()).metrics
    assert np.all(np.isfinite(m["test_accuracy"])) and np.all(np.isfinite(m["loss"]))
    np.testing.assert_array_equal(m["exchanges"], np.arange(4))


@pytest.mark.parametrize("values, match", [
    ({"algorithm": "lmo-hcm", "radius": 0.0}, "--radius = 0.0 is out of range; valid: a radius t > 0"),
    ({"algorithm": "lmo-momentum", "radius": -1.0}, "--radius = -1.0 is out of range"),
    ({"algorithm": "lmo-hcm", "lmo_norm": "spectral"}, "--lmo-norm spectral applies to networks only"),
    ({"algorithm": "lmo-hcm", "lmo_norm": "l1"}, "--lmo-norm = 'l1' is out of range; valid: l2, linf, spectral"),
    ({"algorithm": "lmo-hcm", "momentum": 1.0}, "--momentum = 1.0 is out of range"),
    ({"algorithm": "gd", "radius": 0.1}, "--radius does not apply to algorithm 'gd'"),
])
def test_bad_input_is_a_one_line_error_before_round_0(values, match):
    with pytest.raises(ConfigError, match=match) as err:
        config.build(values)
    assert "\n" not in str(err.value)


def test_a_batch_size_without_a_network_is_refused_at_setup(tmp_path):
    with pytest.raises(MpifedError, match="--batch-size applies to networks only"):
        run({"algorithm": "lmo-hcm", "batch_size": 8, "rounds": 1, "quiet": True, "out": str(tmp_path / "t.h5")},
            comm=SerialComm())


EVERY = {
    "lmo-momentum": {**SPARSE, "algorithm": "lmo-momentum", "lmo_norm": "linf", "radius": 0.05},
    "lmo-hcm": {**SPARSE, "algorithm": "lmo-hcm", "step_decay": 0.1},
    "lmo-hcm-dense": {"dataset": "synthetic", "clients": 7, "samples_per_client": 30, "features": 5,
                      "algorithm": "lmo-hcm"},
    "nn-lmo-hcm": {**NN, "clients": 5, "algorithm": "lmo-hcm", "lmo_norm": "spectral", "radius": 0.05},
    "nn-lmo-momentum": {**NN, "clients": 5, "algorithm": "lmo-momentum"},
}


@pytest.mark.mpi
@pytest.mark.parametrize("names", batches(EVERY))
def test_the_trace_is_the_same_at_any_rank_count(names, tmp_path):
    confs = {name: {"rounds": 6, "tol": 0.0, "quiet": True, **EVERY[name]} for name in names}
    for conf in confs.values():
        if "model" not in conf:
            conf["reference_iterations"] = 3
    pairs = distributed_and_serial(confs, tmp_path)
    assert_same(pairs, ("grad_norm", "loss", "bits_up", "bits_down", "exchanges"))
