"""SPPM-AS's cohort samplings (Yi, Kharisov, Sokolov, Richtarik 2024, "Cohort Squeeze", Sec. 2; Richtarik,
Sadiev, Demidovich 2024, arbitrary sampling): a random cohort S of the n clients, each client i in S with
probability p_i > 0, and the weights w_i = 1/(n p_i) of f_S = sum_{i in S} w_i f_i, so that E f_S = P::

    full             S = all clients, p_i = 1, w_i = 1/n
    nice:tau=T       T clients uniformly without replacement, p_i = T/n, w_i = 1/T
    block[:b=B]      the clients in B contiguous blocks C_1..C_B (ids in order, sizes differing by at most one);
                     block C_j is the cohort with probability q_j = |C_j|/n, so p_i = |C_j|/n, w_i = 1/|C_j|
    stratified[:b=B] the same B blocks as strata; one client uniformly from each, p_i = 1/|C_j|, w_i = |C_j|/n

Every draw comes from (seed, round) only, the same on every rank. For every sampling sum_{i in S} w_i = 1.

The constants of the SPPM-AS theorem (Richtarik, Sadiev, Demidovich 2024) in closed form per sampling, from
the clients' strong-convexity constants mu_i and their gradients g_i at x* (gbar = (1/n) sum_i g_i, C_j the
blocks, s_j the size of C_j, gbar_j the mean of g_i over C_j)::

    mu_AS = min over the support of sum_{i in S} w_i mu_i      sigma^2 = E||sum_{i in S} w_i g_i - gbar||^2
    full             (1/n) sum_i mu_i                           0
    nice:tau=T       mean of the T smallest mu_i                (n - T) / (T (n - 1)) (1/n) sum_i ||g_i - gbar||^2
    block            min_j mean_{i in C_j} mu_i                 sum_j (s_j / n) ||gbar_j - gbar||^2
    stratified       sum_j (s_j / n) min_{i in C_j} mu_i        sum_j (s_j / n)^2 (1/s_j) sum_{i in C_j} ||g_i - gbar_j||^2

(nice: the variance of a mean of T draws without replacement, Cochran, *Sampling Techniques*, 1977, Thm. 2.2;
stratified: the strata are drawn independently, so their variances add.) At x* without the L1 term gbar = 0 and
sigma^2 is the theorem's E||grad f_S(x*)||^2.
"""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...rng import ClientStreams, participants

KINDS = ("full", "nice", "block", "stratified")
DEFAULT_BLOCKS = 10  # B of block / stratified when the spec does not say
VALID = "full, nice:tau=<T>, block[:b=<B>], stratified[:b=<B>]"


def parse(spec: str) -> tuple[str, int | None]:
    """(kind, T or B) of a sampling spec; a one-line ConfigError for anything else."""
    kind, _, rest = spec.partition(":")
    key = {"nice": "tau", "block": "b", "stratified": "b"}.get(kind)
    if kind not in KINDS or (kind == "full" and rest) or (kind == "nice" and not rest):
        raise ConfigError(f"--sampling = {spec!r} is not a sampling; valid: {VALID}")
    if not rest:
        return kind, (DEFAULT_BLOCKS if key == "b" else None)
    name, _, value = rest.partition("=")
    try:
        count = int(value)
    except ValueError:
        count = 0
    if name != key or count < 1:
        raise ConfigError(f"--sampling = {spec!r}: {key} must be an integer >= 1; valid: {VALID}")
    return kind, count


def check(kind: str, count: int | None, n: int) -> None:
    """The cohort size against the clients: tau <= n, B <= n (one-line ConfigError before round 0)."""
    if count is not None and count > n:
        what, sym = ("tau clients per cohort", "tau") if kind == "nice" else ("b blocks", "b")
        raise ConfigError(f"--sampling {kind}: {what} = {count} is out of range; valid: 1 <= {sym} <= n = {n} clients")


def blocks(n: int, b: int) -> np.ndarray:
    """The block (stratum) of every client: B contiguous blocks, sizes differing by at most one."""
    return np.minimum((np.arange(n) * b) // n, b - 1)


def cohort(kind: str, count: int | None, n: int, seed: int, round: int) -> np.ndarray:
    """w_i for all n clients in round k: 1/(n p_i) for the cohort's members, 0 for the others."""
    if kind == "full":
        return np.full(n, 1.0 / n)
    if kind == "nice":
        return participants(seed, n, count, round) / float(count)
    which = blocks(n, count)
    sizes = np.bincount(which, minlength=count).astype(np.float64)
    if kind == "block":  # block j with probability |C_j| / n: one uniform against the cumulative sizes
        u = ClientStreams(seed, np.zeros(1, dtype=np.int64), round).uniform("sppm-block", 1)[0, 0]
        j = min(int(np.searchsorted(np.cumsum(sizes) / n, u, side="right")), count - 1)
        return np.where(which == j, 1.0 / sizes[j], 0.0)
    u = ClientStreams(seed, np.arange(count), round).uniform("sppm-stratum", 1)[:, 0]  # one uniform per stratum
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    chosen = first + np.minimum((u * sizes).astype(np.int64), sizes.astype(np.int64) - 1)
    w = np.zeros(n)
    w[chosen] = sizes / n
    return w


def _block_means(which: np.ndarray, sizes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(b, k) means over each block of the rows of ``values`` (n, k)."""
    onehot = (which[None, :] == np.arange(len(sizes))[:, None]).astype(np.float64)
    return (onehot @ values) / sizes[:, None]


def strong_convexity(kind: str, count: int | None, mu: np.ndarray) -> float:
    """mu_AS = min over the sampling's support of sum_{i in S} w_i mu_i, from the clients' mu_i (n,)."""
    mu = np.asarray(mu, dtype=np.float64)
    n = len(mu)
    if kind == "full":
        return float(mu.mean())
    if kind == "nice":
        return float(np.sort(mu)[:count].mean())
    which = blocks(n, count)
    sizes = np.bincount(which, minlength=count).astype(np.float64)
    if kind == "block":
        return float(_block_means(which, sizes, mu[:, None]).min())
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return float(np.sum(sizes / n * np.minimum.reduceat(mu, first)))


def variance(kind: str, count: int | None, g: np.ndarray) -> float:
    """sigma^2 = E||sum_{i in S} w_i g_i - gbar||^2 of the clients' gradients g (n, d) at x* (closed forms above)."""
    g = np.asarray(g, dtype=np.float64)
    n = len(g)
    e = g - g.mean(axis=0)
    if kind == "full" or n == 1:
        return 0.0
    if kind == "nice":
        return float((n - count) / (count * (n - 1)) * np.mean(np.sum(e * e, axis=1)))
    which = blocks(n, count)
    sizes = np.bincount(which, minlength=count).astype(np.float64)
    means = _block_means(which, sizes, e)  # gbar_j - gbar
    if kind == "block":
        return float(np.sum(sizes / n * np.sum(means * means, axis=1)))
    inside = e - means[which]  # g_i - gbar_j
    spread = _block_means(which, sizes, np.sum(inside * inside, axis=1)[:, None])[:, 0]
    return float(np.sum((sizes / n) ** 2 * spread))
