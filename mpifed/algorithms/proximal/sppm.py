"""SPPM-AS: stochastic proximal point with arbitrary cohort sampling, the cohort's prox solved by K exchanges
(Richtarik, Sadiev, Demidovich 2024, arXiv:2405.15941, SPPM; Yi, Kharisov, Sokolov, Richtarik 2024, "Cohort
Squeeze", arXiv:2406.01115, Alg. SPPM-AS with K local communication rounds per cohort).

Round t: a cohort S_t ~ D (:mod:`~mpifed.algorithms.proximal.sampling`, weights w_i = 1/(n p_i)), then

    x_{t+1} ~= prox_{gamma (f_S + R)}(x_t) = argmin_y  f_S(y) + ||y - x_t||^2 / (2 gamma) + lam1 ||y||_1,
    f_S = sum_{i in S_t} w_i f_i,   R = lam1 ||.||_1 (``--l1``; B7's "put lam1 ||y||_1 inside the prox").

The inner problem phi is solved inexactly, warm-started at x_t, by K iterations of accelerated proximal gradient
for a strongly convex objective (Nesterov 2004, constant-momentum scheme (2.2.22); Beck 2017, Sec. 10.7.7 with
the prox): from y_0 = v_0 = x_t,

    y_{j+1} = prox_{eta R}(v_j - eta (grad f_S(v_j) + (v_j - x_t)/gamma)),
    v_{j+1} = y_{j+1} + beta (y_{j+1} - y_j),          x_{t+1} = y_K,

eta = 1/(L_max + 1/gamma) and beta = (1 - sqrt(q))/(1 + sqrt(q)), q = (mu + 1/gamma)/(L_max + 1/gamma), with
mu = lam and L_max = max_i L_i bounding the smoothness of f_S (sum_{i in S} w_i = 1 for every sampling here).
Each inner iteration is one exchange: the server broadcasts v_j to the cohort, each member i sends
w_i grad f_i(v_j) (d floats); the round's first exchange (v_0 = x_t) is the driver's round exchange, the other
K - 1 are in-round queries, so ``exchanges`` grows by K per round. Downlink: each broadcast (v_1..v_{K-1} and
x_{t+1}) counted for the cohort, card(S_t)/n d floats per client. Clients outside S_t send nothing; all clients'
f_i(x_t), grad f_i(x_t) feed the trace's metrics only.

Full sampling with an exact inner solve is the proximal point method, ||x_{t+1} - x*|| <= ||x_t - x*|| / (1 + gamma mu)
(B7's fidelity check). Theory (Richtarik et al. 2024, Thm. for SPPM-AS, exact prox): any gamma > 0 converges
linearly to a neighbourhood of size O(gamma sigma^2), sigma^2 = E||grad f_S(x*)||^2 (zero for full sampling).
Defaults: gamma = 1/mu (a contraction of at least 1/2 per exact step) and K = 10; ``--step-size`` sets gamma,
``--inner-rounds`` K.

``--step-size auto``: the theorem's step for the run's target, fixed at setup before round 0. The theorem (SPPM-AS,
exact prox, mu_i-strongly convex f_i, no smoothness):

    E||x_t - x*||^2 <= (1 + gamma mu_AS)^(-2t) ||x_0 - x*||^2 + gamma sigma^2 / (gamma mu_AS^2 + 2 mu_AS),
    mu_AS = min_{S in supp D} sum_{i in S} mu_i / (n p_i),     sigma^2 = E||grad f_S(x*)||^2,

with mu_AS and sigma^2 in closed form per sampling (:func:`~mpifed.algorithms.proximal.sampling.strong_convexity`,
:func:`~mpifed.algorithms.proximal.sampling.variance`); mu_i = lam on the logistic problem, lam + lambda_min(A_i^T
A_i / m_i) on least squares (each client's Gram matrix, exactly). The target is eps = (tol / L)^2 in ||x - x*||^2
(``--tol``; L = lam + c lambda_max((1/n) sum_i A_i^T A_i / m_i), P's smoothness constant, so that ||x - x*||^2 <= eps
gives ||grad P(x)|| <= tol; with the L1 term eps = (tol / (2L))^2, as ||G_{1/L}(x)|| <= 2L ||x - x*||). The step is the
largest gamma whose neighbourhood term is at most eps/2:

    gamma = 2 eps mu_AS / (2 sigma^2 - eps mu_AS^2)   if sigma^2 > eps mu_AS^2 / 2,   capped at 1/mu_AS;
    gamma = 1/mu_AS                                   otherwise (any gamma meets the target; full sampling: sigma^2 = 0),

the cap being the default's rule (an exact step contracts by at least 1/2) with mu_AS for lam; then
(1 + gamma mu_AS)^(-2t) ||x_0 - x*||^2 <= eps/2 after t >= log(2 ||x_0 - x*||^2 / eps) / (2 log(1 + gamma mu_AS))
rounds. When the step is below the cap and that t exceeds ``--rounds`` (small cohorts and a tight ``--tol`` give
steps that need some 10^15 rounds), auto takes instead the step whose bound after ``--rounds`` rounds is least,
argmin over gamma in (0, 1/mu_AS] of (1 + gamma mu_AS)^(-2R) ||x_0 - x*||^2 + gamma sigma^2 / (gamma mu_AS^2 + 2 mu_AS)
(``rule`` "budget" in the trace's method attribute and on the console; "target" otherwise). When even that bound is
no better than ||x_0 - x*||^2 (the theorem promises no progress in the budget), the run is refused before round 0. The step depends on
``--tol`` and ``--rounds``, so a resume must keep both (it is refused otherwise). This rule is *derived* from the theorem as stated in ALGORITHMS-NEXT B7: the papers' corollary (a step
for a target accuracy) was not reachable here, only 2405.15941's abstract and introduction. With the L1 term
(R = lam1 ||.||_1 inside every prox, sum_{i in S} w_i = 1) the theorem applies to f_i + R, whose subgradient at x*
may be taken as grad f_i(x*) - grad f(x*) (0 is in grad f(x*) + d R(x*)): sigma^2 is then the variance form
E||grad f_S(x*) - grad f(x*)||^2, the form used throughout (without L1 it equals E||grad f_S(x*)||^2 at the exact x*,
and drops the reference solve's residual). The per-client gradients at x*, the Gram matrices and the mu_i come
in one setup exchange (:func:`client_reference`), outside the bit ledger like GD's Gram matrices for L. The theorem
assumes an exact prox: the K inner steps add their own error. The blog that labels SPPM-AS "adaptive stepsizes"
misreads AS: in the paper it is arbitrary sampling, and gamma is a constant.

Checked against ALGORITHMS-NEXT B7 ([R]: definitions from the abstracts); the papers' bodies were not read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from ... import tri
from ...errors import ConfigError
from ...network import flops as fl
from ...problems import l1
from ..base import Query, Uplink
from ..first_order.fedavg import max_smoothness
from ..first_order.gd import smoothness_of_P
from . import sampling

DEFAULT_K = 10
AUTO = "auto"  # --step-size auto
MU_FLOOR = 1e-12  # auto refuses mu_AS <= MU_FLOOR L (a singular client Gram matrix with lam = 0 gives about 1e-16 L)


@dataclass(frozen=True)
class Auto:
    """``--step-size auto``: tol and c (sup l'') from the options; at setup, eps = (tol / L)^2 (tol / (2L) with the
    L1 term), mu_AS, sigma^2 and whether gamma is the cap 1/mu_AS."""

    tol: float
    curvature: float
    rounds: int = 0
    eps: float | None = None
    mu_AS: float | None = None
    sigma2: float | None = None
    capped: bool | None = None
    rule: str | None = None


def auto_step(eps: float, mu_AS: float, sigma2: float) -> tuple[float, bool]:
    """(gamma, capped): the largest gamma with gamma sigma^2 / (gamma mu_AS^2 + 2 mu_AS) <= eps/2, at most 1/mu_AS."""
    cap = 1.0 / mu_AS
    if 2.0 * sigma2 <= eps * mu_AS ** 2:
        return cap, True
    gamma = 2.0 * eps * mu_AS / (2.0 * sigma2 - eps * mu_AS ** 2)
    return (cap, True) if gamma >= cap else (gamma, False)


@dataclass(frozen=True)
class Params:
    """gamma: the prox step; K: inner exchanges per cohort; kind, count: the sampling; L_max, mu: the inner step;
    auto: the theorem's step (``--step-size auto``; gamma is NaN until :func:`server_reference` sets it)."""

    gamma: float
    K: int
    kind: str
    count: int | None
    n: int
    L_max: float
    mu: float
    lam1: float = 0.0
    seed: int = 0
    float_bits: int = 32
    auto: Auto | None = None
    uses = ("step_size", "inner_rounds", "sampling")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        kind, count = sampling.parse(opts.sampling or "full")
        sampling.check(kind, count, fed.n_clients)
        if opts.step_size is None and opts.lam <= 0:
            raise ConfigError("--step-size has no default for sppm when --lam = 0 (gamma = 1/mu, mu = lam); "
                              "give --step-size > 0 or auto")
        auto = Auto(opts.tol, fed.block.curvature_bound, opts.rounds) if opts.step_size == AUTO else None
        gamma = math.nan if auto else opts.step_size or 1.0 / opts.lam
        L_max = max_smoothness(fed)  # collective: every rank calls from_options
        return cls(gamma, opts.inner_rounds or DEFAULT_K, kind, count, fed.n_clients, L_max, opts.lam, opts.l1,
                   opts.seed, opts.float_bits, auto)

    def __repr__(self) -> str:  # the dataclass's, without auto when the step is given (the traces' method attribute)
        shown = [f for f in fields(self) if f.name != "auto" or self.auto is not None]
        return f"Params({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in shown)})"

    @property
    def eta(self) -> float:
        return 1.0 / (self.L_max + 1.0 / self.gamma)

    @property
    def beta(self) -> float:
        root = math.sqrt((self.mu + 1.0 / self.gamma) * self.eta)
        return (1.0 - root) / (1.0 + root)


