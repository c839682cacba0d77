"""Softmax regression, an MLP and the small CNN of FedRCO, with parameters as one flat vector (float64, or float32).

Model specs (string, ``name[:key=value,...]``; lists are ``-``-separated):

- ``softmax``: flatten -> dense(K) -> softmax.
- ``mlp:hidden=200-200``: flatten -> [dense(h) -> ReLU]* -> dense(K) -> softmax.
- ``cnn`` (options ``conv=16-32``, ``dense=32-256``, ``kernel=3``): the FedRCO model (FedRCO, appendix E.1
  "Model Structure"): conv 16 3x3 -> ReLU -> max-pool 2x2 -> conv 32 3x3 -> ReLU -> flatten -> dense 32 ->
  ReLU -> dense 256 -> ReLU -> dense(K) -> softmax; ReLU on all hidden layers, no batch normalisation.
  Convolutions are stride 1 without padding (the paper does not say; this is the unfold default).
  On 28x28x1 inputs: 26x26x16 -> 13x13x16 -> 11x11x32 -> 3872 -> 32 -> 256 -> K (139,754 parameters for K=10).

The model is a pure description (layer list and shapes); the parameters ``theta`` are passed in, so a
federated method can average and communicate one vector. :meth:`Model.views` gives per-layer ``(d_in+1,
d_out)`` views of ``theta`` (weights, bias in the last row). The loss is the mean softmax cross-entropy
over the batch; :meth:`Model.loss_grad` also returns, per weighted layer, the statistics ``(a, g)`` that
``mpifed.problems.nn.curvature`` turns into FOOF / K-FAC factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpifed.errors import ConfigError

from .layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU, softmax_cross_entropy

MODELS = ("softmax", "mlp", "cnn")
CHUNK_BYTES = 8 << 20  # a chunk of clients' largest buffer: about the last-level cache share of one core
_OPTIONS = {"softmax": {}, "mlp": {"hidden": "200"}, "cnn": {"conv": "16-32", "dense": "32-256", "kernel": "3"}}


@dataclass(frozen=True)
class LayerStats:
    """Curvature statistics of one weighted layer for one batch.

    ``a``: homogeneous layer inputs, ``(B, d_in+1)`` (dense) or unfolded patches ``(B, T, d_in+1)`` (conv);
    ``g``: per-sample loss gradients w.r.t. the pre-activations, ``(B, d_out)`` or ``(B, T, d_out)``.
    """

    name: str
    kind: str
    a: object
    g: object


def _ints(model, key, text):
    try:
        vals = tuple(int(v) for v in str(text).split("-"))
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise ConfigError(f"model {model!r}: option {key}={text!r} must be positive integers joined by '-'")
    return vals


def parse_spec(spec: str) -> tuple[str, dict]:
    """``'mlp:hidden=200-200'`` -> ``('mlp', {'hidden': (200, 200)})`` with the defaults filled in."""
    name, _, rest = str(spec).strip().partition(":")
    if name not in _OPTIONS:
        raise ConfigError(f"unknown model {name!r} in spec {spec!r}; valid: {', '.join(MODELS)}")
    opts = dict(_OPTIONS[name])
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        if key.strip() not in opts or not eq:
            valid = ", ".join(f"{k}=..." for k in _OPTIONS[name]) or "none"
            raise ConfigError(f"model {name!r}: bad option {item!r}; valid options: {valid}")
        opts[key.strip()] = val.strip()
    return name, {k: _ints(name, k, v) for k, v in opts.items()}


def _floats(layer, in_shape) -> int:
    """Floats per sample of a layer's output, or of its unfolded patches for a convolution."""
    out = layer.out_shape(in_shape)
    if layer.kind == "conv":
        return int(np.prod(out[:-1])) * layer.shape[0]
    return int(np.prod(out))


