"""What the neural-network methods share (``--model``; the block is an :class:`~mpifed.problems.nn.block.ImageBlock`).

Round t: every client of the block evaluates its mini-batch 0 at the broadcast x^t (the round's training loss
and stochastic gradient, for the metrics; the participants reuse it as their first local step), then the
participants S take their K local steps on mini-batches 1..K-1, all of them as one batch of per-client weights.
Clients outside S send nothing (0 bits) and keep their state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..base import Uplink, participation
from ...network import flops as fl

DEFAULT_K = 5
DEFAULT_BATCH = 32


def _or(value, default):
    return default if value is None else value


# Local step sizes eta_l when --step-size is not given. FedRCO: its paper's settings (App. E.3: eta = 0.00625,
# K = 20 local steps of b = 32). The others: from 25 centralised steps of b = 32 on FedRCO's CNN (MNIST, test
# accuracy on 1000 test images): SGD 0.1 erratic, 0.03 best; FOOF 0.05 / 0.2 / 0.5 / 1.0 -> 0.20 / 0.60 / 0.77 /
# 0.80; then one notch lower for K = 5 local steps on non-IID clients. jobs/mnist-cnn-tune.toml tunes them per
# method on held-out training images for the MNIST comparison.
SGD_STEP, FOOF_STEP = 0.03, 0.3
# Fed-Sophia: a clipped step moves each weight by at most eta; 0.003 beat 0.001 and 0.01 in 10 rounds of K = 5 on
# the synthetic digits (mlp:hidden=16, 6 clients; test accuracy 0.85 / 0.65 / 0.75, FedAvg 0.68).
SOPHIA_STEP = 0.003
FEDRCO_STEP, FEDRCO_K = 0.00625, 20


def common_fields(opts, fed, default_step: float = SGD_STEP, default_K: int = DEFAULT_K) -> dict:
    """eta_l (``--step-size``, else ``default_step``), K (``--local-steps``, else ``default_K``), b, tau, n,
    float_bits and the step decay of every neural-network method."""
    return {"eta_l": _or(opts.step_size, default_step), "K": _or(opts.local_steps, default_K), "tau": fed.tau or fed.n_clients,
            "n": fed.n_clients, "float_bits": opts.float_bits, "decay": _or(opts.step_decay, 0.0)}


COMMON_USES = ("step_size", "local_steps", "participation", "step_decay", "batch_size")


def local_step(p, streams) -> float:
    """eta_t = eta_l / (1 + c t) (Li et al. 2020, Thm 1; c = 0: constant)."""
    return p.eta_l / (1.0 + p.decay * streams.round)


class Clock:
    """Per-phase seconds of one client step on this rank (forward/backward, curvature, inversion, ...).

    Every phase a method names is reported, 0 when this rank did not enter it (no participants), so that all
    ranks send the same columns to the reduction."""

    def __init__(self, *phases: str):
        self.seconds = dict.fromkeys(("forward_backward",) + phases, 0.0)

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now

    def fields(self, n: int, xp) -> dict:
        """Each phase's rank time split evenly over the block's n clients: the client sum is the sum over ranks."""
        return {f"time_{k}": xp.full((n, 1), v / max(n, 1)) for k, v in self.seconds.items()}


@dataclass(frozen=True)
class Start:
    """Mini-batch 0 at x^t for every client: loss (n,), gradient (n, P); ``on`` the participants (host bool)."""

    loss: object
    grad: object
    on: np.ndarray


def start(block, x, streams, clock: Clock) -> Start:
    xp = block.bk.xp
    t0 = time.perf_counter()
    X, y = block.batch(streams, 0)
    loss, grad, _ = block.loss_grad(xp.broadcast_to(x, (block.n, block.d)), X, y)
    clock.add("forward_backward", t0)
    return Start(loss, grad, participation(xp, streams)[0])


def client_metrics(p, block, state, x, streams) -> Uplink:
    """The row of the final x^R, of which the driver reads only the metrics: every client's mini-batch 0 loss
    and gradient at x^R, as a round's :func:`start` gives them, without the local steps nobody would use (nor
    FedRCO monitor events for a round that updates nothing); nothing is sent."""
    first = start(block, x, streams, Clock())
    return Uplink(first.loss, first.grad, np.zeros(block.n), np.zeros(block.n))


def uplink(p, block, first: Start, rows: dict, clock: Clock, gathered: dict | None = None,
           extra_floats=None) -> Uplink:
    """The participants' rows (``rows``: name -> ``(|S|, ...)``) scattered into (n, ...) zeros and summed by the
    driver; each participant sends len(rows) * P floats (+ ``extra_floats`` ``(|S|,)`` for preconditioners)."""
    xp, on = block.bk.xp, first.on
    idx = xp.asarray(np.flatnonzero(on))
    fields = {}
    for name, value in rows.items():
        full = xp.zeros((block.n,) + value.shape[1:])
        full[idx] = value
        fields[name] = full
    floats = np.where(on, len(rows) * block.d, 0.0)
    if extra_floats is not None:
        floats[on] += extra_floats
    fields.update(clock.fields(block.n, xp))
    return Uplink(first.loss, first.grad, floats * p.float_bits, np.zeros(block.n), fields, gathered or {})


def timing_report(agg) -> dict:
    """The clients' phase times (summed over ranks) for the trace, from the ``time_*`` fields."""
    return {k: float(v.sum()) for k, v in agg.fields.items() if k.startswith("time_")}


@dataclass
class ServerState:
    """The server of a stateless-client method keeps only what it reports to the trace."""

    report: dict


def client_init(p, block, x0, streams):
    return None, None


def server_init(p, agg, x0):
    return ServerState({})


def sgd_flops(K: int, s, per_step: float = 0.0, server: float = 0.0, floats: int = 1) -> fl.Work:
    """K local mini-batch SGD steps (:func:`~mpifed.network.flops.network_step`, plus ``per_step``) on a network,
    sending ``floats`` parameter vectors; the server sums them and steps (2d, plus ``server``)."""
    return fl.Work(fl.per_client(K * (fl.network_step(s) + per_step) + s.d * floats, s),
                   fl.aggregate(s, floats * s.d) + 2.0 * s.d + server)


def foof_flops(K: int, s) -> float:
    """K local FOOF steps: the SGD step and each layer's damped solve with its batch factor a^T a
    (:func:`~mpifed.network.flops.foof_solve`: dense or Woodbury, whichever is cheaper)."""
    return K * (fl.network_step(s) + fl.foof_solve(s))