@dataclass(frozen=True)
class Inner:
    """The server between inner exchanges: x_t, the last y_j, the point v_j whose gradient comes next, and j."""

    x: np.ndarray
    y: np.ndarray
    v: np.ndarray
    j: int = 0


def client_init(p: Params, block, x0, streams):
    return None, None


def client_reference(p: Params, block, x_star):
    """``--step-size auto`` only (None otherwise): each client's grad f_i(x*) and mu_i (gathered) and its Gram
    matrix A_i^T A_i / m_i (summed, for L). A setup message outside the bit ledger."""
    if p.auto is None:
        return None
    _, grad, _ = block.derivatives(x_star, hessian=False)
    gram = block.gram()
    mu = np.full(block.n, p.mu)
    if block.curvature_floor and block.n:
        host = np.asarray(block.bk.to_host(gram))
        mu = mu + block.curvature_floor * np.linalg.eigvalsh(tri.unpack(host, block.d))[:, 0]
    zero = np.zeros(block.n)
    return Uplink(block.bk.xp.zeros(block.n), None, zero, zero, {"gram": gram}, {"grad": grad, "mu": mu[:, None]})


def server_reference(p: Params, agg, x_star, x0) -> Params:
    """Rank 0: gamma, eps, mu_AS and sigma^2 of ``--step-size auto`` from the setup exchange at x*; the budget's step
    when the theorem needs more rounds than ``--rounds`` to bring its contraction term to eps/2."""
    L = smoothness_of_P(agg, agg.gathered["grad"].shape[1], p.mu, p.auto.curvature)
    eps = (p.auto.tol / (2.0 * L if p.lam1 else L)) ** 2
    mu_AS = sampling.strong_convexity(p.kind, p.count, agg.gathered["mu"][:, 0])
    sigma2 = sampling.variance(p.kind, p.count, agg.gathered["grad"])
    if not mu_AS > MU_FLOOR * L:  # zero to the rounding of the Gram matrices' eigenvalues
        raise ConfigError(f"--step-size auto needs mu_AS > 0: mu_AS = {mu_AS:.3e} on this sampling (<= {MU_FLOOR:g} L, "
                          f"zero to rounding; mu_i = lam + lambda_min of each client's Gram matrix); give --lam > 0 or "
                          f"a number for --step-size")
    gamma, capped = auto_step(eps, mu_AS, sigma2)
    dist0 = float(np.sum((np.asarray(x0) - np.asarray(x_star)) ** 2))
    needed = rounds_to_target(gamma, mu_AS, dist0, eps)
    rule = "target"
    if not capped and p.auto.rounds and needed > p.auto.rounds:  # at the cap no step gets there sooner
        gamma, bound = budget_step(p.auto.rounds, mu_AS, sigma2, dist0)
        rule = "budget"
        if bound >= dist0 * (1.0 - 1e-9):  # the bound is vacuous: no step beats standing still
            raise ConfigError(f"--step-size auto: the theorem promises no progress in --rounds {p.auto.rounds} on this "
                              f"sampling (its bound is at least ||x0 - x*||^2 = {dist0:.3e} for every step; mu_AS = "
                              f"{mu_AS:.3e}, sigma^2 = {sigma2:.3e}); give a number for --step-size, larger cohorts or "
                              f"more rounds")
    return replace(p, gamma=gamma, auto=replace(p.auto, eps=eps, mu_AS=mu_AS, sigma2=sigma2, capped=capped, rule=rule))


