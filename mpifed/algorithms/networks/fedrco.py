"""FedRCO: Federated Robust Curvature Optimization (ICML 2026 submission, sec. 4), and FedRCO-ori.

Clients keep their local model theta_c, K-FAC factors and inverses, and the monitor's history between rounds.
Round t, participant c, global model theta^t:

1. Curvature-preserving aggregation (eq. 12-13): on ``eval_batch`` of its samples (stream "eval"; default one
   mini-batch, b, as the paper does not say which data the accuracies are measured on) the client
   measures the accuracy Acc' of its old local model and Acc of theta^t;
   theta_c <- gamma theta^t + (1 - gamma) theta_c with gamma = Acc'/(Acc' + Acc) if Acc' > Acc, else theta^t.
   FedRCO-ori (``--algorithm fedrco-ori`` or ``--aggregation mean``): theta_c <- theta^t (plain averaging).
2. K local steps, one mini-batch each (sec. 4.1):

   * K-FAC factors per layer, EMA (eq. 7): A_k = alpha E[a a^T] + (1 - alpha) A_{k-1}, same for G
     (conv layers: KFC's Omega and Gamma from the unfolded patches); :mod:`mpifed.problems.nn.factors`.
   * Lazy inverse (sec. 4.3): the damped inverses (eq. 6) (A + pi sqrt(eps) I)^{-1}, (G + sqrt(eps)/pi I)^{-1}
     are recomputed every T_inv local steps of the client (and whenever it has none), else reused;
     pi = sqrt((tr A / dim A) / (tr G / dim G)) (Martens & Grosse 2015 sec. 6.3; see :mod:`mpifed.problems.nn.curvature`).
   * Preconditioned gradient (eq. 8) per layer: A_d^{-1} grad_W G_d^{-1}; its norm (eq. 9) is the sum over
     layers of the Frobenius norms.
   * Look-ahead monitor (eq. 10): S_k = ||g~_k|| / (mean(H) + xi) with H a sliding window of past norms.
     mean(H) is the mean of the norms: the paper's line under eq. 10 writes squared norms, which would make S_k
     scale as 1/||g~|| instead of the "relative divergence of the current step compared to recent steps" it
     describes, with thresholds tau_low 10 and tau_high 1000 on a ratio. Where the paper is silent or loose,
     these are choices, each with its flag:

     - window: the paper's H = {||g~_{K-k}||, ..., ||g~_{K-1}||} with mean(H) over the K local steps; here H
       holds the last ``--monitor-window`` (10) norms, and only accepted steps (S_k <= tau_low) enter it, so
       a diverging run does not raise its own baseline;
     - history: the paper does not say whether H survives the round; ``--monitor-history run`` (default)
       keeps H across rounds, ``round`` empties it when the client starts its round;
     - warm-up: the paper does not say how a client with an empty H is scored; here a client is scored once H
       holds ``--monitor-warmup`` (3) norms (at a start, after a reset, each round with ``--monitor-history
       round``), as a baseline of one norm taken when the inverse is fresh would score the steps that follow
       with a stale inverse against it;
     - patience: "remains above S_t > tau_low for multiple local epochs" is ``--patience`` (3) consecutive
       steps above tau_low, which make a hard reset.

     At the paper's settings (step 0.00625, K = 20, b = 32), FedRCO's CNN on MNIST over 20 IID clients took
     no rollback and no reset in 6 rounds (docs/methods/networks.md); ``precond_max_<layer>`` in the trace keeps,
     per round, each layer's largest ||g~^(l)|| over the participants' local steps (Fig. 4).
   * Resilience (eq. 11): S_k <= tau_low: theta -= eta g~; tau_low < S_k < tau_high: soft rollback,
     theta -= eta g~_stable with g~_stable = g~ min(1, stable_norm / ||g~||) (the paper's "stable gradient upper
     bound", set to 10 in App. E.3); S_k >= tau_high, or > tau_low for ``patience`` consecutive steps, or a
     non-finite g~: hard reset: factors, inverses and history discarded, theta_c <- theta^t, no step. A factor
     whose damped inverse cannot be trusted (singular, indefinite, overflowed; see
     :meth:`~mpifed.problems.nn.factors.Factor.inverse`) gives a NaN g~, and so a hard reset, also with
     ``--no-monitor``.
3. Uplink: theta_c (P floats); the server averages the participants' models, theta^{t+1} = mean_S theta_c.

Every action goes to the trace's ``events`` (round, client, step, score, action: 1 rollback, 2 reset); each
round's row counts rollbacks, resets and inversions and keeps the largest score.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from . import AGGREGATIONS
from ...errors import ConfigError
from ...problems.nn.curvature import check_eps
from ...problems.nn.factors import Factor, Inverse, rows_of
from ..base import to_participants
from ..first_order.fedavg import _or, check_local
from .local import (COMMON_USES, DEFAULT_BATCH, FEDRCO_K, FEDRCO_STEP, Clock, common_fields, local_step, start,
                    timing_report, uplink)
from .local import client_metrics  # noqa: F401  (x^R's row: metrics only)
from ...network import flops as fl

XI = 1e-12  # xi of eq. 10
HISTORIES = ("run", "round")  # --monitor-history: H kept across rounds, or emptied when a client starts its round
NORMAL, ROLLBACK, RESET = 0, 1, 2


@dataclass(frozen=True)
class Params:
    """Paper symbols: eta_l, K, eps (damping), alpha (EMA), T_inv, tau_low, tau_high; the monitor's window,
    warm-up, history ('run' or 'round') and patience (choices: see the module docstring), the stable norm,
    aggregation ('curvature' or 'mean'), the evaluation batch; tau of n clients."""

    eta_l: float
    K: int
    eps: float = 0.03
    alpha: float = 0.95
    T_inv: int = 200
    monitor: bool = True
    tau_low: float = 10.0
    tau_high: float = 1000.0
    window: int = 10
    warmup: int = 3
    history: str = "run"
    patience: int = 3
    stable_norm: float = 10.0
    aggregation: str = "curvature"
    eval_batch: int = 32
    tau: int = 1
    n: int = 1
    float_bits: int = 32
    decay: float = 0.0
    uses = COMMON_USES + ("damping", "ema_decay", "inverse_every", "monitor", "tau_low", "tau_high",
                          "monitor_window", "monitor_warmup", "monitor_history", "patience", "stable_norm",
                          "aggregation", "eval_batch")

    def __post_init__(self):
        check_local(self)
        check_eps(self.eps)
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"ema_decay alpha = {self.alpha!r} is out of range; valid: 0 < alpha <= 1")
        if int(self.T_inv) != self.T_inv or self.T_inv < 1:
            raise ConfigError(f"inverse_every T_inv = {self.T_inv!r} is out of range; valid: an integer >= 1")
        if not 1 < self.tau_low < self.tau_high:
            raise ConfigError(f"tau_low = {self.tau_low!r}, tau_high = {self.tau_high!r}; valid: 1 < tau_low < tau_high")
        if not 1 <= self.warmup <= self.window:
            raise ConfigError(f"monitor_warmup = {self.warmup!r} is out of range; valid: 1 <= warm-up <= "
                              f"monitor_window = {self.window}")
        if self.history not in HISTORIES:
            raise ConfigError(f"monitor_history = {self.history!r}; valid: {', '.join(HISTORIES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation = {self.aggregation!r}; valid: {', '.join(AGGREGATIONS)}")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        default_agg = "mean" if opts.algorithm == "fedrco-ori" else "curvature"
        if opts.algorithm == "fedrco-ori" and opts.aggregation == "curvature":
            raise ConfigError("--aggregation curvature contradicts --algorithm fedrco-ori (plain averaging); "
                              "use --algorithm fedrco")
        window = _or(opts.monitor_window, 10)
        return cls(**common_fields(opts, fed, FEDRCO_STEP, FEDRCO_K), eps=_or(opts.damping, 0.03), alpha=_or(opts.ema_decay, 0.95),
                   T_inv=_or(opts.inverse_every, 200), monitor=_or(opts.monitor, True),
                   tau_low=_or(opts.tau_low, 10.0), tau_high=_or(opts.tau_high, 1000.0),
                   window=window, warmup=_or(opts.monitor_warmup, min(3, window)),
                   history=_or(opts.monitor_history, "run"), patience=_or(opts.patience, 3),
                   stable_norm=_or(opts.stable_norm, 10.0), aggregation=_or(opts.aggregation, default_agg),
                   eval_batch=_or(opts.eval_batch, _or(opts.batch_size, DEFAULT_BATCH)))


@dataclass
class ClientState:
    """Per client of the block: local model, factors and inverses per layer, lazy-inverse and monitor state."""

    theta: object
    A: list
    G: list
    Ainv: list
    Ginv: list
    fresh: np.ndarray      # (n,) no statistics yet: the next batch is the factor
    has_inv: np.ndarray    # (n,) an inverse exists
    since: np.ndarray      # (n,) local steps since the last inversion
    history: np.ndarray    # (n, window) norms of accepted steps, NaN where empty
    strikes: np.ndarray    # (n,) consecutive steps above tau_low


@dataclass
class ServerState:
    report: dict


def client_init(p, block, x0, streams):
    xp, model, n, b = block.bk.xp, block.model, block.n, block.batch_size
    A, G = [], []
    for layer, R in zip(model.weighted, model.batch_rows(b)):
        A.append(Factor.for_layer(n, R, layer.shape[0], p.alpha, xp))
        G.append(Factor.for_layer(n, R, layer.shape[1], p.alpha, xp))
    state = ClientState(theta=xp.array(xp.broadcast_to(x0, (n, block.d))), A=A, G=G,
                        Ainv=[Inverse.empty_like(f, n, xp) for f in A], Ginv=[Inverse.empty_like(f, n, xp) for f in G],
                        fresh=np.ones(n, bool), has_inv=np.zeros(n, bool), since=np.zeros(n, np.int64),
                        history=np.full((n, p.window), np.nan), strikes=np.zeros(n, np.int64))
    return state, None


def server_init(p, agg, x0):
    return ServerState({})


def _accuracy(p, block, theta, streams, on):
    X, y = block.batch(streams, "eval", on, size=p.eval_batch)
    z = block.model.logits(theta, X, block.bk.xp)
    return (z.argmax(axis=-1) == y).mean(axis=1)


def aggregate(p, block, state, x, streams, on, idx):
    """Eq. 12-13: the participants' starting models ``(|S|, P)``."""
    xp = block.bk.xp
    if p.aggregation == "mean":
        return xp.array(xp.broadcast_to(x, (len(idx), block.d)))
    old = state.theta[idx]
    acc_local = _accuracy(p, block, old, streams, on)
    acc_global = _accuracy(p, block, xp.broadcast_to(x, old.shape), streams, on)
    gamma = acc_local / xp.maximum(acc_local + acc_global, 1e-300)
    blend = gamma[:, None] * x + (1 - gamma[:, None]) * old
    return xp.where((acc_local > acc_global)[:, None], blend, x)


