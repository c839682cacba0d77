"""FedNL-PP: FedNL with partial participation (Safaryan, Islamov, Qian, Richtarik, ICML 2022,
Algorithm 2 "FedNL-PP"; the rules follow FedNL_PP in the authors' public numpy code, FedNL-Public,
and u-FedNL's workers, which are the reference here rather than the paper's text).

Every client keeps its last point w_i, its learned Hessian H_i, and

    l_i = ||H_i - grad^2 f_i(w_i)||_F,     g_i = (H_i + l_i I) w_i - grad f_i(w_i).

The server keeps the means H, l, g and steps to the minimiser of the averaged local models,

    x^{k+1} = (H^k + l^k I)^{-1} g^k.

The tau clients S^k drawn for the round (``streams.active``) receive x^{k+1} and update

    w_i = x^{k+1},  S_i = C(grad^2 f_i(w_i) - H_i),  H_i <- H_i + alpha S_i,
    l_i <- ||H_i - grad^2 f_i(w_i)||_F  (after the update),  g_i <- (H_i + l_i I) w_i - grad f_i(w_i),

sending S_i, l_i^+ - l_i and g_i^+ - g_i (d + 1 floats plus the compressed S_i); the server
adds alpha/n sum S_i, 1/n sum (l_i^+ - l_i) and 1/n sum (g_i^+ - g_i) to H, l, g. The others
send nothing (0 bits) and keep their state.

Initialisation (setup upload): w_i = x^0, H_i^0 = grad^2 f_i(x^0), so l_i^0 = 0 is known to
the server and only H_i^0 (T floats) and g_i^0 (d floats) are sent.

Rounds of the driver: round k broadcasts x^k; the round's participants are the paper's
S^{k-1}, which update at x^k before the server forms x^{k+1}. In round 0 nobody updates: the
paper's x^1 comes from the initial aggregates (an update at x^0 would be a no-op anyway, as
H_i^0 = grad^2 f_i(x^0)), so row 0 carries no uplink bits. Downlink: x^{k+1} goes to the tau
clients of the next round only, counted as tau/n * d floats per client (the ledger's per-client
mean, like the uplink's). ``solver = "cg"`` solves for x^{k+1} with FedNL's CG
(:mod:`mpifed.algorithms.second_order.fednl_solve`), warm-started at x^k. With tau = n, the identity compressor and alpha = 1 the step is
x^k - grad^2 P(x^k)^{-1} grad P(x^k): Newton's method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ... import tri
from ...rng import ClientStreams
from . import fednl
from .fednl_solve import cg_solve
from ..base import Aggregate, BlockSums, Uplink, bits_for, clients_per_chunk, hessians_in_chunks, solve_spd
from ..base import to_participants
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """fednl: compressor C and alpha (FedNL's, under Option 2); tau of n clients per round."""

    fednl: fednl.Params
    tau: int
    n: int
    uses = ("compressor", "alpha", "participation", "solver", "cg_iterations")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        # tau was checked against n when the federation was built (plan (participants)).
        base = fednl.Params.from_options(dataclasses.replace(opts, option=2), fed)
        return cls(base, fed.tau or fed.n_clients, fed.n_clients)


@dataclass(frozen=True)
class ClientState:
    H: object  # (n, T) learned Hessians H_i, packed
    l: object  # (n,)   l_i
    g: object  # (n, d) g_i = (H_i + l_i I) w_i - grad f_i(w_i)


@dataclass(frozen=True)
class ServerState:
    H: np.ndarray  # (T,) mean of the H_i
    l: float
    g: np.ndarray  # (d,)
    report: dict = field(default_factory=dict)


def _shifted_model(xp, H, l, x, grad):
    """g_i = (H_i + l_i I) x - grad f_i(x) for packed H_i."""
    return (tri.unpack(H, len(x), xp) @ x) + l[:, None] * x - grad


def client_init(p: Params, block, x0, streams):
    """w_i = x^0, H_i^0 = grad^2 f_i(x^0), l_i^0 = 0, g_i^0; a chunk of clients at a time (as FedNL's)."""
    xp, n = block.bk.xp, block.n
    loss, grad, g0 = xp.empty(n), xp.empty((n, block.d)), xp.empty((n, block.d))
    H, l0, sums = xp.empty((n, block.T)), xp.zeros(n), BlockSums()
    for lo, hi, hess in hessians_in_chunks(block, x0, loss, grad):
        H[lo:hi] = hess
        g0[lo:hi] = _shifted_model(xp, hess, l0[lo:hi], x0, grad[lo:hi])
        sums.add("hess", hess, xp)
    values, index = bits_for(n, block.T + block.d, p.fednl.float_bits)
    return ClientState(H, l0, g0), Uplink(loss, grad, values, index, {"g": g0}, sums=sums)


def server_init(p: Params, agg: Aggregate, x0):
    return ServerState(agg.mean("hess"), 0.0, agg.mean("g"))


def client_step(p: Params, block, state: ClientState, x, streams):
    """The participants update, a chunk of them at a time: only they compute Hessians, H_i is updated in
    place, and their S_i are summed as they go (every rank sends the sum, zeros without participants)."""
    xp, n, d = block.bk.xp, block.n, block.d
    who = np.flatnonzero(np.asarray(streams.active)) if streams.round > 0 else np.zeros(0, dtype=np.int64)
    loss, grad, h = block.derivatives_and_coefficients(x)
    dl, dg = xp.zeros(n), xp.zeros((n, d))
    value_bits, index_bits = np.zeros(n), np.zeros(n)
    sums = BlockSums(S=(xp.zeros(block.T), xp.zeros(block.T)))
    H, l, g = state.H, state.l.copy(), state.g.copy()
    step = clients_per_chunk(block.T, xp is not np)
    for part in (who[j:j + step] for j in range(0, len(who), step)):
        at = xp.asarray(part)
        hess = block.hessians_of(part, h)
        # The participants' own streams: keyed by client id, so Rand-K draws as in a full round.
        sub = ClientStreams(streams.seed, streams.client_ids[part], streams.round)
        message = p.fednl.compressor.compress(hess - H[at], sub)
        H_new = H[at] + p.fednl.alpha * message.values
        l_new = tri.frobenius(H_new - hess, xp)
        g_new = _shifted_model(xp, H_new, l_new, x, grad[at])
        sums.add("S", message.values, xp)
        dl[at], dg[at] = l_new - l[at], g_new - g[at]
        value_bits[part] = message.value_bits + (d + 1) * p.fednl.float_bits
        index_bits[part] = message.index_bits
        H[at], l[at], g[at] = H_new, l_new, g_new
    return ClientState(H, l, g), Uplink(loss, grad, value_bits, index_bits, {"l": dl, "g": dg}, sums=sums)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    H = state.H + p.fednl.alpha * agg.mean("S")
    l = state.l + float(agg.mean("l"))
    g = state.g + agg.mean("g")
    if p.fednl.solver == "cg":  # warm: the solution moves from x^k to x^{k+1}
        x_next = cg_solve(tri.unpack(H, len(x)), g, p.fednl.cg_iterations, shift=l, guess=x)
    else:
        x_next = solve_spd(tri.unpack(H, len(x)), g, shift=l, what="H^k + l^k I")
    return ServerState(H, l, g), x_next, to_participants(agg, len(x), p.fednl.float_bits)


def flops(p: Params, s) -> fl.Work:
    """A participant: gradient and Hessian at w_i, C, H_i += alpha S_i, l_i (2T), g_i = (H_i + l_i I) w_i - grad
    (a packed product, 2 d^2); the server: the sums of the tau messages, updates and a Cholesky solve, or with
    ``solver = "cg"`` ``cg_iterations`` CG steps plus the warm start's product, each a dense product with the
    shift (2 d^2 + 2 d; the cap, an upper bound). Setup: H_i^0 and g_i^0."""
    C, d = p.fednl.compressor, s.d
    client = fl.loss_grad(s) + fl.hessian(s) + s.T + fl.compression(C) + fl.payload(C) + 2.0 * s.T + 2.0 * s.d * s.d
    solve = (fl.cg(d, p.fednl.cg_iterations + 1, 2.0 * d * d + 2.0 * d) if p.fednl.solver == "cg"
             else fl.cholesky_solve(d))
    server = fl.aggregate(s, s.d + 1 + fl.payload(C)) + s.T + 2.0 * s.d + fl.unpack(s.d) + solve
    return fl.Work(client, server, init=fl.loss_grad(s) + fl.hessian(s) + 2.0 * s.d * s.d,
                   init_server=fl.aggregate(s, s.T + s.d))