def theorem_bound(gamma: float, t: int, mu_AS: float, sigma2: float, dist0: float) -> float:
    """The theorem's bound on E||x_t - x*||^2: (1 + gamma mu_AS)^(-2t) ||x_0 - x*||^2 + gamma sigma^2 / (gamma mu_AS^2 + 2 mu_AS)."""
    return math.exp(-2.0 * t * math.log1p(gamma * mu_AS)) * dist0 + gamma * sigma2 / (gamma * mu_AS ** 2 + 2.0 * mu_AS)


def rounds_to_target(gamma: float, mu_AS: float, dist0: float, eps: float) -> float:
    """Rounds after which the contraction term is at most eps/2: log(2 ||x_0 - x*||^2 / eps) / (2 log(1 + gamma mu_AS))."""
    return 0.0 if 2.0 * dist0 <= eps else math.ceil(math.log(2.0 * dist0 / eps) / (2.0 * math.log1p(gamma * mu_AS)))


def budget_step(t: int, mu_AS: float, sigma2: float, dist0: float) -> tuple[float, float]:
    """(gamma, bound): the gamma in (0, 1/mu_AS] whose theorem bound after t rounds is least: the best of 4001
    log-spaced steps over 80 e-folds below the cap, refined by a bounded Brent search between its neighbours (the
    bound is flat at ||x_0 - x*||^2 for small steps, so a search from the whole interval can stall there)."""
    from scipy.optimize import minimize_scalar

    top = -math.log(mu_AS)
    grid = np.linspace(top - 80.0, top, 4001)
    values = [theorem_bound(math.exp(s), t, mu_AS, sigma2, dist0) for s in grid]
    j = int(np.argmin(values))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    res = minimize_scalar(lambda s: theorem_bound(math.exp(s), t, mu_AS, sigma2, dist0), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-12})
    s = res.x if res.fun <= values[j] else grid[j]
    gamma = min(math.exp(s), 1.0 / mu_AS)
    return gamma, theorem_bound(gamma, t, mu_AS, sigma2, dist0)


