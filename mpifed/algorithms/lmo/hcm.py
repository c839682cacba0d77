"""LMO-HCM: LMO steps with a Hessian-corrected momentum (Khirirat, Sadiev, Demidovich & Richtarik, "Better
LMO-based Momentum Methods with Second-Order Information", arXiv:2512.13227, variant 1 with the Hessian at x^k;
the correction is Tran & Cutkosky's HCM, arXiv:2103.03265):

    d^k = x^k - x^{k-1},   m^k = beta (m^{k-1} + H(x^k) d^k) + (1 - beta) g^k   (m^0 = g^0),
    x^{k+1} = x^k + t_k LMO(m^k),

with one sample serving both oracles (the same mini-batch for the gradient and the Hessian-vector product on a
network). The sheet's alpha is 1 - beta. On a quadratic with exact oracles, m^{k-1} = grad f(x^{k-1}) gives
m^{k-1} + H d^k = grad f(x^k), so m^k = grad f(x^k) at every k: the correction removes momentum's lag.

Federated form: still one exchange per round, d floats each way. Each client keeps the previous broadcast
x^{k-1} and folds its HVP into the one message c_i = beta H_i(x^k) d^k + (1 - beta) grad f_i(x^k); the server
sets m = beta m + mean_i c_i. HVPs: exact for the logistic GLM, a finite difference of gradients on a network
(:mod:`.oracles`).

Checked: the abstract and introduction of arXiv:2512.13227v1 (the stored copy; the algorithm box was not read):
they confirm HCM inside the LMO framework and the O(K^{-1/3}) rate; the update is the sheet's reconstruction.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...network import flops as fl
from . import momentum
from .momentum import (ServerState, client_init, client_metrics, client_step, next_momentum,  # noqa: F401
                       server_init, server_step)
from .momentum import flops as momentum_flops


@dataclass(frozen=True)
class Params(momentum.Params):
    """As :class:`.momentum.Params`; the clients add the Hessian correction to their message."""

    hessian_corrected = True


def flops(p: Params, s) -> fl.Work:
    """:func:`.momentum.flops` with ``p.hessian_corrected``: the client adds d^k = x^k - x^{k-1} (d), the HVP (the
    GLM's exact O(nnz) product, or one more network gradient on the same mini-batch) and beta H_i d^k to c_i (2d)."""
    return momentum_flops(p, s)
