"""Neural-network models, FOOF / K-FAC factors and MNIST, against independent oracles.

Oracles: central finite differences for gradients; covariances summed sample by sample (and, for
convolutions, location by location from an unfold written here with explicit loops); ``np.kron`` and
``np.linalg.inv`` for the Kronecker identities; hand-built IDX files for the reader.
"""

import gzip
import os
import shutil

import numpy as np
import pytest

from mpifed.data import mnist
from mpifed.errors import ConfigError, DataError
from mpifed.problems.nn import (build_model, damped, ema, foof_direction, foof_factor, kfac_direction, kfac_factors,
                       kfac_inverses, kfac_precondition, pi_correction, sample_labels)

# spec, sample shape, classes: small float64 versions of the three models. 11x11 makes the pool crop a row.
CASES = [("softmax", (5, 4), 3), ("mlp:hidden=5-4", (6,), 3), ("cnn:conv=2-3,dense=4-5", (11, 11, 2), 3)]
B = 4


def _setup(spec, shape, K, seed=0):
    m = build_model(spec, shape, K)
    r = np.random.default_rng(seed)
    theta = m.init(seed) + 0.1 * r.standard_normal(m.n_params)  # nonzero biases too
    X = r.standard_normal((B,) + shape)
    y = np.arange(B) % K
    return m, theta, X, y


@pytest.mark.parametrize("spec,shape,K", CASES)
def test_gradient_matches_central_differences(spec, shape, K):
    m, theta, X, y = _setup(spec, shape, K)
    loss, grad, _ = m.loss_grad(theta, X, y)
    h, eye = 1e-6, np.eye(m.n_params)
    fd = np.array([(m.loss_grad(theta + h * e, X, y)[0] - m.loss_grad(theta - h * e, X, y)[0]) / (2 * h)
                   for e in eye])
    assert np.isfinite(loss) and loss > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("spec,shape,K", CASES)
def test_stats_give_batch_and_per_sample_gradients(spec, shape, K):
    """(1/B) sum_n a_n^T g_n is the layer gradient, and a_n^T g_n is sample n's own gradient (conv: summed over t)."""
    m, theta, X, y = _setup(spec, shape, K)
    _, grad, stats = m.loss_grad(theta, X, y, stats=True)
    assert [s.name for s in stats] == [layer.name for layer in m.weighted]
    per_sample = [m.views(m.loss_grad(theta, X[n:n + 1], y[n:n + 1])[1]) for n in range(B)]
    for li, (st, gW) in enumerate(zip(stats, m.views(grad))):
        a = st.a if st.kind == "conv" else st.a[:, None, :]
        g = st.g if st.kind == "conv" else st.g[:, None, :]
        np.testing.assert_allclose(a[..., -1], 1.0)  # homogeneous coordinate
        outer = [sum(np.outer(a[n, t], g[n, t]) for t in range(a.shape[1])) for n in range(B)]
        np.testing.assert_allclose(sum(outer) / B, gW, rtol=1e-10, atol=1e-12)
        for n in range(B):
            np.testing.assert_allclose(outer[n], per_sample[n][li], rtol=1e-10, atol=1e-12)


