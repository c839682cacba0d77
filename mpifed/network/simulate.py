"""Simulated wall-clock: a round's bits and FLOPs turned into seconds on a :class:`~.profiles.Profile`.

A synchronous exchange e with participants S (the round's ``active`` clients, drawn from (seed, round) as the
driver draws them) costs

    t_e = max_{i in S} [ rtt_i + D_e / down_i + C_e,i / speed_i + U_e / up_i ] + C_e^server / speed_server

with D_e and U_e the bits each participant receives and sends (the exchange's per-participant mean, from the
bit ledger), C_e,i the client's FLOPs (the method's ``flops``: the main step, or a query) and rtt_i one round
trip. A straggler this round (probability ``straggler_probability`` per client and round) has its bracket
multiplied by ``straggler_slowdown``; a participant whose reply is lost (``dropout`` per exchange) costs
``dropout_timeout_s`` plus its bracket again (the server waits, then asks it again). The slowest participant's
link part (rtt, D/down, U/up, timeouts) is the exchange's communication time, its compute part plus the
server's is its computation time.

A round k is its main exchange (D: the broadcast of x^k, the downlink the previous round charged; none for x^0)
followed by one exchange per :class:`~mpifed.algorithms.base.Query` (each with the round's mean query bits).
The setup upload (FedNL's H_i^0; only when the ledger counts it as an exchange) is one exchange with the
method's ``init`` FLOPs. A method with several kinds of query (``QUERIES``; its ``flops`` gives a cost per kind)
has one query column per kind in its FLOP vectors, and each query exchange is charged its own kind's column; the
trace then also keeps, per row, the number of the round's queries of every kind but the first
(``net_queries_<j>``, j = 1 .. K - 1; the first kind's are the rest). The trace keeps, per row, what a replay needs (``net_*`` columns, the ``exchanges``
count, the FLOP vectors under ``netsim/``), so :func:`replay` re-simulates a finished run under any profile. A replay takes a round's queries in ``QUERIES`` order (all of
the first kind, then the second, ...), the order in which the methods ask them (Newton-CG: its CG products, then
its line-search trials); the live clock charges them in the order asked, so the two agree wherever dropouts
(whose draws depend on an exchange's position) do not meet a reordering.
"""
from __future__ import annotations

import numpy as np

from ..rng import ClientStreams, participants
from .profiles import FIXED, Profile

NET_COLUMNS = ("net_down", "net_up", "net_query_down", "net_query_up")  # per participant, the row's round
SIM_COLUMNS = ("sim_time_s", "sim_comm_s", "sim_compute_s")             # cumulative, to reach x^k
SETUP, STEP, QUERY = 0, 1, 2  # columns of the (n, 3) FLOP vectors


class Clock:
    """Simulated seconds of a run's exchanges on ``profile``.

    ``flops`` (n, 2 + K): per client, setup / step / query FLOPs, one query column per kind (K = 1: (n, 3));
    ``server`` (2 + K,): the same for the server;
    ``seed`` and ``tau`` draw the participants and the per-round device events as the run draws them.
    """

    def __init__(self, profile: Profile, flops, server, seed: int, tau: int):
        self.profile, self.flops, self.server = profile, np.asarray(flops, float), np.asarray(server, float)
        self.n = len(self.flops)
        self.seed, self.tau = int(seed), int(tau) if tau else self.n
        self.dev = profile.devices(self.seed, self.n)
        self.server_speed = profile.server_flops

    def active(self, k: int) -> np.ndarray:
        if k < 0 or self.tau >= self.n:
            return np.ones(self.n, dtype=bool)
        return participants(self.seed, self.n, self.tau, k)

    def exchange(self, k: int, position: int, kind: int, down: float, up: float) -> tuple[float, float, float]:
        """(seconds, communication, computation) of exchange ``position`` of round k (k = -1: setup)."""
        p, dev = self.profile, self.dev
        on = self.active(k)
        comm = dev.rtt[on] + down / dev.down[on] + up / dev.up[on]
        comp = self.flops[on, kind] / dev.speed[on]
        streams = ClientStreams(self.seed, np.flatnonzero(on), k if k >= 0 else FIXED - 1)
        if p.straggler_probability > 0:
            slow = np.where(streams.uniform("netsim-straggler", 1)[:, 0] < p.straggler_probability,
                            p.straggler_slowdown, 1.0)
            comm, comp = comm * slow, comp * slow
        if p.dropout > 0:
            lost = streams.uniform("netsim-dropout", position + 1)[:, position] < p.dropout
            comm = np.where(lost, 2 * comm + p.dropout_timeout_s, comm)
            comp = np.where(lost, 2 * comp, comp)
        if not len(comm):
            return 0.0, 0.0, 0.0
        i = int(np.argmax(comm + comp))  # the slowest participant sets the pace
        server = self.server[kind] / self.server_speed
        return comm[i] + comp[i] + server, comm[i], comp[i] + server

    def round(self, k: int, down: float, up: float, queries=0, query_down: float = 0.0,
              query_up: float = 0.0) -> np.ndarray:
        """[seconds, communication, computation] of round k: the main exchange, then the query exchanges
        sharing ``query_down`` / ``query_up`` (the round's query bits per participant) equally. ``queries``: their
        number (all of the first kind), or the kind index (into ``QUERIES``) of each, in the order asked."""
        kinds = [0] * queries if np.isscalar(queries) else [int(j) for j in queries]
        total = np.array(self.exchange(k, 0, STEP, down, up))
        for j, kind in enumerate(kinds):
            total += self.exchange(k, j + 1, QUERY + kind, query_down / len(kinds), query_up / len(kinds))
        return total

    def setup(self, up: float) -> np.ndarray:
        return np.array(self.exchange(-1, 0, SETUP, 0.0, up))


def replay(metrics: dict, flops, server, seed: int, tau: int, profile: Profile) -> np.ndarray:
    """(rows, 3) cumulative [seconds, communication, computation] to reach each recorded x^k under ``profile``,
    from a trace's ``exchanges`` and ``net_*`` columns (row k holds round k - 1; row 0 the setup)."""
    clock = Clock(profile, flops, server, seed, tau)
    ex = np.asarray(metrics["exchanges"], dtype=float)
    extra = [np.nan_to_num(np.asarray(metrics.get(f"net_queries_{j}", np.zeros(len(ex))), dtype=float))
             for j in range(1, clock.flops.shape[1] - QUERY)]  # the rounds' queries of kinds 1 .. K - 1
    down, up, qd, qu = (np.nan_to_num(np.asarray(metrics[c], dtype=float)) for c in NET_COLUMNS)
    out = np.zeros((len(ex), 3))
    if len(ex) and ex[0] >= 1:
        out[0] = clock.setup(up[0])
    for r in range(1, len(ex)):
        queries = max(int(round(ex[r] - ex[r - 1])) - 1, 0)
        counts = [int(round(c[r])) for c in extra]
        kinds = [0] * (queries - sum(counts)) + [j for j, c in enumerate(counts, 1) for _ in range(c)]
        out[r] = out[r - 1] + clock.round(r - 1, down[r], up[r], kinds, qd[r], qu[r])
    return out
