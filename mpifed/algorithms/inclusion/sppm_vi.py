"""SPPM for monotone inclusions: one sampled client's resolvent per round (Sadiev, Condat & Richtarik,
"Stochastic Proximal Point Methods for Monotone Inclusions under Expected Similarity", arXiv:2405.14255, the
method without variance reduction):

    xi_k ~ uniform{1..n} (a coin shared by all ranks, from (seed, k)),
    z^{k+1} = J_{gamma A_xi}(z^k) = (I + gamma M_xi)^{-1}(z^k - gamma q_xi)      (a linear solve on client xi).

One exchange per round with one client: z^k down to xi (d floats), z^{k+1} up (d floats); the ledger averages both
over the n clients (d/n floats each). With a constant gamma the iterates reach a neighbourhood of z* whose radius
grows with gamma (the variance of the sampled resolvents at z*); n = 1 is the proximal point method, which contracts
||z - z*|| by ||(I + gamma M)^{-1}|| <= 1/(1 + gamma mu).

Checked: only the paper's abstract could be read (one resolvent of a sampled operator per step, linear rates under
strong monotonicity and expected similarity); the update above is the standard SPPM it names, and the step
default follows SVRP (Khaled & Jin 2023) as the sheet reconstructs it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...network import flops as fl
from .common import default_gamma, metrics_uplink, one_client_answer, resolvent_flops, sampled_client


@dataclass(frozen=True)
class Params:
    """gamma: the resolvent step; n: clients; seed: the shared coins' seed."""

    gamma: float
    n: int
    seed: int
    float_bits: int = 32
    uses = ("gamma",)
    problems = ("saddle",)

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        gamma = opts.gamma if opts.gamma is not None else default_gamma(fed.block)
        return cls(gamma, fed.n_clients, opts.seed, opts.float_bits)


def client_init(p: Params, block, x0, streams):
    return None, None


def server_init(p: Params, agg, x0):
    return None


def client_step(p: Params, block, state, x, streams):
    """Client xi_k sends J_{gamma A_xi}(z^k); every client's L_i(z^k), A_i(z^k) are the metrics (not sent)."""
    seen = metrics_uplink(block, x, p.float_bits, sent=False)
    xi = sampled_client(p.seed, p.n, streams.round)
    return state, one_client_answer(block, xi, x, p.gamma, p.float_bits, seen.loss, seen.grad)


def server_step(p: Params, state, x, agg):
    """z^{k+1} is the one client's answer (the others' rows are zeros); it goes to the next round's client only."""
    return state, agg.fields["next"], len(x) * p.float_bits / p.n


def flops(p: Params, s) -> fl.Work:
    """The sampled client's resolvent J_{gamma A_xi}(z^k) (:func:`.common.resolvent_flops`: an LU solve). Every
    client is charged it: any client may be xi, and the round waits for xi's whole solve (the expected share, 1/n of
    it, would make the round n times too short); the other clients' A_i(z^k), L_i(z^k) are metrics only. The
    server takes xi's answer as it is (no arithmetic)."""
    return fl.Work(fl.per_client(resolvent_flops(s), s), 0.0)
