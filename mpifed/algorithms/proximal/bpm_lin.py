"""bpm-lin, the linearised broximal step (the LMO step of Gruntkowska and Richtarik, arXiv:2510.00823; with the l2
ball it is normalised gradient descent, the linearisation of BPM in arXiv:2502.02002)::

    x^{k+1} = argmin_{||z - x^k|| <= t_k} P(x^k) + <grad P(x^k), z - x^k> = x^k + t_k LMO(grad P(x^k)),
    LMO(g) = argmin_{||d|| <= 1} <g, d>:  -g/||g||_2 (l2),  -sign(g) (linf),  -sign(g_i) e_i, i = argmax abs(g_i) (l1),

with t_k = t / (1 + c k) (``--step-decay`` c; c = 0 keeps the radius, and the iterates then circle x* at a
distance of order t). One exchange per round: d floats up (grad f_i), d floats down.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...network import flops as fl
from ..base import Uplink, bits_for
from . import balls


@dataclass(frozen=True)
class Params:
    """t: the radius; norm: l2, linf or l1; decay: c of t_k = t / (1 + c k)."""

    t: float = 1.0
    norm: str = "l2"
    decay: float = 0.0
    float_bits: int = 32
    uses = ("radius", "ball_norm", "step_decay")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(opts.radius or 1.0, opts.ball_norm or "l2", opts.step_decay or 0.0, opts.float_bits)


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return 0  # the round k, for t_k


def client_step(p: Params, block, state, x, streams):
    loss, grad, _ = block.derivatives(x, hessian=False)
    values, index = bits_for(block.n, block.d, p.float_bits)
    return state, Uplink(loss, grad, values, index)


def server_step(p: Params, k: int, x, agg):
    t_k = p.t / (1.0 + p.decay * k)
    return k + 1, x + t_k * balls.lmo(agg.grad / agg.n, p.norm), len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Client: f_i and grad f_i; server: the sum and the mean (d), the LMO (l2: the norm and -g/||g||, 3d; linf:
    -sign(g), d; l1: the argmax of abs(g), d comparisons) and x + t_k LMO (2d)."""
    lmo = {"l2": 3.0, "linf": 1.0, "l1": 1.0}[p.norm] * s.d
    return fl.Work(fl.loss_grad(s), fl.aggregate(s, s.d) + s.d + lmo + 2.0 * s.d)
