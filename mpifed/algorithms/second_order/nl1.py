"""NL1, NEWTON-LEARN for lam > 0 (Islamov, Qian, Richtarik, ICML 2021, Algorithm 1).

Each client i keeps a vector h_i^k in R^{m_i} that learns the Hessian coefficients
h_ij(x*) = phi''(a_ij^T x*), and the server keeps

    H^k = (1/n) sum_i (1/m_i) sum_j h_ij^k a_ij a_ij^T                      (14)

(the paper's 1/(nm) with unequal m_i: a 1/m_i weight per client, a 1/n mean). Round k:

    client i:  m_i^k     = C_i^k(h_i(x^k) - h_i^k)                             (19)
               h_i^{k+1} = [h_i^k + eta m_i^k]_+
               sends grad f_i(x^k), m_i^k, and (Option 1) the a_ij with h_ij^{k+1} != h_ij^k
    server:    x^{k+1}   = x^k - (H^k + lam I)^{-1} grad P(x^k)                  (15)
               H^{k+1}   = H^k + (1/n) sum_i (1/m_i) sum_j (h_ij^{k+1} - h_ij^k) a_ij a_ij^T

mpifed's f_i carry lam (see mpifed/problems/logistic.py), so grad P = (1/n) sum_i grad f_i already includes
lam x^k, and the server's matrix is H^k + lam I exactly. H^k + lam I is kept factorized
under these rank-one updates (:mod:`.lowrank`). NL1 needs lam > 0 (Assumption 3.1).

The step uses H^k, before this round's update, as Algorithm 1 (and FedNL-Public's ``NL1``).

Compressor: random-r sparsification C (r of the m_i coordinates, uniformly without
replacement, scaled by m_i/r; omega = m_i/r - 1; r = 1 by default, as in the paper's
experiments), optionally thinned to C_p (the whole message sent with probability p and
scaled by 1/p, omega = m_i/(r p) - 1: the "random sparsification C_p" of Sec. 4, as the
authors' code builds it), spec ``randk:k=<r>[,p=<p>]``. The r coordinates are the r smallest keys of the client's stream
``nl-sample`` (``streams.bits("nl-sample", m)[:, :m_i]``), and with p < 1 the client sends
when ``streams.uniform("nl-send", 1) < p``: per client and round, never per rank.
eta defaults to 1/(omega + 1) = r p / m_i per client (Theorem 3.2: eta <= 1/(omega + 1);
FedNL-Public's ``NL1``: eta = k/m);
with it, eta m_i^k replaces the r chosen coefficients by their current values.

Bits per client and round (Option 1, the paper's realistic setting): grad f_i (d floats),
the r values of m_i^k (r floats), their r indices (ceil(log2 m_i) bits each, in
``index_bits``), and d floats per data vector a_ij whose coefficient changed. The setup
(H_i^0, with h_i^0 = h_i(x^0)) is counted like FedNL-Public's ``init_cost``: one packed
matrix, 32 d(d+1)/2 bits per client. The client sends its coefficient change scaled by
1/m_i instead of m_i^k itself: the same r floats, and the server then needs neither m_i nor
a copy of h_i^k to apply the update.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import tri
from ...errors import ConfigError
from ..base import Aggregate, BlockSums, Uplink, bits_for, coefficient_hessians_in_chunks
from .lowrank import LowRankSPD
from ...network import flops as fl


@dataclass(frozen=True)
class Params:
    """r, p: the compressor C_p (random-r, sent with probability p); eta: the learning rate
    (None: r p / m_i per client); lam: the regulariser (> 0)."""

    r: int = 1
    p: float = 1.0
    eta: float | None = None
    lam: float = 1e-3
    float_bits: int = 32
    uses = ("compressor", "eta")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        if opts.lam <= 0:
            raise ConfigError(f"--lam = {opts.lam:g} is out of range for nl1: it needs lam > 0 "
                              "(Islamov et al. 2021, Assumption 3.1); use nl2 or cnl for lam = 0")
        r, p = parse_compressor(opts.compressor, fed)
        return cls(r, p, opts.eta, opts.lam, opts.float_bits)


def parse_compressor(spec: str | None, fed, default: str = "randk:k=1") -> tuple[int, float]:
    """(r, p) from ``randk:k=<r>[,p=<p>]``, checked against the federation (1 <= r <= m_min)."""
    spec = spec or default
    name, _, args = spec.partition(":")
    values = dict(part.partition("=")[::2] for part in args.split(",") if part)
    if name != "randk" or set(values) - {"k", "p"} or "k" not in values:
        raise ConfigError(f"--compressor {spec!r} is not valid for Newton-Learn; valid: randk:k=<r>[,p=<p>] "
                          "(random-r sparsification of the Hessian coefficients, sent with probability p)")
    try:
        r, p = int(values["k"]), float(values.get("p", 1.0))
    except ValueError:
        raise ConfigError(f"--compressor {spec!r}: k must be an integer and p a number") from None
    if not 1 <= r <= fed.m_min:
        raise ConfigError(f"--compressor {spec!r}: r = {r} is out of range; valid: 1 <= r <= {fed.m_min} "
                          "(the smallest client's sample count m_i)")
    if not 0 < p <= 1:
        raise ConfigError(f"--compressor {spec!r}: p = {p:g} is out of range; valid: 0 < p <= 1")
    return r, p


@dataclass(frozen=True)
class ClientState:
    h: object  # h_i^k in the block's coefficient layout: (N,) sparse, (n, m_max) dense


@dataclass(frozen=True)
class ServerState:
    H: LowRankSPD  # H^k + lam I, factorized


# ------------------------------------------------------------------ shared by NL1, NL2, CNL
def learn(p, block, h, target, streams, positive: bool):
    """One learning step (19) / (20) for the block: the sampled coordinates J (n, r), their
    old and new values, whether each client sent (n,), and the new h."""
    xp, n, r = block.bk.xp, block.n, p.r
    sizes = block.sizes
    keys = streams.bits("nl-sample", int(sizes.max()))
    keys[np.arange(keys.shape[1])[None, :] >= sizes[:, None]] = np.iinfo(np.uint64).max  # not a sample
    J = np.argsort(keys, axis=1, kind="stable")[:, :r]
    sent = streams.uniform("nl-send", 1)[:, 0] < p.p if p.p < 1 else np.ones(n, dtype=bool)
    old, current = take(block, h, J), take(block, target, J)
    m = xp.asarray(sizes, dtype=np.float64)[:, None]
    eta = p.eta if p.eta is not None else p.r * p.p / m
    message = (m / (r * p.p)) * (current - old) * xp.asarray(sent)[:, None]  # C_p(h_i(x^k) - h_i^k) on J
    new = old + eta * message
    if positive:
        new = xp.maximum(new, 0.0)
    return J, old, new, sent, put(block, h, J, new)


def uplink(p, block, loss, grad, J, old, new, sent, scalars: int = 0, gathered=None):
    """The round's message: gradient, scalars, the sent coefficients and the changed a_ij."""
    xp = block.bk.xp
    changed = (new != old)
    vectors = block.rows(J) * changed[:, :, None]
    index_bits = np.maximum(1.0, np.ceil(np.log2(block.sizes))) * p.r * sent  # ceil(log2 m_i) per index
    n_changed = block.bk.to_host(changed.sum(axis=1))
    floats = block.d + scalars + (p.r + block.d * n_changed) * sent
    weight = (new - old) / xp.asarray(block.sizes, dtype=np.float64)[:, None]
    fields = {"weight": weight, "vectors": vectors, **(gathered or {})}
    return Uplink(loss, grad, floats * p.float_bits, index_bits, gathered=fields)


