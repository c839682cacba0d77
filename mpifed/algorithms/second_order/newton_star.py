"""NEWTON-STAR (NS), Newton's method with the Hessian at the optimum (Islamov, Qian, Richtarik, ICML 2021, eq. (12)).

    x^{k+1} = x^k - (grad^2 P(x*))^{-1} grad P(x^k) = x^k - (H(x*) + lam I)^{-1} grad P(x^k)

An oracle baseline: it needs x*. The driver hands it the x* of its reference Newton solve
(``reference_iterations`` > 0, 20 by default as in the paper), so the run refuses
``reference_iterations = 0``. At setup each client computes grad^2 f_i(x*) once and
uploads it: one packed matrix, 32 d(d+1)/2 bits per client, as FedNL-Public's
``Newton_Star`` counts it (the paper assumes the server simply knows H(x*)). The server
factorizes grad^2 P(x*) once (Cholesky) and reuses the factor every round; each round a
client sends its gradient, d floats, as in gradient descent (Theorem 2.1: local quadratic
convergence).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from ... import tri
from ...errors import ConfigError
from ..base import Aggregate, BlockSums, SolverError, Uplink, bits_for, client_chunks
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """x_star: the optimum x* (set by the driver after its reference solve)."""

    x_star: np.ndarray | None = field(default=None, repr=False)
    float_bits: int = 32
    uses = ()

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        if opts.reference_iterations <= 0:
            raise ConfigError("--reference-iterations = 0 is out of range for newton-star: it steps with "
                              "grad^2 P(x*) and needs x* from the reference Newton solve; valid: >= 1")
        return cls(float_bits=opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    factor: tuple  # scipy cho_factor of grad^2 P(x*)


def client_init(p: Params, block, x0, streams):
    """grad^2 f_i(x*), once (the oracle's setup cost: one packed matrix per client), summed a chunk of
    clients at a time (:func:`~mpifed.algorithms.base.client_chunks`)."""
    if p.x_star is None:
        raise ConfigError("newton-star needs x*: the driver sets Params.x_star after the reference solve")
    xp, x_star, sums = block.bk.xp, block.bk.asarray(p.x_star), BlockSums()
    for lo, hi in client_chunks(block):
        sums.add("hess_star", block.clients(lo, hi).derivatives(x_star)[2], xp)
    loss, grad, _ = block.derivatives(x0, hessian=False)
    values, index = bits_for(block.n, block.T, p.float_bits)
    return None, Uplink(loss, grad, values, index, sums=sums)


def server_init(p: Params, agg: Aggregate, x0):
    H = tri.unpack(agg.mean("hess_star"), len(x0))
    try:
        return ServerState(scipy.linalg.cho_factor(H, check_finite=True))
    except (np.linalg.LinAlgError, ValueError):
        raise SolverError("grad^2 P(x*) is not positive definite (or not finite): NEWTON-STAR needs "
                          "H(x*) + lam I > 0 (Theorem 2.1)") from None


def client_step(p: Params, block, state, x, streams):
    loss, grad, _ = block.derivatives(x, hessian=False)
    values, index = bits_for(block.n, block.d, p.float_bits)
    return state, Uplink(loss, grad, values, index)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    step = scipy.linalg.cho_solve(state.factor, agg.grad / agg.n, check_finite=False)
    return state, x - step, len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Setup: grad^2 f_i(x*) and grad f_i(x^0) per client, the server's sum and one Cholesky factor; a round: the
    gradient, and two triangular solves with the kept factor."""
    return fl.Work(fl.loss_grad(s), fl.aggregate(s, s.d) + 2.0 * s.d * s.d,
                   init=2 * fl.loss_grad(s) + fl.hessian(s), init_server=fl.aggregate(s, s.T) + s.d**3 / 3.0)