def _invert(p, state, sel, idx, xp):
    """Recompute the damped inverses (eq. 6) of clients ``idx[sel]``."""
    who = idx[sel]
    r = math.sqrt(p.eps)
    for l, (A, G) in enumerate(zip(state.A, state.G)):
        ta, tg = A.trace(who, xp) / A.D, G.trace(who, xp) / G.D
        ok = (ta > 0) & (tg > 0)  # else pi = 1 (a factor with a trace <= 0 is refused by its inversion)
        pi = xp.sqrt(xp.where(ok, ta / xp.where(ok, tg, 1.0), 1.0))
        state.Ainv[l].put(xp.asarray(who), A.inverse(who, pi * r, xp))
        state.Ginv[l].put(xp.asarray(who), G.inverse(who, r / pi, xp))


def client_step(p, block, state, x, streams):
    xp, model = block.bk.xp, block.model
    clock = Clock("curvature", "inversion", "aggregation")
    first = start(block, x, streams, clock)
    on = first.on
    idx_host = np.flatnonzero(on)
    idx = xp.asarray(idx_host)
    events = np.zeros((block.n, p.K, 2))
    inversions = np.zeros(block.n)
    # per client, the largest ||g~^(l)|| of each layer (eq. 9) and the largest applied step over its K steps
    layer_max, applied_max = np.zeros((block.n, len(model.weighted))), np.zeros(block.n)
    theta = None
    if len(idx_host):
        t0 = time.perf_counter()
        theta = aggregate(p, block, state, x, streams, on, idx).astype(x.dtype, copy=False)
        if p.history == "round":
            state.history[idx_host] = np.nan
        clock.add("aggregation", t0)
        eta = local_step(p, streams)
        for k in range(p.K):
            t0 = time.perf_counter()
            X, lab = block.batch(streams, k, on)
            _, g, stats = block.loss_grad(theta, X, lab, stats=True)
            t0 = clock.add("forward_backward", t0)
            fresh = state.fresh[idx_host]
            for l, st in enumerate(stats):
                state.A[l].update(idx_host, rows_of(st, "a"), p.alpha, fresh, xp)
                state.G[l].update(idx_host, rows_of(st, "g"), p.alpha, fresh, xp)
            state.fresh[idx_host] = False
            t0 = clock.add("curvature", t0)
            need = ~state.has_inv[idx_host] | (state.since[idx_host] >= p.T_inv)
            if need.any():
                _invert(p, state, need, idx_host, xp)
                state.has_inv[idx_host[need]] = True
                state.since[idx_host[need]] = 0
                inversions[idx_host[need]] += 1
            t0 = clock.add("inversion", t0)
            step = []
            for l, dW in enumerate(model.views(g)):
                left = state.Ainv[l].take(idx).left(dW)
                step.append(state.Ginv[l].take(idx).left(left.transpose(0, 2, 1)).transpose(0, 2, 1))
            layer_norms = [xp.sqrt((s * s).sum(axis=(1, 2))) for s in step]
            norm = np.asarray(block.bk.to_host(sum(layer_norms)))
            layer_max[idx_host] = np.fmax(layer_max[idx_host], np.asarray(block.bk.to_host(xp.stack(layer_norms, 1))))
            step = model.flatten(step, xp)
            theta, action, score, applied = _resilience(p, state, idx_host, theta, step, norm, eta, x, xp)
            theta = theta.astype(x.dtype, copy=False)  # the factors are float64: keep the model in the run's dtype
            applied_max[idx_host] = np.fmax(applied_max[idx_host], applied)
            events[idx_host, k] = np.stack([score, action], axis=1)
            state.since[idx_host] += 1
            clock.add("curvature", t0)
        state.theta[idx] = theta
    else:
        theta = xp.zeros((0, block.d))
    fields = {"theta": theta}
    gathered = {f"precond_max_{layer.name}": layer_max[:, [l]] for l, layer in enumerate(model.weighted)}
    gathered["step_max"] = applied_max[:, None]
    up = uplink(p, block, first, fields, clock, {**gathered, "events": events} if p.monitor else gathered)
    counts = {"rollbacks": (events[:, :, 1] == ROLLBACK).sum(axis=1), "resets": (events[:, :, 1] == RESET).sum(axis=1),
              "inversions": inversions}
    up.fields.update({k: xp.asarray(v, dtype=np.float64)[:, None] for k, v in counts.items()})
    return state, up