def offsets(block) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(block.sizes)])


def take(block, h, J):
    """h at each client's local coordinates J (n, r) -> (n, r)."""
    xp = block.bk.xp
    if block.dense:
        return h[xp.arange(block.n)[:, None], xp.asarray(J)]
    return h[xp.asarray(offsets(block)[:-1, None] + J)]


def put(block, h, J, values):
    """A copy of h with the coordinates J set to ``values``."""
    xp = block.bk.xp
    out = h.copy()
    if block.dense:
        out[xp.arange(block.n)[:, None], xp.asarray(J)] = values
    else:
        out[xp.asarray(offsets(block)[:-1, None] + J)] = values
    return out


def client_max(block, values):
    """max_j values_ij over each client's own coordinates (padding excluded): (n,)."""
    xp = block.bk.xp
    if block.dense:
        valid = xp.asarray(np.arange(values.shape[1])[None, :] < block.sizes[:, None])
        return xp.where(valid, values, -xp.inf).max(axis=1)
    slot = np.arange(block.N) - offsets(block)[block.row_client]
    padded = xp.full((block.n, int(block.sizes.max())), -xp.inf)
    padded[xp.asarray(block.row_client), xp.asarray(slot)] = values
    return padded.max(axis=1)


# ------------------------------------------------------------------------------- NL1
def client_init(p: Params, block, x0, streams):
    """h_i^0 = h_i(x^0) >= 0; H_i^0 + lam I uploaded once (one packed matrix per client), summed a chunk of
    clients at a time."""
    xp, sums = block.bk.xp, BlockSums()
    loss, grad, h0 = block.derivatives_and_coefficients(x0)
    for _, _, H0 in coefficient_hessians_in_chunks(block, h0):
        sums.add("H0", H0, xp)
    values, index = bits_for(block.n, block.T, p.float_bits)
    return ClientState(h0), Uplink(loss, grad, values, index, sums=sums)


def server_init(p: Params, agg: Aggregate, x0):
    return ServerState(LowRankSPD.factor(tri.unpack(agg.mean("H0"), len(x0)), what="H^0 + lam I"))


def client_step(p: Params, block, state: ClientState, x, streams):
    loss, grad, target = block.derivatives_and_coefficients(x)
    J, old, new, sent, h = learn(p, block, state.h, target, streams, positive=True)
    return ClientState(h), uplink(p, block, loss, grad, J, old, new, sent)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    x_next = x - state.H.solve(agg.grad / agg.n)                      # (15) with H^k
    d = len(x)
    H = state.H.update(agg.gathered["vectors"].reshape(-1, d), agg.gathered["weight"].reshape(-1) / agg.n)
    return ServerState(H), x_next, d * p.float_bits


def flops(p: Params, s) -> fl.Work:
    """A round: gradient and the coefficients h_i(x^k) (phi'' per row), r coefficient changes (3 each); the
    server solves with its factorization (2 d^2 per kept rank-one term, about the r tau changes per round, and
    a d x d solve) and applies the r tau rank-one updates (4 d^2 each). Setup: H_i^0 from the coefficients."""
    changes = p.r * p.p * s.tau
    return fl.Work(fl.loss_grad(s) + fl.ELEMENTARY * s.m + 3.0 * p.r,
                   fl.aggregate(s, s.d + p.r * (s.d + 1)) + fl.cholesky_solve(s.d) + 6.0 * s.d * s.d * changes,
                   init=fl.loss_grad(s) + fl.ELEMENTARY * s.m + fl.coefficient_hessian(s),
                   init_server=fl.aggregate(s, s.T) + s.d**3 / 3.0)
