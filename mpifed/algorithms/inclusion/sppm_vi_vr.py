"""SPPM-VI-VR: SPPM with loopless variance reduction (arXiv:2405.14255, the variance-reduced method; the loopless
SVRP form of Khaled & Jin 2023, as the sheet reconstructs it). An anchor w and a = A(w) correct the sampled
resolvent's input:

    xi_k ~ uniform{1..n} (shared coin from (seed, k)),
    z^{k+1} = J_{gamma A_xi}(z^k - gamma (a - A_xi(w))),
    w <- z^{k+1} with probability p (a shared coin from (seed, k); w^0 = z^0), and then a = A(w).

Exchanges. A round whose anchor is new (k = 0, or the coin of round k-1 fell below p) is a full exchange: z^k goes
to all clients, which keep it as w and send A_i(w) (d floats each); the server forms a and sends it to all (a
second exchange within the round, d floats down each), then client xi answers as in a plain round. A plain round is
SPPM's: z^k down to xi, z^{k+1} up (d floats each way, d/n on the per-client ledger). Expected: 1 + p exchanges per
round. With a constant gamma the iterates converge linearly to z* (no plateau); p = 1/n by default.

Checked: the abstract only (variance reduction, linear convergence); the update is the sheet's reconstruction.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...network import flops as fl
from ..base import Query
from .common import (coin, default_gamma, metrics_uplink, one_client_answer, operator_flops, resolvent_flops,
                     sampled_client)


@dataclass(frozen=True)
class Params:
    """gamma: the resolvent step; p: the probability of a new anchor; n clients; seed of the shared coins."""

    gamma: float
    p: float
    n: int
    seed: int
    float_bits: int = 32
    uses = ("gamma", "grad_probability")
    problems = ("saddle",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        gamma = opts.gamma if opts.gamma is not None else default_gamma(fed.block)
        p = opts.grad_probability if opts.grad_probability is not None else 1.0 / fed.n_clients
        return cls(gamma, p, fed.n_clients, opts.seed, opts.float_bits)

    def new_anchor(self, k: int) -> bool:
        """Whether round k starts with a full exchange (the anchor becomes z^k)."""
        return k == 0 or coin(self.seed, k - 1) < self.p


@dataclass(frozen=True)
class ClientState:
    """What every client keeps: the anchor w and a = A(w) (a is None until the server has sent it)."""

    w: object
    a: object


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    """The server's state is the round number k (for the anchor coins)."""
    return 0


def client_step(p: Params, block, state, x, streams):
    k = streams.round
    if p.new_anchor(k):  # all clients send A_i(w) with w = z^k; xi answers after the server's a arrives
        return ClientState(x, None), metrics_uplink(block, x, p.float_bits, sent=True)
    seen = metrics_uplink(block, x, p.float_bits, sent=False)
    return state, _answer(p, block, state, x, k, seen.loss, seen.grad)


def _answer(p: Params, block, state: ClientState, x, k: int, loss, operator):
    """Client xi sends J_{gamma A_xi}(z^k - gamma (a - A_xi(w)))."""
    xi = sampled_client(p.seed, p.n, k)
    (rows,) = (block.ids == xi).nonzero()
    shift = state.a - block.operator(state.w)[rows[0]] if len(rows) else 0.0
    return one_client_answer(block, xi, x - p.gamma * shift, p.gamma, p.float_bits, loss, operator)


def client_query(p: Params, block, state: ClientState, point, streams):
    """The full exchange's second half: every client keeps a = ``point``; xi answers."""
    state = ClientState(state.w, point)
    return state, _answer(p, block, state, state.w, streams.round, block.values(state.w), block.operator(state.w))


def server_step(p: Params, k: int, x, agg):
    """A full round: a = A(w) goes to every client (a Query); a plain round: z^{k+1} is xi's answer."""
    if p.new_anchor(k):
        return Query(agg.grad / agg.n, k, len(x) * p.float_bits)
    return server_resume(p, k, x, agg)


def server_resume(p: Params, k: int, x, agg):
    """z^{k+1} = xi's answer; it goes to every client if round k+1 has a new anchor, else to xi_{k+1} only."""
    down = len(x) * p.float_bits * (1.0 if p.new_anchor(k + 1) else 1.0 / p.n)
    return k + 1, agg.fields["next"], down


def answer_flops(s):
    """Client xi's answer (:func:`_answer`): A_xi(w) (2 d^2; the client keeps w, not A_i(w), so it is recomputed),
    a - A_xi(w) (d), z - gamma shift (2d), and the resolvent (:func:`.common.resolvent_flops`)."""
    return operator_flops(s) + 3.0 * s.d + resolvent_flops(s)


def flops(p: Params, s) -> fl.Work:
    """Expected over the anchor coin (a full exchange with probability p, the first round aside): the main step is
    every client's A_i(w) (2 d^2) in a full round, xi's answer (:func:`answer_flops`) in a plain one, so
    2 d^2 p + answer (1 - p); the server forms a = (1/n) sum A_i(w) (the sum and d) with probability p. The full
    round's query (charged only when it happens) is xi's answer; its server step takes the answer as it is. As in
    :mod:`.sppm_vi`, every client is charged xi's work (any may be xi); the metrics A_i(z^k), L_i(z^k) are not."""
    step = p.p * operator_flops(s) + (1.0 - p.p) * answer_flops(s)
    return fl.Work(fl.per_client(step, s), p.p * (fl.aggregate(s, s.d) + s.d), query=answer_flops(s))
