"""FedPM: local Newton steps with preconditioned mixing on the server (Ishii et al., paper
002, eq. (9) for K = 1, eq. (10) and Algorithm 1 with the full Hessian for K >= 1; the FOOF
variant, eq. (11)-(12), is not implemented).

Client i at round t, from theta_i^{(t,0)} = theta^{(t)}, for k = 0, ..., K-1 (as LocalNewton):

    P_i^{(t,k)}       = grad^2 f_i(theta_i^{(t,k)})
    theta_i^{(t,k+1)} = theta_i^{(t,k)} - eta (P_i^{(t,k)})^{-1} grad f_i(theta_i^{(t,k)})
    sends theta_i^{(t,K)} and P_i^{(t,K-1)}          (Algorithm 1, line 16)

Server, preconditioned mixing:

    P^{(t)}       = (1/N) sum_i P_i^{(t,K-1)}
    theta^{(t+1)} = (P^{(t)})^{-1} (1/N) sum_i P_i^{(t,K-1)} theta_i^{(t,K)}

With K = 1 and eta = 1 this is Newton's step (eq. (8)): P^{-1} mean_i P_i(theta - P_i^{-1} g_i)
= theta - P^{-1} g.

Bits per client and round: d floats (theta_i) + d(d+1)/2 floats (the packed symmetric P_i).
The server needs only sums, so each client contributes P_i (theta_i - theta^{(t)}) and P_i
to the reduce, and the server forms theta^{(t+1)} = theta^{(t)} + P^{-1} mean_i P_i (theta_i
- theta^{(t)}): the same number in exact arithmetic (P^{-1} mean_i P_i theta^{(t)} = theta^{(t)})
without the cond(P) eps ||theta|| rounding of solving for theta^{(t+1)} from P theta^{(t)}.
"""
from __future__ import annotations

from dataclasses import dataclass

from ... import tri
from ..base import Aggregate, BlockSums, Uplink, bits_for, solve_spd, to_participants
from .localnewton import check_local, local_newton_flops, local_newton_in_chunks, taking_part
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """eta: local step size; K: local Newton steps per round (eq. (10); K = 1 is eq. (9))."""

    eta: float = 1.0
    K: int = 1
    float_bits: int = 32
    uses = ("eta", "local_steps", "participation")

    def __post_init__(self):
        check_local(self.eta, self.K)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        return cls(opts.eta if opts.eta is not None else 1.0, opts.local_steps or 1, opts.float_bits)


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return None


def client_step(p: Params, block, state, x, streams):
    """The local runs go a chunk of clients at a time; their P_i are summed as they go (BlockSums), so no
    (clients x T) array is held for the whole block."""
    xp, n = block.bk.xp, block.n
    active = taking_part(block, streams)[:, None]  # non-participants send nothing
    loss, grad, moved, sums = xp.empty(n), xp.empty((n, block.d)), xp.empty((n, block.d)), BlockSums()
    for lo, hi, run in local_newton_in_chunks(block, x, p.K, p.eta, streams.client_ids):
        loss[lo:hi], grad[lo:hi] = run.loss, run.grad
        moved[lo:hi] = (run.P @ (run.theta - x)[:, :, None])[..., 0]  # P_i^{(t,K-1)} (theta_i^{(t,K)} - theta^{(t)})
        sums.add("P", run.hess * active[lo:hi], xp)
    values, index = bits_for(n, block.d + block.T, p.float_bits)
    return state, Uplink(loss, grad, values * streams.active, index, {"P_moved": moved * active}, sums=sums)


def server_step(p: Params, state, x, agg: Aggregate):
    """``theta^{(t+1)} = theta^{(t)} + P^{-1} (1/|S|) sum_{i in S} P_i (theta_i^{(t,K)} - theta^{(t)})``,
    ``P = (1/|S|) sum_{i in S} P_i`` over the round's participants S (all clients by default)."""
    P = tri.unpack(agg.fields["P"], len(x))  # the 1/|S| factors cancel
    step = solve_spd(P, agg.fields["P_moved"], what="P^(t) = mean of the participants' P_i")
    return state, x + step, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """K local Newton steps (:func:`.localnewton.local_newton_flops`), then P_i (theta_i - theta) (2 d^2); the
    server sums d + 2T floats per participant (theta-move, P_i, P_i theta_i) and solves with P (Cholesky)."""
    client = local_newton_flops(p.K, s) + 2.0 * s.d * s.d
    return fl.Work(client, fl.aggregate(s, s.d + s.T) + fl.unpack(s.d) + fl.cholesky_solve(s.d) + s.d)
