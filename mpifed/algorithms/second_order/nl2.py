"""NL2, NEWTON-LEARN for lam >= 0 (Islamov, Qian, Richtarik, ICML 2021, Algorithm 2, Section 3.6).

No positive part: the coefficients learn by the plain step (20), and positive definiteness
comes from a scalar beta^k instead. With ``gamma >= |h_ij^k|`` (Assumption 3.4) and

    A^k = (1/n) sum_i (1/m_i) sum_j (h_ij^k + 2 gamma) a_ij a_ij^T,
    G   = (1/n) sum_i (1/m_i) sum_j a_ij a_ij^T,

the matrix H^k = beta^k A^k - 2 gamma G dominates grad^2 f(x^k) (Sec. 3.6). Round k:

    client i:  h_i^{k+1} = h_i^k + eta C_i^k(h_i(x^k) - h_i^k)                     (20)
               beta_i^k  = max_j (h_ij(x^k) + 2 gamma) / (h_ij^k + 2 gamma)
               sends grad f_i(x^k), beta_i^k, eta C_i^k(...), and (Option 1) the changed a_ij
    server:    beta^k    = max_i beta_i^k
               x^{k+1}   = x^k - (beta^k A^k - 2 gamma G + lam I)^{-1} grad P(x^k)
               A^{k+1}   = A^k + (1/n) sum_i (1/m_i) sum_j (h_ij^{k+1} - h_ij^k) a_ij a_ij^T

(1/(nm) of the paper becomes 1/m_i per client and 1/n overall; mpifed's grad f_i include
lam x, so grad P(x^k) is the mean of the clients' gradients.)

The compressor, its random streams, eta's default r p / m_i and the bit count are NL1's
(:mod:`.nl1`), plus one float per client and round for beta_i^k. gamma defaults to 1/4 =
sup phi'' for the logistic loss: with h_i^0 = h_i(x^0) and eta <= r p / m_i every h_ij^k is
a convex combination of values phi'' in [0, 1/4], so ``|h_ij^k| <= 1/4 = gamma`` (Assumption
3.4, and Lemma 3.6's condition). Setup: each client uploads two packed matrices, its part
of A^0 and of G (the server has no data under Option 1): 2 x 32 d(d+1)/2 bits.

The authors' numpy code for the paper (classes ``NL2``, ``CNL``) departs from Algorithm 2 in
two places: it learns from h_i(x^{k+1}) (after the step) and forms beta^k from h^{k-1}
while A^k holds h^k. mpifed follows the algorithm box (the paper wins): both use round k's
h_i(x^k) and h_i^k, which is what makes beta^k A^k - 2 gamma G >= grad^2 f(x^k).

Why no maintained factorization here (unlike NL1): beta^k rescales A^k every round, so the
step matrix changes by (beta^k - beta^{k-1}) A^k, a full-rank term, and no factorization of
an earlier matrix can be reused exactly. The server keeps A^k up to date by its rank-one
updates and takes one Cholesky per round (0.5 ms at d = 300).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import tri
from ...errors import MpifedError
from . import nl1
from ..base import Aggregate, BlockSums, Uplink, bits_for, coefficient_hessians_in_chunks, solve_spd
from .lowrank import weighted_gram


@dataclass(frozen=True)
class Params:
    """r, p: the compressor C_p; eta: learning rate (None: r p / m_i); gamma: the bound on ``|h_ij^k|``."""

    r: int = 1
    p: float = 1.0
    eta: float | None = None
    gamma: float = 0.25
    lam: float = 1e-3
    float_bits: int = 32
    uses = ("compressor", "eta", "gamma")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        r, p = nl1.parse_compressor(opts.compressor, fed)
        gamma = opts.gamma if opts.gamma is not None else fed.block.curvature_bound
        return cls(r, p, opts.eta, gamma, opts.lam, opts.float_bits)


@dataclass(frozen=True)
class ServerState:
    A: np.ndarray   # (d, d) A^k, data part (no lam)
    G2: np.ndarray  # (d, d) 2 gamma G


def client_init(p, block, x0, streams, extra=None):
    """h_i^0 = h_i(x^0); uploads (1/m_i) sum_j (h_ij^0 + 2 gamma) a_ij a_ij^T + lam I and A_i^T A_i / m_i,
    summed a chunk of clients at a time."""
    xp, sums = block.bk.xp, BlockSums()
    loss, grad, h0 = block.derivatives_and_coefficients(x0)
    for lo, hi, A0 in coefficient_hessians_in_chunks(block, h0 + 2 * p.gamma):
        sums.add("A0", A0, xp)
        del A0
        sums.add("gram", block.clients(lo, hi).gram(), xp)
    values, index = bits_for(block.n, 2 * block.T, p.float_bits)
    return nl1.ClientState(h0), Uplink(loss, grad, values, index, gathered=extra or {}, sums=sums)


def server_init(p, agg: Aggregate, x0):
    d = len(x0)
    A = tri.unpack(agg.mean("A0"), d) - p.lam * np.eye(d)
    return ServerState(A, 2 * p.gamma * tri.unpack(agg.mean("gram"), d))


def client_step(p, block, state, x, streams):
    xp = block.bk.xp
    loss, grad, target = block.derivatives_and_coefficients(x)
    if bool((state.h + 2 * p.gamma <= 0).any()):
        raise MpifedError(f"a learned coefficient fell below -2 gamma = {-2 * p.gamma:g} (Assumption 3.4 "
                          "|h_ij^k| <= gamma fails): lower --eta or raise --gamma")
    beta = nl1.client_max(block, (target + 2 * p.gamma) / (state.h + 2 * p.gamma))
    J, old, new, sent, h = nl1.learn(p, block, state.h, target, streams, positive=False)
    up = nl1.uplink(p, block, loss, grad, J, old, new, sent, scalars=1, gathered={"beta": xp.asarray(beta)})
    return nl1.ClientState(h), up


def step_matrix(p, state: ServerState, agg: Aggregate) -> np.ndarray:
    """H^k + lam I = beta^k A^k - 2 gamma G + lam I, with beta^k = max_i beta_i^k."""
    beta = float(agg.gathered["beta"].max())
    return beta * state.A - state.G2 + p.lam * np.eye(len(state.A))


def learned(state: ServerState, agg: Aggregate, d: int) -> ServerState:
    """A^{k+1} from the clients' coefficient changes and data vectors."""
    U = agg.gathered["vectors"].reshape(-1, d)
    w = agg.gathered["weight"].reshape(-1) / agg.n
    keep = w != 0
    return ServerState(state.A + weighted_gram(U[keep], w[keep]), state.G2)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    d = len(x)
    step = solve_spd(step_matrix(p, state, agg), agg.grad / agg.n, what="beta^k A^k - 2 gamma G + lam I")
    return learned(state, agg, d), x - step, d * p.float_bits
