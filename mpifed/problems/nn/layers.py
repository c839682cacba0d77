"""Layers for the curvature-approximation models, batched over a client's samples, on any array module ``xp``.

Layout: activations are channel-last, images ``(B, H, W, C)``. A block of ``n`` clients with their own
weights runs as one batch: ``W`` gets a leading client axis ``(n, d_in + 1, d_out)`` and the batch holds
client 0's samples, then client 1's, ... (``B = n * b``); only the affine products see the client axis. A layer with weights holds one matrix
``W`` of shape ``(d_in + 1, d_out)`` whose last row is the bias, so its pre-activation is ``s = a W`` with
the homogeneous input ``a = [x, 1]``. A convolution unfolds its input into patches (im2col; the ``[[A]]``
expansion of Grosse & Martens 2016, "A Kronecker-factored approximate Fisher matrix for convolution layers",
sec. 2.2/3.1) and multiplies them by ``W``, so K-FAC's conv factors come out of the same patches.

Backward passes propagate the gradient of the *sum* of the per-sample losses, so the pre-activation
gradient a layer sees is the per-sample ``g_n = d l_n / d s_n`` (per spatial location for a convolution);
the model divides weight gradients by ``B`` once at the end. Each weighted layer's backward returns
``(dx, dW, (a, g))``: the statistics FOOF and K-FAC need (``mpifed.problems.nn.curvature``); ``dx`` is None
when asked not to compute it (``need_dx=False``: the first weighted layer, whose input is the data).
"""

from __future__ import annotations

from dataclasses import dataclass


def _ones_column(xp, x):
    return xp.concatenate([x, xp.ones(x.shape[:-1] + (1,), dtype=x.dtype)], axis=-1)


def affine(a, W):
    """``a W``; with per-client weights ``W`` ``(n, p, q)``, the rows of ``a`` ``(N, ..., p)`` are split into
    ``n`` equal consecutive groups (client i's samples) and each group multiplies its own ``W[i]``."""
    if W.ndim == 2:
        return a @ W
    n = W.shape[0]
    return (a.reshape(n, -1, a.shape[-1]) @ W).reshape(a.shape[:-1] + (W.shape[-1],))


def input_grad(g, W):
    """``g W[:-1]^T`` (the bias row does not reach the input), per client like :func:`affine`."""
    if W.ndim == 2:
        return g @ W[:-1].T
    n = W.shape[0]
    return (g.reshape(n, -1, g.shape[-1]) @ W[:, :-1].transpose(0, 2, 1)).reshape(g.shape[:-1] + (W.shape[1] - 1,))


def weight_grad(a, g, W):
    """``sum_n a_n^T g_n`` over all rows (and locations): ``(p, q)``, or ``(n, p, q)`` per client."""
    if W.ndim == 2:
        return a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    n = W.shape[0]
    return a.reshape(n, -1, a.shape[-1]).transpose(0, 2, 1) @ g.reshape(n, -1, g.shape[-1])


def im2col(xp, x, k: int, ones: bool = False):
    """Patches of a ``k x k`` stride-1 unpadded convolution: ``(B, H, W, C) -> (B, Ho*Wo, k*k*C)``.

    Patch entries are ordered (row offset i, column offset j, channel c), i.e. ``x[n, r:r+k, q:q+k, :].ravel()``
    is patch ``t = r*Wo + q`` of sample ``n``. The loop runs over the ``k*k`` offsets, never over samples.
    ``ones``: one more column of 1s (the homogeneous patch ``[[A]]``), written in the same pass.
    """
    b, h, w, c = x.shape
    ho, wo = h - k + 1, w - k + 1
    cols = xp.empty((b, ho, wo, k * k * c + ones), dtype=x.dtype)
    for idx in range(k * k):
        i, j = divmod(idx, k)
        cols[..., idx * c:(idx + 1) * c] = x[:, i:i + ho, j:j + wo, :]
    if ones:
        cols[..., -1] = 1.0
    return cols.reshape(b, ho * wo, k * k * c + ones)


def col2im(xp, d, shape, k: int):
    """Adjoint of :func:`im2col`: scatter-add patch gradients ``(B, T, k*k*C)`` back to ``shape``."""
    b, h, w, c = shape
    ho, wo = h - k + 1, w - k + 1
    d = d.reshape(b, ho, wo, k * k, c)
    dx = xp.zeros(shape, dtype=d.dtype)
    for idx in range(k * k):
        i, j = divmod(idx, k)
        dx[:, i:i + ho, j:j + wo, :] += d[:, :, :, idx, :]
    return dx


