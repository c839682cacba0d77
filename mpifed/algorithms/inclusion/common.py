"""What the monotone-inclusion methods share: the round's sampled client, the metrics uplink, the one-client answer.

The metrics of round k are A(z^k) (the trace's ``grad_norm`` is ||A(z^k)||) and (1/n) sum_i L_i(z^k) (``loss``):
every client evaluates its operator at the broadcast z^k, and a method decides by the bits it counts whether that
value is sent (extragradient, a full exchange of SPPM-VI-VR) or is only the simulator's measurement.
"""
from __future__ import annotations

import numpy as np

from ...network import flops as fl
from ...rng import ClientStreams
from ..base import Uplink


def sampled_client(seed: int, n: int, round: int) -> int:
    """xi_k, uniform over the n clients: a shared coin drawn from (seed, round) alone, the same on every rank."""
    u = ClientStreams(seed, [0], round).uniform("sppm-client", 1)[0, 0]
    return min(int(u * n), n - 1)


def coin(seed: int, round: int) -> float:
    """A uniform draw in [0, 1) shared by all ranks, from (seed, round) alone (SPPM-VI-VR's anchor coin)."""
    return float(ClientStreams(seed, [0], round).uniform("sppm-anchor", 1)[0, 0])


def one_client_answer(block, xi: int, z, gamma: float, float_bits: int, loss, operator) -> Uplink:
    """The uplink in which client xi alone sends J_{gamma A_xi}(z) (d floats, field ``next``; z (d,) is what that
    client feeds its resolvent); the other clients send nothing. ``loss`` and ``operator`` are the metrics rows."""
    xp = block.bk.xp
    nxt = xp.zeros((block.n, block.d))
    bits = np.zeros(block.n)
    (rows,) = np.nonzero(np.asarray(block.ids) == xi)
    if len(rows):
        nxt[rows] = block.resolvent(rows, xp.broadcast_to(z, (1, block.d)), gamma)
        bits[rows] = block.d * float_bits
    return Uplink(loss, operator, bits, np.zeros(block.n), {"next": nxt})


def metrics_uplink(block, z, float_bits: int, sent: bool) -> Uplink:
    """Every client's L_i(z) and A_i(z); d floats each on the wire when ``sent``, else none."""
    bits = np.full(block.n, block.d * float_bits if sent else 0.0)
    return Uplink(block.values(z), block.operator(z), bits, np.zeros(block.n))


def default_gamma(block) -> float:
    """gamma = mu / (2 delta_max^2), SVRP's step (Khaled & Jin 2023) with delta_max = max_i ||M_i - M_bar||; at most
    1/mu (delta = 0: every client is the whole problem and the step only needs to be large)."""
    delta = block.similarity()
    mu = block.mu
    if mu <= 0:
        return 1.0
    return min(mu / (2.0 * delta * delta), 1.0 / mu) if delta > 0 else 1.0 / mu


def operator_flops(s) -> np.ndarray:
    """A_i(z) = M_i z + q_i, a dense (d x d) matvec: 2 nnz with nnz = d^2 (d^2 multiplies, d^2 - d adds, + q_i d)."""
    return 2.0 * s.nnz


def resolvent_flops(s) -> float:
    """J_{gamma A_i}(z) as :meth:`~mpifed.problems.saddle.SaddleBlock.resolvent` computes it: I + gamma M_i (d^2 + d),
    z - gamma q_i (2d), and a general linear solve (I + gamma M_i is not symmetric: LU, 2 d^3/3 + 2 d^2,
    :func:`~mpifed.network.flops.lu_solve`)."""
    return s.d * s.d + 3.0 * s.d + fl.lu_solve(s.d)
