"""LMO-momentum: a stochastic momentum method with LMO steps (Muon / Scion / Gluon style; the baseline of
Khirirat, Sadiev, Demidovich & Richtarik, "Better LMO-based Momentum Methods with Second-Order Information",
arXiv:2512.13227, and Riabinin et al., Gluon, arXiv:2505.13416):

    m^0 = g^0,   m^k = beta m^{k-1} + (1 - beta) g^k   (k >= 1),   x^{k+1} = x^k + t_k LMO(m^k),

with g^k = (1/n) sum_i grad f_i(x^k) (exact on the logistic problem, mini-batch 0 of each client on a network),
LMO over the unit ball of ``--lmo-norm`` (l2, linf, or per-layer spectral on a network: :mod:`.oracle`), and
t_k = t / (1 + c k) (``--radius`` t, ``--step-decay`` c). The sheet's alpha is 1 - beta; beta = 0 is LMO-GD.

Federated form: one exchange per round. The server holds m; x^k goes down (d floats), each client sends
c_i = grad f_i(x^k) at round 0 and c_i = (1 - beta) grad f_i(x^k) after (d floats), and the server sets
m = beta m + mean_i c_i. :mod:`.hcm` adds the Hessian correction on the same message.

Checked: the abstract and introduction of arXiv:2512.13227v1 (a stored copy; the algorithm box was not read);
the update is the sheet's reconstruction, which α = 1 - beta maps onto.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ...network import flops as fl
from ..base import Uplink, bits_for
from .oracle import layer_slices, lmo
from .oracles import glm_hvp, network_gradients, network_hvp

DEFAULT_RADIUS = 0.1
DEFAULT_BETA = 0.9


@dataclass(frozen=True)
class Params:
    """t: the step radius; beta: the momentum weight (alpha = 1 - beta); norm: the LMO's ball; decay: c of
    t_k = t / (1 + c k); network: mini-batch clients; layers: the spectral norm's layer slices."""

    t: float = DEFAULT_RADIUS
    beta: float = DEFAULT_BETA
    norm: str = "l2"
    decay: float = 0.0
    network: bool = False
    layers: tuple = ()
    float_bits: int = 32
    hessian_corrected = False
    uses = ("radius", "momentum", "lmo_norm", "step_decay", "batch_size")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        if opts.batch_size is not None and not opts.network:
            raise ConfigError(f"--batch-size applies to networks only (give --model); {opts.algorithm} on the "
                              f"{opts.problem} problem uses exact gradients")
        norm = opts.lmo_norm or "l2"  # spectral without a network is refused by the configuration
        layers = layer_slices(fed.block.model) if opts.network else ()
        return cls(opts.radius if opts.radius is not None else DEFAULT_RADIUS,
                   opts.momentum if opts.momentum is not None else DEFAULT_BETA, norm,
                   opts.step_decay or 0.0, opts.network, layers, opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    m: np.ndarray | None
    k: int


def client_init(p, block, x0, streams):
    """The client state is x^{k-1}, the previous broadcast (None before round 0)."""
    return None, None


def server_init(p, agg, x0):
    return ServerState(None, 0)


def client_step(p, block, previous, x, streams):
    """c_i = g_i at round 0, else (1 - beta) g_i, plus beta H_i(x^k)(x^k - x^{k-1}) with the Hessian correction."""
    if p.network:
        loss, grad, batch = network_gradients(block, x, streams)
    else:
        loss, grad, curvature = block.derivatives_and_coefficients(x)
    if previous is None:
        c = grad
    else:
        c = (1.0 - p.beta) * grad
        if p.hessian_corrected:
            d = x - previous
            hd = network_hvp(block, x, grad, batch, d) if p.network else glm_hvp(block, curvature, d)
            c = c + p.beta * hd
    values, index = bits_for(block.n, block.d, p.float_bits)
    return x.copy(), Uplink(loss, grad, values, index, {"c": c})


def client_metrics(p, block, previous, x, streams):
    """The final row: the metrics at x^R only (nothing is sent)."""
    loss, grad = (network_gradients(block, x, streams) if p.network else block.derivatives(x, hessian=False))[:2]
    return Uplink(loss, grad, np.zeros(block.n), np.zeros(block.n))


def next_momentum(p, state: ServerState, agg) -> np.ndarray:
    """m^k = beta m^{k-1} + mean_i c_i (m^0 = mean_i c_i = g^0)."""
    mean = agg.mean("c")
    return mean if state.m is None else p.beta * state.m + mean


def server_step(p, state: ServerState, x, agg):
    m = next_momentum(p, state, agg)
    t = p.t / (1.0 + p.decay * state.k)
    return ServerState(m, state.k + 1), x + t * lmo(m, p.norm, p.layers), len(x) * p.float_bits


def lmo_flops(norm: str, s) -> float:
    """LMO(m) as :func:`.oracle.lmo` computes it: l2, ||m|| (2d) and -m / ||m|| (d); linf, -sign(m) (d); spectral,
    per weighted layer's (d_in + 1) x d_out matrix (M, N its longer and shorter side), a thin SVD
    (:func:`~mpifed.network.flops.thin_svd`), U V^T (2 M N^2) and the sign (M N)."""
    if norm == "l2":
        return 3.0 * s.d
    if norm == "linf":
        return float(s.d)
    return float(sum(fl.thin_svd(din, dout) + 2.0 * max(din, dout) * min(din, dout) ** 2 + din * dout
                     for _, din, dout in s.layers))


def hvp_flops(p: Params, s):
    """H_i(x^k) d^k (:mod:`.oracles`): the GLM's exact product (:func:`~mpifed.network.flops.glm_hvp`, O(nnz)); on a
    network a forward difference, one more gradient on the same mini-batch
    (:func:`~mpifed.network.flops.network_gradient`) plus ||v|| and ||x|| (4d), x + eps v (2d) and
    (moved - g) / eps (2d)."""
    return fl.network_gradient(s) + 8.0 * s.d if p.network else fl.glm_hvp(s)


def flops(p: Params, s) -> fl.Work:
    """Client (a round after the first; round 0 sends g_i as it is): g_i (the logistic f_i and grad f_i, or a
    network's mini-batch gradient), c_i = (1 - beta) g_i (d); with the Hessian correction also d^k = x^k - x^{k-1}
    (d), H_i d^k (:func:`hvp_flops`) and c_i += beta H_i d^k (2d). Server: the sum of the c_i and the mean (d),
    m = beta m + mean (2d), LMO(m) (:func:`lmo_flops`) and x + t_k s (2d)."""
    client = (fl.network_gradient(s) if p.network else fl.loss_grad(s)) + s.d
    if p.hessian_corrected:
        client = client + 3.0 * s.d + hvp_flops(p, s)
    server = fl.aggregate(s, s.d) + 5.0 * s.d + lmo_flops(p.norm, s)
    return fl.Work(fl.per_client(client, s), server)