def describe(p: Params) -> str | None:
    """The run's note on the console: the auto step and its constants (None with a given step)."""
    if p.auto is None:
        return None
    a = p.auto
    why = (" (the cap 1/mu_AS)" if a.capped else
           f" (the least theorem bound after --rounds {a.rounds}: --tol's step needs more rounds)" if a.rule == "budget" else "")
    return (f"--step-size auto: gamma = {p.gamma:.6e}{why}, mu_AS = {a.mu_AS:.6e}, "
            f"sigma^2 = {a.sigma2:.6e}, target E||x - x*||^2 <= eps = {a.eps:.3e}")


def server_init(p: Params, agg, x0):
    return None


def _weights(p: Params, block, streams):
    """(w_i of the block's clients on the backend, the members as a host bool mask)."""
    w = sampling.cohort(p.kind, p.count, p.n, p.seed, streams.round)[np.asarray(streams.client_ids, dtype=np.int64)]
    return block.bk.xp.asarray(w), w > 0


def _uplink(p: Params, block, streams, loss, grad):
    w, member = _weights(p, block, streams)
    values = np.where(member, block.d * p.float_bits, 0.0)
    fields = {"g": w[:, None] * grad, "member": block.bk.xp.asarray(member, dtype=np.float64)}
    return Uplink(loss, grad, values, np.zeros(block.n), fields)