def _resilience(p, state, idx, theta, step, norm, eta, x, xp):
    """Eq. 10-11 for the participants ``idx`` (host): (new theta, action (|S|,), score (|S|,), the norm of the step
    taken (|S|,)). A non-finite g~ (a factor refused by the inversion guard, an overflow) is a hard reset with or
    without the monitor."""
    n = len(idx)
    hist = state.history[idx]
    count = np.isfinite(hist).sum(axis=1)
    scored = count >= p.warmup
    base = np.where(scored, np.nanmean(np.where(scored[:, None], hist, 0.0), axis=1), np.nan)
    score = np.where(scored, norm / (np.nan_to_num(base) + XI), 0.0)
    score = np.where(np.isfinite(norm), score, np.inf)
    action = np.full(n, NORMAL)
    if p.monitor:
        high = score > p.tau_low
        strikes = np.where(high, state.strikes[idx] + 1, 0)
        action = np.where(high, ROLLBACK, NORMAL)
        action = np.where((score >= p.tau_high) | (strikes >= p.patience), RESET, action)
        state.strikes[idx] = np.where(action == RESET, 0, strikes)
    action = np.where(np.isfinite(norm), action, RESET)
    factor = np.where(action == ROLLBACK, np.minimum(1.0, p.stable_norm / np.where(norm > 0, norm, 1.0)), 1.0)
    factor = np.where(action == RESET, 0.0, factor)
    safe = xp.asarray(np.isfinite(norm) | (action != RESET))
    new = theta - eta * xp.asarray(factor)[:, None] * xp.where(safe[:, None], step, 0.0)
    reset = action == RESET
    if reset.any():
        new[xp.asarray(np.flatnonzero(reset))] = x
        who = idx[reset]
        state.fresh[who], state.has_inv[who], state.since[who] = True, False, 0
        state.history[who] = np.nan
    accepted = action == NORMAL
    if accepted.any():
        who = idx[accepted]
        state.history[who] = np.concatenate([state.history[who][:, 1:], norm[accepted][:, None]], axis=1)
    applied = np.where(action == RESET, 0.0, factor * np.where(np.isfinite(norm), norm, 0.0))
    return new, action, np.where(np.isfinite(score), score, np.finfo(float).max), applied