def test_dense_factors_match_dense_covariance_and_fisher_orientation():
    m, theta, X, y = _setup("mlp:hidden=5-4", (6,), 3)
    _, _, stats = m.loss_grad(theta, X, y, stats=True)
    # Oracle for layer 1: inputs are the samples themselves; g_n is the bias row of sample n's gradient.
    a = np.hstack([X, np.ones((B, 1))])
    g = np.array([m.views(m.loss_grad(theta, X[n:n + 1], y[n:n + 1])[1])[0][-1] for n in range(B)])
    A_dense = sum(np.outer(a[n], a[n]) for n in range(B)) / B
    G_dense = sum(np.outer(g[n], g[n]) for n in range(B)) / B
    A, G = kfac_factors(stats[0])
    np.testing.assert_allclose(A, A_dense, rtol=1e-12)
    np.testing.assert_allclose(G, G_dense, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(foof_factor(stats[0]), A_dense, rtol=1e-12)
    # One sample: the Fisher block of every layer, vec(dW) vec(dW)^T (row-major), is exactly kron(A, G).
    _, g1, st1 = m.loss_grad(theta, X[:1], y[:1], stats=True)
    for dW, st in zip(m.views(g1), st1):
        np.testing.assert_allclose(np.outer(dW.ravel(), dW.ravel()), np.kron(*kfac_factors(st)),
                                   rtol=1e-10, atol=1e-14)


def _loop_unfold(x, k):
    """Patches with a trailing 1, location by location: (B, T, k*k*C+1)."""
    b, h, w, _ = x.shape
    return np.array([[np.append(x[n, r:r + k, q:q + k, :].ravel(), 1.0)
                      for r in range(h - k + 1) for q in range(w - k + 1)] for n in range(b)])


def test_conv_factors_match_kfc_from_loop_unfold():
    """KFC: Omega = (1/B) sum_n sum_t a_nt a_nt^T, Gamma = (1/(B T)) sum_n sum_t g_nt g_nt^T, both conv layers."""
    m, theta, X, y = _setup("cnn:conv=2-3,dense=4-5", (11, 11, 2), 3)
    _, _, stats = m.loss_grad(theta, X, y, stats=True)
    W1 = m.views(theta)[0]
    p1 = _loop_unfold(X, 3)
    h1 = np.maximum(p1 @ W1, 0).reshape(B, 9, 9, 2)[:, :8, :8, :]        # conv1 + ReLU, crop row/col 9
    h1 = h1.reshape(B, 4, 2, 4, 2, 2).max(axis=(2, 4))                   # 2x2 max-pool
    p2 = _loop_unfold(h1, 3)
    for st, p, T in [(stats[0], p1, 81), (stats[1], p2, 4)]:
        assert st.kind == "conv" and st.a.shape[:2] == (B, T) and st.g.shape[:2] == (B, T)
        np.testing.assert_allclose(st.a, p, rtol=1e-12, atol=1e-14)
        Om = sum(np.outer(p[n, t], p[n, t]) for n in range(B) for t in range(T)) / B
        Ga = sum(np.outer(st.g[n, t], st.g[n, t]) for n in range(B) for t in range(T)) / (B * T)
        A, G = kfac_factors(st)
        np.testing.assert_allclose(A, Om, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(G, Ga, rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(foof_factor(st), Om, rtol=1e-12, atol=1e-14)


def test_kronecker_inverse_with_pi_damping_matches_dense_inverse():
    m, theta, X, y = _setup("cnn:conv=2-3,dense=4-5", (11, 11, 2), 3)
    _, grad, stats = m.loss_grad(theta, X, y, stats=True)
    eps = 1e-2
    factors = [kfac_factors(st) for st in stats]
    blocks, foof_blocks = [], []
    for (A, G), dW in zip(factors, m.views(grad)):
        pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
        assert pi_correction(A, G) == pytest.approx(pi, rel=1e-12)
        Ad, Gd = damped(A, G, eps)
        np.testing.assert_allclose(Ad, A + pi * np.sqrt(eps) * np.eye(len(A)), rtol=1e-13)
        np.testing.assert_allclose(Gd, G + np.sqrt(eps) / pi * np.eye(len(G)), rtol=1e-13)
        dense = np.linalg.inv(np.kron(Ad, Gd)) @ dW.ravel()
        np.testing.assert_allclose(kfac_precondition(dW, *kfac_inverses(A, G, eps)).ravel(), dense,
                                   rtol=1e-8, atol=1e-12)
        blocks.append(dense)
        F = np.kron(A + eps * np.eye(len(A)), np.eye(dW.shape[1]))  # FOOF: G replaced by I, plain eps damping
        foof_blocks.append(np.linalg.solve(F, dW.ravel()))
    np.testing.assert_allclose(kfac_direction(m, grad, factors, eps), np.concatenate(blocks), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(foof_direction(m, grad, [f[0] for f in factors], eps), np.concatenate(foof_blocks),
                               rtol=1e-8, atol=1e-12)


def test_sample_labels_follow_the_softmax():
    r = np.random.default_rng(4)
    z = r.standard_normal((50, 4)) * 2
    u = r.random(50)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    expect = [int(np.searchsorted(np.cumsum(p[n]), u[n], side="right")) for n in range(50)]
    np.testing.assert_array_equal(sample_labels(np, z, u), expect)
    # Frequencies over many uniforms approach the probabilities of one row.
    uu = r.random(20000)
    freq = np.bincount(sample_labels(np, np.repeat(z[:1], 20000, 0), uu), minlength=4) / 20000
    np.testing.assert_allclose(freq, p[0], atol=0.015)


def test_ema_update():
    r = np.random.default_rng(3)
    old = [(r.random((3, 3)), r.random((2, 2))), (r.random((4, 4)), r.random((1, 1)))]
    new = [(r.random((3, 3)), r.random((2, 2))), (r.random((4, 4)), r.random((1, 1)))]
    out = ema(old, new, 0.25)
    for (o1, o2), (n1, n2), (u1, u2) in zip(old, new, out):
        np.testing.assert_allclose(u1, 0.25 * n1 + 0.75 * o1)
        np.testing.assert_allclose(u2, 0.25 * n2 + 0.75 * o2)
    assert ema(None, new, 0.5) is new
    np.testing.assert_allclose(ema(old, new, 1.0)[0][0], new[0][0])
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="alpha"):
            ema(old, new, bad)


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("eps", [0, 0.0, -1e-3, float("nan"), float("inf"), "x"])
def test_bad_damping_is_a_clear_error(eps):
    A, G = np.eye(3), np.eye(2)
    for call in (lambda: damped(A, G, eps), lambda: kfac_inverses(A, G, eps),
                 lambda: foof_direction(build_model("softmax", (2,), 2), np.zeros(6), [np.eye(3)], eps)):
        with pytest.raises(ConfigError) as e:
            call()
        _one_line(e, "eps", repr(eps))


def test_network_that_does_not_fit_its_input_is_a_clear_error():
    with pytest.raises(ConfigError) as e:
        build_model("cnn", (6, 6), 10)          # 6 -> conv 4 -> pool 2 -> conv 3x3 impossible
    _one_line(e, "conv2", "2x2x16")
    with pytest.raises(ConfigError) as e:
        build_model("cnn:kernel=5", (5, 5, 1), 10)
    _one_line(e, "pool1", "1x1x16")
    for spec, words in [("resnet", ["resnet", "softmax, mlp, cnn"]), ("mlp:hidden=0", ["hidden"]),
                        ("mlp:width=3", ["width", "hidden"]), ("cnn:conv=16", ["conv"])]:
        with pytest.raises(ConfigError) as e:
            build_model(spec, (28, 28), 10)
        _one_line(e, *words)
    m = build_model("mlp:hidden=3", (6,), 3)
    with pytest.raises(ConfigError) as e:
        m.loss_grad(m.init(0), np.zeros((2, 7)), np.zeros(2, dtype=int))
    _one_line(e, "(7,)", "(6,)")


def test_fedrco_cnn_shape_and_size():
    m = build_model("cnn", (28, 28), 10)
    # conv1 (9+1)*16, conv2 (9*16+1)*32, dense (11*11*32+1)*32, (32+1)*256, out (256+1)*10
    assert m.n_params == 160 + 4640 + 123936 + 8448 + 2570
    assert [layer.shape for layer in m.weighted] == [(10, 16), (145, 32), (3873, 32), (33, 256), (257, 10)]
    X, y = mnist.load_images("auto", n=8)
    theta = m.init(1)
    loss, grad, stats = m.loss_grad(theta, X, y, stats=True)
    assert m.logits(theta, X).shape == (8, 10) and grad.shape == theta.shape
    assert stats[0].a.shape == (8, 26 * 26, 10) and stats[1].a.shape == (8, 11 * 11, 145)
    assert np.log(10) / 3 < loss < 3 * np.log(10)


# --------------------------------------------------------------------------------------------- MNIST / IDX


def _idx(magic, shape, payload=None):
    head = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in shape)
    if payload is None:
        payload = (np.arange(int(np.prod(shape))) % 251).astype(np.uint8).tobytes()
    return head + payload


def test_idx_reader_roundtrip_gzip_and_raw(tmp_path):
    data = _idx(2051, (3, 4, 5))
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    expect = (np.arange(60) % 251).astype(np.uint8).reshape(3, 4, 5)
    for name in ("a", "a.gz"):
        np.testing.assert_array_equal(mnist.read_idx(tmp_path / name, 2051), expect)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a"), expect)  # any uint8 IDX without a magic


@pytest.mark.parametrize("case", ["wrong_magic", "not_idx", "truncated", "overlong", "short_header",
                                  "truncated_gzip"])
def test_malformed_idx_is_a_clear_error(tmp_path, case):
    good = _idx(2049, (10,))
    data, magic, words = {
        "wrong_magic": (good, 2051, ["expected 2051", "found 2049"]),
        "not_idx": (b"\x12\x34\x56\x78" + good[4:], None, ["not a uint8 IDX", "305419896"]),
        "truncated": (good[:-3], 2049, ["truncated", "expected 18 bytes", "found 15"]),
        "overlong": (good + b"\0", 2049, ["overlong", "expected 18", "found 19"]),
        "short_header": (good[:6], 2049, ["truncated", "8-byte header", "found 6"]),
        "truncated_gzip": (gzip.compress(_idx(2051, (50, 28, 28)))[:-40], 2051, ["gzip"]),
    }[case]
    path = tmp_path / "f.gz"
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        mnist.read_idx(path, magic)
    _one_line(e, str(path), *words)


needs_mnist = pytest.mark.data("mnist")  # the four IDX files: found, fetched, or a skip (tests/conftest.py)


@needs_mnist
def test_real_mnist_files():
    X, y = mnist.load_mnist("train", normalize="none")
    assert X.shape == (60000, 28, 28) and X.dtype == np.uint8 and y.shape == (60000,)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert X.mean() / 255 == pytest.approx(0.13066, abs=1e-5) and X.std() / 255 == pytest.approx(0.30811, abs=1e-5)
    Xt, yt = mnist.load_mnist("test", normalize="unit")
    assert Xt.shape == (10000, 28, 28) and 0 <= Xt.min() and Xt.max() <= 1 and set(yt.tolist()) == set(range(10))


@needs_mnist
def test_mnist_checksum_lookup_and_fetch(tmp_path, monkeypatch):
    src = mnist.find("t10k-labels-idx1-ubyte")
    # A well-formed IDX label file with other content fails the checksum, naming the file.
    (tmp_path / "mnist").mkdir()
    labels = mnist.read_idx(src, 2049).copy()
    labels[0] = (labels[0] + 1) % 10
    for name in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        os.symlink(mnist.find(name), tmp_path / "mnist" / f"{name}.gz")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(_idx(2049, (10000,), labels.tobytes()))
    monkeypatch.setenv("MPIFED_DATA", str(tmp_path))
    assert mnist.find("t10k-labels-idx1-ubyte") == tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    with pytest.raises(DataError) as e:
        mnist.load_mnist("test")
    _one_line(e, "checksum mismatch", "t10k-labels-idx1-ubyte")
    # fetch from a file:// mirror verifies the decompressed content (the train-images .gz is re-gzipped).
    dest = tmp_path / "cache"
    monkeypatch.setattr(mnist, "FILES", {k: v for k, v in mnist.FILES.items() if "t10k" in k})
    assert mnist.fetch_mnist(dest, src.parent.as_uri() + "/") == dest
    assert sorted(p.name for p in dest.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError) as e:
        mnist.fetch_mnist(tmp_path / "c2", (tmp_path / "nowhere").as_uri() + "/")
    _one_line(e, "could not download")


def test_synthetic_images():
    X, y = mnist.synthetic_images(600, seed=5)
    X2, y2 = mnist.synthetic_images(600, seed=5)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert X.shape == (600, 28, 28) and X.min() >= 0 and X.max() <= 1
    assert np.bincount(y).tolist() == [60] * 10
    # Same prototypes in another stream: a nearest-class-mean classifier transfers; the noise is real.
    Xt, yt = mnist.synthetic_images(600, seed=5, stream=1)
    assert not np.allclose(X[:10], Xt[:10])
    means = np.array([X[y == c].reshape(-1, 784).mean(0) for c in range(10)])
    pred = ((Xt.reshape(-1, 1, 784) - means) ** 2).sum(-1).argmin(1)
    assert 0.8 < (pred == yt).mean() < 0.99
    with pytest.raises(DataError):
        mnist.synthetic_images(0, seed=1)


def _cupy():
    from mpifed.backend import get_backend

    bk = get_backend("auto")
    return bk if bk.name == "cupy" else None


@pytest.mark.skipif(_cupy() is None, reason="cupy with a usable GPU is not available")
def test_cupy_backend_matches_numpy():
    bk = _cupy()
    m, theta, X, y = _setup("cnn:conv=2-3,dense=4-5", (11, 11, 2), 3)
    loss, grad, stats = m.loss_grad(theta, X, y, stats=True)
    lc, gc, sc = m.loss_grad(bk.asarray(theta), bk.asarray(X), bk.asarray(y), xp=bk.xp, stats=True)
    assert float(lc) == pytest.approx(float(loss), rel=1e-12)
    np.testing.assert_allclose(bk.to_host(gc), grad, rtol=1e-10, atol=1e-14)
    f_np = [kfac_factors(st) for st in stats]
    f_cp = [kfac_factors(st) for st in sc]
    np.testing.assert_allclose(bk.to_host(kfac_direction(m, gc, f_cp, 1e-2, bk.xp)),
                               kfac_direction(m, grad, f_np, 1e-2), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(bk.to_host(foof_direction(m, gc, [f[0] for f in f_cp], 1e-2, bk.xp)),
                               foof_direction(m, grad, [f[0] for f in f_np], 1e-2), rtol=1e-8, atol=1e-12)