class Model:
    """A sequential network with shape-checked layers and a flat parameter vector.

    Parameters
    ----------
    spec : str
        Model spec, see the module docstring.
    input_shape : tuple
        One sample's shape: ``(H, W)`` / ``(H, W, C)`` for images, ``(d,)`` for vectors.
    n_classes : int
        Output classes ``K``.
    """

    def __init__(self, spec: str, input_shape, n_classes: int):
        self.spec = str(spec)
        self.n_classes = int(n_classes)
        if self.n_classes < 2:
            raise ConfigError(f"model {spec!r}: n_classes must be >= 2, got {n_classes}")
        name, opts = parse_spec(spec)
        shape = tuple(int(s) for s in input_shape)
        if name == "cnn" and len(shape) == 2:
            shape = shape + (1,)
        self.input_shape = shape
        self.layers = self._build(name, opts, shape)
        self.shapes = []          # input shape of each layer (fit checked by _build)
        for layer in self.layers:
            self.shapes.append(shape)
            shape = layer.out_shape(shape)
        self.weighted = [layer for layer in self.layers if hasattr(layer, "shape")]
        sizes = [r * c for r, c in (layer.shape for layer in self.weighted)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.n_params = int(self.offsets[-1])
        # per sample, the floats of the largest buffer a pass holds: an activation or a convolution's patches
        self.sample_floats = max(_floats(layer, shape) for layer, shape in zip(self.layers, self.shapes))

    def _build(self, name, opts, shape):
        K = self.n_classes
        if name == "cnn":
            if len(shape) != 3:
                raise ConfigError(f"model {self.spec!r}: needs image inputs (H, W) or (H, W, C), got shape {shape}")
            if len(opts["conv"]) != 2 or len(opts["kernel"]) != 1:
                raise ConfigError(f"model {self.spec!r}: conv takes 2 channel counts and kernel one size, "
                                  f"got conv={opts['conv']} kernel={opts['kernel']}")
            (c1, c2), k = opts["conv"], opts["kernel"][0]
            layers = [Conv2d("conv1", shape[2], c1, k), ReLU("relu_c1"), MaxPool2d("pool1"),
                      Conv2d("conv2", c1, c2, k), ReLU("relu_c2"), Flatten("flatten")]
            hidden = opts["dense"]
        else:
            layers, hidden = [Flatten("flatten")], opts.get("hidden", ())
        # Dense widths are known only after the shape walk; fill them in order.
        d = int(np.prod(self._walk(layers, shape)))
        for i, h in enumerate(hidden, 1):
            layers += [Dense(f"dense{i}", d, h), ReLU(f"relu{i}")]
            d = h
        return layers + [Dense("out", d, K)]

    def _walk(self, layers, shape):
        for layer in layers:
            prev, shape = shape, layer.out_shape(shape)
            if min(shape) < 1:
                raise ConfigError(f"model {self.spec!r}: layer {layer.name} does not fit its input of shape "
                                  f"{'x'.join(map(str, prev))} (output would be {'x'.join(map(str, shape))})")
        return shape

    def batch_rows(self, b: int) -> list:
        """Per weighted layer, the statistic rows of a batch of ``b`` samples: ``b``, or ``b`` x output locations
        for a convolution (the rows of its unfolded patches); the row count of FOOF / K-FAC factors."""
        return [b * int(np.prod(layer.out_shape(shape)[:-1])) if layer.kind == "conv" else b
                for layer, shape in zip(self.layers, self.shapes) if hasattr(layer, "shape")]

    def describe(self) -> str:
        return " -> ".join(f"{layer.name}{list(layer.shape) if hasattr(layer, 'shape') else ''}"
                           for layer in self.layers)

    def init(self, seed, xp=np):
        """He-normal weights ``N(0, 2/fan_in)``, zero biases, from ``np.random.default_rng(seed)``; float64."""
        rng = np.random.default_rng(seed)
        theta = np.zeros(self.n_params)
        for layer, view in zip(self.weighted, self.views(theta)):
            fan_in = layer.shape[0] - 1
            view[:-1] = rng.standard_normal((fan_in, layer.shape[1])) * np.sqrt(2.0 / fan_in)
        return xp.asarray(theta)

    def views(self, theta):
        """Per weighted layer, the ``(d_in+1, d_out)`` view of ``theta`` (writes go through to ``theta``);
        for a block of clients' parameters ``theta`` ``(n, P)``, ``(n, d_in+1, d_out)`` views."""
        lead = theta.shape[:-1]
        return [theta[..., lo:hi].reshape(lead + layer.shape)
                for layer, lo, hi in zip(self.weighted, self.offsets[:-1], self.offsets[1:])]

    def flatten(self, layers, xp=np):
        """The inverse of :meth:`views`: per-layer ``(..., d_in+1, d_out)`` arrays -> ``(..., P)``."""
        lead = layers[0].shape[:-2]
        return xp.concatenate([v.reshape(lead + (-1,)) for v in layers], axis=-1)

    def _check_input(self, X):
        if tuple(X.shape[1:]) != self.input_shape and not (
                len(self.input_shape) == 3 and self.input_shape[2] == 1 and tuple(X.shape[1:]) == self.input_shape[:2]):
            raise ConfigError(f"model {self.spec!r}: input batch has sample shape {tuple(X.shape[1:])}, "
                              f"expected {self.input_shape}")
        return X.reshape((X.shape[0],) + self.input_shape)

    def _forward(self, theta, X, xp):
        x, caches = self._check_input(X), []
        Ws = iter(self.views(theta))
        for layer in self.layers:
            W = next(Ws) if hasattr(layer, "shape") else None
            x, cache = layer.forward(xp, W, x)
            caches.append((W, cache))
        return x, caches

    def logits(self, theta, X, xp=np):
        """Class scores ``(B, K)``; per client ``(n, b, K)`` when ``theta`` is ``(n, P)`` and ``X`` ``(n, b, ...)``."""
        if theta.ndim == 2:
            n, b = X.shape[:2]
            return self._forward(theta, X.reshape((n * b,) + X.shape[2:]), xp)[0].reshape(n, b, -1)
        return self._forward(theta, X, xp)[0]

    def clients_per_chunk(self, b: int, itemsize: int = 8) -> int:
        """Clients of ``b`` samples each whose largest layer buffer (a convolution's patches) fits in
        :data:`CHUNK_BYTES`: a block runs through the model that many clients at a time, so its activations
        stay in cache instead of streaming from memory (at least one client)."""
        return max(1, CHUNK_BYTES // max(1, b * self.sample_floats * itemsize))

    def loss_grad(self, theta, X, y, xp=np, stats: bool = False):
        """Mean cross-entropy over the batch, its gradient (flat, like ``theta``) and optionally the layer stats.

        With a block of clients, ``theta`` ``(n, P)``, ``X`` ``(n, b, ...)`` and ``y`` ``(n, b)``: each client's
        mean loss over its ``b`` samples ``(n,)`` and gradient ``(n, P)``, in chunks of
        :meth:`clients_per_chunk` clients (each client's products are the same matrix products in any chunk).

        Returns
        -------
        (loss, grad, list of LayerStats or None)
            ``grad`` of the weighted layer with stats ``(a, g)`` is ``(1/B) sum_n a_n^T g_n``
            (conv: also summed over locations). Per client, the stats are ``(n, b, ...)``.
        """
        step = self.clients_per_chunk(X.shape[1], X.dtype.itemsize) if theta.ndim == 2 else 0
        if step and len(theta) > step:
            parts = [self._loss_grad(theta[lo:lo + step], X[lo:lo + step], y[lo:lo + step], xp, stats)
                     for lo in range(0, len(theta), step)]
            loss = xp.concatenate([q[0] for q in parts])
            grad = xp.concatenate([q[1] for q in parts])
            st = None
            if stats:
                st = [LayerStats(s.name, s.kind, xp.concatenate([q[2][i].a for q in parts]),
                                 xp.concatenate([q[2][i].g for q in parts])) for i, s in enumerate(parts[0][2])]
            return loss, grad, st
        return self._loss_grad(theta, X, y, xp, stats)

    def _loss_grad(self, theta, X, y, xp, stats):
        per_client = theta.ndim == 2
        if per_client:
            n, b = X.shape[:2]
            X, y = X.reshape((n * b,) + X.shape[2:]), y.reshape(-1)
        z, caches = self._forward(theta, X, xp)
        losses, d = softmax_cross_entropy(xp, z, y)
        B = b if per_client else z.shape[0]
        grads, out = [], []
        first = self.layers.index(self.weighted[0])  # nothing below it has weights: its input gradient is unused
        for i in range(len(self.layers) - 1, first - 1, -1):
            layer, (W, cache) = self.layers[i], caches[i]
            if i == first:
                d, dW, st = layer.backward(xp, W, cache, d, need_dx=False)
            else:
                d, dW, st = layer.backward(xp, W, cache, d)
            if dW is not None:
                grads.append(dW.reshape(dW.shape[:-2] + (-1,)) / B)
                if stats:
                    a, g = st
                    if per_client:
                        a, g = a.reshape((n, b) + a.shape[1:]), g.reshape((n, b) + g.shape[1:])
                    out.append(LayerStats(layer.name, layer.kind, a, g))
        grad = xp.concatenate(grads[::-1], axis=-1)
        loss = losses.reshape(n, b).mean(axis=1) if per_client else losses.mean()
        return loss, grad, (out[::-1] if stats else None)


def build_model(spec: str, input_shape, n_classes: int) -> Model:
    """The model of ``spec`` for samples of ``input_shape`` and ``n_classes`` classes (shape-checked)."""
    return Model(spec, input_shape, n_classes)