def server_step(p, state, x, agg):
    """theta^{t+1} = mean_S theta_c (the participants' local models)."""
    state.report = {**timing_report(agg), "rollbacks": float(agg.fields["rollbacks"].sum()),
                    "resets": float(agg.fields["resets"].sum()), "inversions": float(agg.fields["inversions"].sum())}
    if "events" in agg.gathered:
        state.report["anomaly_max"] = float(agg.gathered["events"][:, :, 0].max())
    # Fig. 4's trajectories: the largest norms over the participants (0 outside S) and their K local steps
    norms = {k: float(v.max()) for k, v in agg.gathered.items() if k.startswith(("precond_max_", "step_max"))}
    state.report.update(norms, precond_max=max(v for k, v in norms.items() if k.startswith("precond_max_")))
    return state, agg.fields["theta"] / agg.participants, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """Per participant: the curvature-preserving aggregation's two accuracies on ``eval_batch`` samples (two
    forward passes) and the mix (3d); K local steps, each an SGD step, both K-FAC factors with their EMA, the
    preconditioned gradient A^{-1} grad G^{-1} and the monitor's norm (2d); the damped inverses every T_inv local
    steps of the client, amortised at K / T_inv per round (the first, at a client's first step or after a reset,
    included in that average). The server averages the models."""
    sample = fl.forward(s)
    aggregation = (2.0 * p.eval_batch * sample + 3.0 * s.d) if p.aggregation == "curvature" else 0.0
    step = (fl.network_step(s) + fl.foof_factors(s) + fl.gradient_factors(s) + fl.preconditioned_update(s, True)
            + 2.0 * s.d)
    inverses = p.K / p.T_inv * fl.factor_inverses(s, outputs=True)
    return fl.Work(fl.per_client(aggregation + p.K * step + inverses + s.d, s), fl.aggregate(s, s.d) + s.d)
