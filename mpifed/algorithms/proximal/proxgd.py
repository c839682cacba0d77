"""Proximal gradient descent, distributed (ISTA; Beck and Teboulle 2009, eq. (1.4) with a constant step;
Beck, "First-Order Methods in Optimization", 2017, Sec. 10.2):

    x^{k+1} = prox_{gamma lam1 ||.||_1}(x^k - gamma grad f(x^k)),   grad f = (1/n) sum_i grad f_i,

the prox being soft-thresholding (:func:`mpifed.problems.l1.soft_threshold`), taken at the server after the
gradients are summed. Default gamma = 1/L, L = lam + c lambda_max((1/n) sum_i A_i^T A_i / m_i) (c = sup l'') as in
:mod:`~mpifed.algorithms.first_order.gd` (whose setup and client step it shares). Exchanges: one per round,
each client sending its gradient (d floats) and receiving x^{k+1} (d floats). With lam1 = 0 it is GD, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...network import flops as fl
from ...problems import l1
from ..first_order import gd
from ..first_order.gd import client_init, client_step, server_init  # noqa: F401  (GD's setup and client step)


@dataclass(frozen=True)
class Params(gd.Params):
    """gamma: the step (None: 1/L at setup); lam: for L; lam1: the L1 weight."""

    lam1: float = 0.0

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(gamma=opts.step_size, lam=opts.lam, float_bits=opts.float_bits,
                   curvature=fed.block.curvature_bound, lam1=opts.l1)


def server_step(p: Params, state: gd.ServerState, x, agg):
    """x^{k+1} = prox_{gamma R}(x^k - gamma grad f(x^k))."""
    return state, l1.prox(x - state.gamma * agg.grad / agg.n, state.gamma, p.lam1), len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """GD's round (:func:`.gd.flops`: f_i and grad f_i; the sum and x - gamma g) and the server's soft-threshold
    (3 d, when lam1 > 0)."""
    w = gd.flops(p, s)
    return fl.Work(w.step, w.server + fl.soft_threshold(s.d, p.lam1))