def client_step(p: Params, block, state, x, streams):
    loss, grad, _ = block.derivatives(x, hessian=False)  # at x_t = v_0: the metrics, and the first inner gradient
    return state, _uplink(p, block, streams, loss, grad)


def client_query(p: Params, block, state, point, streams):
    _, grad, _ = block.derivatives(point, hessian=False)
    up = _uplink(p, block, streams, block.bk.xp.zeros(block.n), grad)
    return state, replace(up, grad=None)


def server_step(p: Params, state, x, agg):
    return _inner(p, Inner(x, x, x), x, agg)


def server_resume(p: Params, inner: Inner, x, agg):
    return _inner(p, inner, x, agg)


def _inner(p: Params, inner: Inner, x, agg):
    """One accelerated proximal gradient step on phi from v_j, with grad f_S(v_j) summed in ``agg``."""
    v = inner.v
    grad_phi = agg.fields["g"] + (v - inner.x) / p.gamma
    y = l1.prox(v - p.eta * grad_phi, p.eta, p.lam1)
    down = float(agg.fields["member"]) / agg.n * len(x) * p.float_bits  # to the cohort
    if inner.j + 1 == p.K:
        return None, y, down
    v_next = y + p.beta * (y - inner.y)
    return Query(v_next, Inner(inner.x, y, v_next, inner.j + 1), down)


def flops(p: Params, s) -> fl.Work:
    """K inner iterations per round, the first on the round's exchange at x_t, the other K - 1 as queries. Each:
    a cohort member's f_i and grad f_i at v_j and w_i grad (d) (every client is charged a member's work: the
    clock's slowest participant is a member; this implementation also derives the others, for the metrics at x_t);
    the server's sum (d floats each), grad phi = g + (v - x_t)/gamma (3d), y = prox(v - eta grad phi) (2d, the
    soft-threshold 3d when lam1 > 0) and, on every iteration but the last, v = y + beta (y - y_prev) (3d): the
    round's exchange pays it when K > 1, each query (K - 2)/(K - 1) of it (the K - 2 momenta of the K - 1 queries)."""
    inner = fl.aggregate(s, s.d) + 5.0 * s.d + fl.soft_threshold(s.d, p.lam1)
    client = fl.loss_grad(s) + s.d
    momentum = 3.0 * s.d
    queries = p.K - 1
    return fl.Work(client, inner + (momentum if queries else 0.0), query=client,
                   query_server=inner + (momentum * (queries - 1) / queries if queries else 0.0))
