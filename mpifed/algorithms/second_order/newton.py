"""Newton's method, distributed (the yardstick of the second-order methods, as in FedPM's Test 1).

    x^{k+1} = x^k - (grad^2 P(x^k))^{-1} grad P(x^k),
    grad P = (1/n) sum_i grad f_i,  grad^2 P = (1/n) sum_i grad^2 f_i.

Each client sends its gradient (d floats) and its whole Hessian (d(d+1)/2 floats, the
upper triangle) every round; the server solves by Cholesky.
"""
from __future__ import annotations

from dataclasses import dataclass

from ... import tri
from ..base import Aggregate, BlockSums, Uplink, bits_for, hessians_in_chunks, solve_spd
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    float_bits: int = 32
    uses = ()

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(float_bits=opts.float_bits)


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return None


def client_step(p: Params, block, state, x, streams):
    """The block's Hessians are summed a chunk of clients at a time (never all held at once: the reference
    solve for x* runs this on every federation, however many clients a rank hosts)."""
    xp = block.bk.xp
    loss, grad, sums = xp.empty(block.n), xp.empty((block.n, block.d)), BlockSums()
    for _, _, hess in hessians_in_chunks(block, x, loss, grad):
        sums.add("hess", hess, xp)
    values, index = bits_for(block.n, block.d + block.T, p.float_bits)
    return state, Uplink(loss, grad, values, index, sums=sums)


def server_step(p: Params, state, x, agg: Aggregate):
    H = tri.unpack(agg.mean("hess"), len(x))
    return state, x - solve_spd(H, agg.grad / agg.n, what="grad^2 P(x^k)"), len(x) * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """Client: f_i, grad f_i and the packed Hessian; server: the sums, then a Cholesky solve."""
    return fl.Work(fl.loss_grad(s) + fl.hessian(s), fl.aggregate(s, s.d + s.T) + fl.unpack(s.d) + fl.cholesky_solve(s.d))
