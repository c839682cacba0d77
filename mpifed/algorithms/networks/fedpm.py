"""FedPM with FOOF on a neural network (Ishii et al., "FedPM: preconditioned mixing of local parameters",
Algorithm 1 with the FOOF approximation, eq. 11-12).

Clients (participants S): K local FOOF steps exactly as :mod:`~mpifed.algorithms.networks.localnewton` (eq. 11, damped by eps), then
send theta_i^{(t,K)} and their FOOF matrices A_{i,l}^{(t,K-1)} of the last local step (Algorithm 1, lines
16-17), each layer as the cheaper of its batch rows U_{i,l} (A = U^T U; R x D floats, R < D: the batch is
smaller than the layer's input) and its upper triangle (D (D+1) / 2 floats).

Server, per layer l (eq. 12, with the clients' damped preconditioners P_{i,l} = A_{i,l} + eps I, so that equal
local models are a fixed point)::

    theta_l^{t+1} = ((1/|S|) sum_S P_{i,l})^{-1} ((1/|S|) sum_S P_{i,l} theta_{i,l}^{(t,K)})

The clients compute P_{i,l} theta_{i,l} themselves (one more P-sized row in the sum; it is what the server
would compute from what they sent, so it is not counted twice in the bits). Layers sent as rows are solved by
the Woodbury identity with the stacked rows of all participants (:func:`mpifed.problems.nn.factors.damped_solve`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import scipy.linalg

from ...problems.nn.factors import damped_solve, gram, rows_of
from ..base import Uplink, to_participants
from .local import Clock, start, timing_report, uplink
from .local import ServerState, client_init, client_metrics, server_init  # noqa: F401  (stateless clients)
from .localnewton import Params as _LocalNewtonParams, local_foof
from ...network import flops as fl
from .local import foof_flops


@dataclass(frozen=True)
class Params(_LocalNewtonParams):
    """As LocalNewton-FOOF, plus the layers' (D, q) shapes and offsets in theta (the server's per-layer mixing)."""

    shapes: tuple = ()
    offsets: tuple = ()

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        model = fed.block.model
        base = _LocalNewtonParams.from_options(opts, fed)
        return cls(**{f: getattr(base, f) for f in ("eta_l", "K", "eps", "tau", "n", "float_bits", "decay")},
                   shapes=tuple(tuple(w.shape) for w in model.weighted),
                   offsets=tuple(int(o) for o in model.offsets[:-1]))


def _sent_as_rows(R: int, D: int) -> bool:
    return R * D < D * (D + 1) // 2


def client_step(p, block, state, x, streams):
    xp, model = block.bk.xp, block.model
    clock = Clock("curvature")
    first = start(block, x, streams, clock)
    theta, stats = local_foof(p, block, x, streams, first, clock)
    on, n_on = first.on, int(first.on.sum())
    idx = xp.asarray(np.flatnonzero(on))
    t0 = time.perf_counter()
    rows, gathered, mixed, floats = {}, {}, [], 0
    for l, (W, layer, R) in enumerate(zip(model.views(theta), model.weighted, model.batch_rows(block.batch_size))):
        # R from the model, not the batch: the same on a rank without participants, so the gathered shapes agree
        D = layer.shape[0]
        U = rows_of(stats[l], "a") if n_on else xp.zeros((0, R, D))
        mixed.append(U.transpose(0, 2, 1) @ (U @ W) + p.eps * W)  # P_i theta_i, per layer
        if _sent_as_rows(U.shape[1], D):
            full = xp.zeros((block.n,) + U.shape[1:])
            full[idx] = U
            gathered[f"foof_rows_{l}"] = full
            floats += U.shape[1] * D
        else:
            rows[f"foof_{l}"] = gram(U).reshape(n_on, D * D)
            floats += D * (D + 1) // 2
    rows["mix"] = model.flatten(mixed, xp) if n_on else xp.zeros((0, block.d))
    rows["theta"] = theta
    clock.add("curvature", t0)
    up = uplink(p, block, first, rows, clock, gathered)
    # theta and the FOOF matrices go up; "mix" is the server's own product of them (see the module docstring)
    bits = np.where(on, (block.d + floats) * p.float_bits, 0.0)
    return state, Uplink(up.loss, up.grad, bits, up.index_bits, up.fields, up.gathered)


def server_step(p, state, x, agg):
    """Preconditioned mixing (eq. 12) per layer, from the participants' sums (and gathered rows)."""
    S, mix, out = agg.participants, agg.fields["mix"], []
    for l, (D, q) in enumerate(p.shapes):
        at = p.offsets[l]
        rhs = mix[at:at + D * q].reshape(D, q)
        if f"foof_{l}" in agg.fields:  # sum_S (A_i + eps I) = sum_S A_i + |S| eps I
            P = agg.fields[f"foof_{l}"].reshape(D, D) + S * p.eps * np.eye(D)
            out.append(scipy.linalg.solve(P, rhs, assume_a="pos"))
        else:
            U = agg.gathered[f"foof_rows_{l}"].reshape(-1, D)
            out.append(damped_solve(U[None], rhs[None], S * p.eps, np)[0])
    state.report = timing_report(agg)
    x_next = np.concatenate([w.ravel() for w in out])
    return state, x_next, to_participants(agg, len(x), p.float_bits)


def flops(p: Params, s) -> fl.Work:
    """K local FOOF steps, then P_i theta_i per layer (from the batch rows: 4 R (d_in + 1) d_out); the participants
    send theta_i, P_i theta_i and their factors (the cheaper of R rows and the triangle, per layer); the server sums
    them and solves with the mean factor of every layer (dense, or Woodbury on the tau participants' stacked rows)."""
    sent = sum(min(s.batch * rows * din, din * (din + 1) // 2) for rows, din, _ in s.layers)
    product = sum(4.0 * s.batch * rows * din * dout for rows, din, dout in s.layers)
    client = foof_flops(p.K, s) + product + s.d
    server = fl.aggregate(s, 2 * s.d + sent) + fl.foof_solve(s, stacked=s.tau)
    return fl.Work(fl.per_client(client, s), server)
