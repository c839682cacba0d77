"""Counter-based random streams keyed by (seed, stream, client, round).

Every client owns its random numbers: the value drawn for client c in round k is a hash of
(seed, stream, c, k, position), so it does not depend on which rank hosts the client, on
the other clients in the batch, or on how many draws came before. There is no state to
checkpoint, and a whole block of clients is drawn in one vectorised call.
The hash is SplitMix64's finaliser (Steele, Lea, Flood 2014), applied twice.
"""
from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _combine(h, value):
    return _mix(h ^ (np.asarray(value, dtype=np.uint64) + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))


class ClientStreams:
    """Random numbers for a block of clients in one round.

    Parameters
    ----------
    seed : int
        The run's seed.
    client_ids : array of int
        Global ids of the block's clients (rows of every draw).
    round : int
        The round number k.
    active : bool array, optional
        Which of the block's clients take part this round (default: all).
    """

    def __init__(self, seed: int, client_ids, round: int, active=None):
        self.seed, self.round = int(seed), int(round)
        self.client_ids = np.asarray(client_ids, dtype=np.uint64)
        self.active = np.ones(len(self.client_ids), dtype=bool) if active is None else np.asarray(active, dtype=bool)

    def clients(self, lo: int, hi: int) -> "ClientStreams":
        """The streams of the block's clients lo..hi-1 (their draws are theirs whatever the block)."""
        return ClientStreams(self.seed, self.client_ids[lo:hi], self.round, self.active[lo:hi])

    def bits(self, stream: str, n: int) -> np.ndarray:
        """Uniform 64-bit integers, shape (clients, n), for the named stream."""
        with np.errstate(over="ignore"):
            h = _combine(np.full(1, self.seed, dtype=np.uint64), zlib.crc32(stream.encode()))
            h = _combine(_combine(h, self.client_ids), self.round)
            positions = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
            return _mix(_mix(h[:, None] + positions[None, :]))

    def uniform(self, stream: str, n: int) -> np.ndarray:
        """Uniform floats in [0, 1), shape (clients, n)."""
        return (self.bits(stream, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def participants(seed: int, n_clients: int, tau: int, round: int) -> np.ndarray:
    """Which of all n clients take part in round k: tau of them, uniformly without replacement.

    Each client gets a key from its own stream (seed, "participation", client, round) and the
    tau smallest keys win (ties to the lower id), so every rank computes the same set.
    """
    if tau >= n_clients:
        return np.ones(n_clients, dtype=bool)
    keys = ClientStreams(seed, np.arange(n_clients), round).bits("participation", 1)[:, 0]
    chosen = np.argsort(keys, kind="stable")[:tau]
    mask = np.zeros(n_clients, dtype=bool)
    mask[chosen] = True
    return mask
