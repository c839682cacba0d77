"""What the Hessian-free methods share: block-summed client vectors, the gradient and Hessian-vector uplinks, and
the Armijo backtracking on trial points.

Client i's gradient and Hessian-vector product on the logistic problem are

    grad f_i(x)       = (1/m_i) sum_j phi'(b_ij a_ij^T x) b_ij a_ij + lam x,
    grad^2 f_i(x) v   = (1/m_i) sum_j h_ij (a_ij^T v) a_ij + lam v,   h_ij = phi''(a_ij^T x),

computed from the client's rows in O(nnz) (:meth:`mpifed.problems.logistic.LogisticBlock.hvp`). A rank sums its
clients' vectors in double-double chunk by chunk (the data parts as sparse rows, the common lam-term as one
exact product n * lam v), so no (clients x d) array exists and the server's sum is the same at any rank count.
Each vector is one dense d-float message per client (lam v makes it dense): that is what the bits count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import MpifedError
from ..base import Uplink, bits_for, block_sum

RESOLUTION = 2.0**-40  # below this relative decrease the computed f cannot decide an Armijo test (see fednl_ls)


class LineSearchError(MpifedError):
    """No trial step satisfied the line search's conditions."""


@dataclass(frozen=True)
class ClientState:
    """What a block keeps within a round: the round's x^k and its rows' Hessian coefficients h_ij(x^k)."""

    x: object
    h: object


def client_init(p, block, x0, streams):
    """No setup exchange: the Hessian-free methods start from x^0 alone."""
    return None, None


def gradient_and_loss_step(p, block, state, x, streams):
    """The round's first exchange of Newton-CG and L-BFGS: grad f_i(x^k) and f_i(x^k) (d + 1 floats up)."""
    return gradient_uplink(block, x, block.d + 1, p.float_bits)


def gradient_uplink(block, x, floats: int, float_bits: int):
    """(client state, Uplink of f_i(x^k) and the block's summed gradients); ``floats`` is what each client sends
    (d for the gradient, + 1 when the server needs f(x^k) for a line search)."""
    loss, grads, h = block.gradients(x)
    values, index = bits_for(block.n, floats, float_bits)
    return ClientState(x, h), Uplink(loss, block_sum(grads, block.bk.xp), values, index)


def hvp_uplink(block, state: ClientState, v, float_bits: int) -> Uplink:
    """The block's summed grad^2 f_i(x^k) v (field ``hv``), from the coefficients kept at x^k: d floats up."""
    xp = block.bk.xp
    values, index = bits_for(block.n, block.d, float_bits)
    return Uplink(xp.zeros(block.n), None, values, index, sums={"hv": block_sum(block.hvp(state.x, v, state.h), xp)})


def loss_uplink(block, point, float_bits: int) -> Uplink:
    """f_i at a trial point: one float up."""
    values, index = bits_for(block.n, 1, float_bits)
    return Uplink(block.loss(point), None, values, index)


@dataclass(frozen=True)
class Backtracking:
    """Armijo backtracking in progress along ``direction`` from x^k: trial step t, f(x^k), <grad P(x^k), d>."""

    direction: np.ndarray
    t: float
    f0: float
    slope: float
    backtracks: int
    report: dict


def armijo_accepts(c: float, trial: Backtracking, f_trial: float) -> bool:
    return f_trial <= trial.f0 + c * trial.t * trial.slope


def unresolvable(c: float, f0: float, slope: float) -> bool:
    """True when the decrease the Armijo test asks for is below f's resolution (abs(f) RESOLUTION): the unit step
    is then taken untested, as FedNL-LS does (:mod:`mpifed.algorithms.second_order.fednl_ls`)."""
    return -c * slope <= RESOLUTION * abs(f0)


def backtrack(trial: Backtracking, gamma: float, max_backtracks: int, c: float) -> Backtracking:
    """The next, shorter trial; a LineSearchError past ``max_backtracks`` reductions."""
    if trial.backtracks >= max_backtracks:
        raise LineSearchError(f"the line search found no step satisfying the Armijo condition (c = {c:g}) after "
                              f"{max_backtracks} reductions by {gamma:g} (step {trial.t:.3e}, <grad P, d> = "
                              f"{trial.slope:.3e}); P cannot decrease along d at this precision")
    return Backtracking(trial.direction, trial.t * gamma, trial.f0, trial.slope, trial.backtracks + 1, trial.report)