@dataclass(frozen=True)
class Dense:
    """Affine layer ``s = [x, 1] W`` on flat inputs ``(B, d_in)``; ``W`` is ``(d_in + 1, d_out)``."""

    name: str
    d_in: int
    d_out: int
    kind = "dense"

    @property
    def shape(self):
        return (self.d_in + 1, self.d_out)

    def out_shape(self, in_shape):
        return (self.d_out,)

    def forward(self, xp, W, x):
        a = _ones_column(xp, x)
        return affine(a, W), a

    def backward(self, xp, W, a, g, need_dx: bool = True):
        return (input_grad(g, W) if need_dx else None), weight_grad(a, g, W), (a, g)


@dataclass(frozen=True)
class Conv2d:
    """``k x k`` convolution, stride 1, no padding, as im2col + matrix product; ``W`` is ``(k*k*c_in + 1, c_out)``."""

    name: str
    c_in: int
    c_out: int
    k: int = 3
    kind = "conv"

    @property
    def shape(self):
        return (self.k * self.k * self.c_in + 1, self.c_out)

    def out_shape(self, in_shape):
        h, w, _ = in_shape
        return (h - self.k + 1, w - self.k + 1, self.c_out)

    def forward(self, xp, W, x):
        b, h, w, _ = x.shape
        a = im2col(xp, x, self.k, ones=True)                  # (B, T, k*k*c_in + 1)
        s = affine(a, W)                                      # (B, T, c_out)
        return s.reshape(b, h - self.k + 1, w - self.k + 1, self.c_out), (a, x.shape)

    def backward(self, xp, W, cache, ds, need_dx: bool = True):
        a, in_shape = cache
        b = ds.shape[0]
        g = ds.reshape(b, -1, self.c_out)                     # per sample and location
        dW = weight_grad(a, g, W)
        dx = col2im(xp, input_grad(g, W), in_shape, self.k) if need_dx else None
        return dx, dW, (a, g)


@dataclass(frozen=True)
class MaxPool2d:
    """Non-overlapping ``2 x 2`` max pooling; odd trailing rows/columns are dropped (floor, as in PyTorch)."""

    name: str
    p: int = 2
    kind = "pool"

    def out_shape(self, in_shape):
        h, w, c = in_shape
        return (h // self.p, w // self.p, c)

    def _views(self, x):
        """The ``p*p`` strided views of the window entries, in row-major window order (i, j)."""
        p, ho, wo = self.p, x.shape[1] // self.p, x.shape[2] // self.p
        return [x[:, i:ho * p:p, j:wo * p:p, :] for i in range(p) for j in range(p)]

    def forward(self, xp, W, x):
        # The maximum of the strided views: no copy of the input into window order.
        views = self._views(x)
        out = views[0].copy()
        for v in views[1:]:
            xp.maximum(out, v, out=out)
        return out, (x, out)

    def backward(self, xp, W, cache, dout):
        x, out = cache
        dx = xp.zeros(x.shape, dtype=dout.dtype)
        p, ho, wo = self.p, x.shape[1] // self.p, x.shape[2] // self.p
        taken = None
        for idx, v in enumerate(self._views(x)):
            # First maximum wins on ties (a NaN counts as the maximum, as argmax has it), so the gradient goes to
            # exactly one input of each window.
            hit = (v == out) | (v != v)
            if taken is not None:
                hit &= ~taken
            i, j = divmod(idx, p)
            dx[:, i:ho * p:p, j:wo * p:p, :] = hit * dout
            taken = hit if taken is None else taken | hit
        return dx, None, None


@dataclass(frozen=True)
class ReLU:
    name: str
    kind = "relu"

    def out_shape(self, in_shape):
        return in_shape

    def forward(self, xp, W, x):
        return xp.maximum(x, 0), x > 0

    def backward(self, xp, W, mask, dout):
        return dout * mask, None, None


@dataclass(frozen=True)
class Flatten:
    name: str
    kind = "flatten"

    def out_shape(self, in_shape):
        n = 1
        for s in in_shape:
            n *= s
        return (n,)

    def forward(self, xp, W, x):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, xp, W, shape, dout):
        return dout.reshape(shape), None, None


def softmax_cross_entropy(xp, logits, y):
    """Per-sample losses ``l_n = -log softmax(z_n)[y_n]`` and ``d l_n / d z_n = softmax(z_n) - e_{y_n}``.

    Parameters
    ----------
    logits : (B, K) array
    y : (B,) integer labels in ``[0, K)``

    Returns
    -------
    (losses (B,), dlogits (B, K))
    """
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    rows = xp.arange(logits.shape[0])
    g = xp.exp(logp)
    g[rows, y] -= 1.0
    return -logp[rows, y], g
