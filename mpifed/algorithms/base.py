"""The shape every method has: frozen hyper-parameters, client state, server state, and
pure client and server steps that the driver (the only round loop) calls.

A round k:  x^k is broadcast -> ``client_step`` on every rank for its block of clients at
once -> the clients' :class:`Uplink` rows are summed over all clients (a reproducible
MPI Reduce) -> ``server_step`` on rank 0 turns the :class:`Aggregate` into x^{k+1}.
Every uplink carries f_i(x^k) and grad f_i(x^k), so the driver's metrics at x^k cost no
extra pass; whether the gradient is also *sent* is decided by the bits the method counts.

Five extensions, all optional:

* ``Uplink.gathered``: per-client arrays the server needs one by one (Newton-Learn's
  coefficient updates and data vectors), gathered to rank 0 in global client order.
* ``Uplink.sums``: fields a client step already summed over its block (the second-order methods'
  packed Hessians, in chunks of clients, :func:`client_chunks`), so no (clients x T) array exists at once.
* ``client_metrics(p, block, state, x, streams) -> Uplink``: called instead of ``client_step``
  for the row of the final x^R, which records metrics and takes no step (the network methods:
  their K local steps there would be thrown away).
* ``client_reference(p, block, x_star) -> Uplink | None`` and ``server_reference(p, agg, x_star, x0) -> Params``: a
  hyper-parameter that needs x* (SPPM's ``--step-size auto``). The driver calls them once after the reference
  solve, before round 0 (one setup exchange, outside the bit ledger), and hands the new Params to every rank;
  ``describe(p)`` gives a line for the console.
* Extra exchanges within a round (FedNL-LS's function values): ``server_step`` returns a
  :class:`Query` instead of ``(state, x_next, down_bits)``; the driver broadcasts
  ``Query.point``, calls ``client_query(p, block, state, point, streams)`` on every rank
  (returning ``(state, Uplink)``; ``client_<kind>`` for a query of another ``Query.kind``), and hands the new Aggregate to
  ``server_resume(p, server_state, x, agg)``, which again returns a Query or the step.

The FLOP model (required): ``flops(p, s) -> Work`` (:mod:`mpifed.network.flops`) counts what the method computes
from the federation's shape ``s`` (d, per-client m_i, nnz_i, row pairs, tau; a network's layers and batch):
``Work.step`` (n,) per client in a round's main step, ``Work.server`` for the server step, ``query`` and
``query_server`` per extra exchange (dicts {kind: cost} when the ``QUERIES`` kinds cost differently, as
Newton-CG's products and trials), ``init`` and ``init_server`` for the setup upload. The simulated wall-clock
(the trace's ``sim_time_s``) turns it into seconds; a registered method without it fails ``tests/test_netsim.py``.

Participation: ``streams.active`` (bool, one per client of the block) says who takes part
in round k; it is drawn from (seed, round) only, so it does not depend on the rank count.
Methods that ignore it run with full participation (the driver refuses the option for them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from ..ddsum import dd_add, dd_add_into, dd_add_times_into, dd_slots_total, dd_sum_rows, dd_sum_sparse_rows
from ..errors import MpifedError


class SolverError(MpifedError):
    """The server's linear system cannot be solved (singular or indefinite matrix, NaN)."""


@dataclass(frozen=True)
class Uplink:
    """One round's messages from a block of n clients.

    loss (n,), grad (n, d): f_i and its gradient at the broadcast x^k.
    fields: further per-client arrays (n, ...) that the server needs summed.
    sums: fields the block has already summed over its clients, as double-double pairs (hi, lo)
    (a :class:`BlockSums`; the chunked client steps, whose (clients x T) messages never exist at once).
    value_bits, index_bits (n,): what each client put on the wire this round.
    gathered: per-client arrays (n, ...) the server receives one by one, in client order.
    ``grad`` may be None (a query that only sends function values), or the block's gradients already summed
    over its clients as a double-double pair (hi, lo) of shape (d,) (the Hessian-free methods at large d,
    whose (n, d) gradients never exist at once).
    """

    loss: object
    grad: object
    value_bits: np.ndarray
    index_bits: np.ndarray
    fields: dict = field(default_factory=dict)
    gathered: dict = field(default_factory=dict)
    sums: dict = field(default_factory=dict)


DENSE_CLIENT_D = 1 << 15  # up to this d (32,768) a client step may hold its block's (clients x d) gradients
# (1000 clients: 260 MB); above it DANE, GIANT and the gradient methods send them summed over the block, as the
# Hessian-free methods do (:func:`summed_gradients`). A d, not a memory size: the choice, hence the bits, never
# depend on the number of ranks.


def block_sum(vectors, xp=np):
    """The sum over the block's clients of :class:`~mpifed.problems.logistic.ClientVectors`, as a double-double
    pair (hi, lo) of shape (d,).

    Sparse rows go through :meth:`BlockSums.add_sparse` over the U columns the block touches (one spare slot U
    takes the padding), so the dense part of the work is U, not d, wide; their sums are then placed at those
    columns (a copy, no arithmetic). Dense rows go through :meth:`BlockSums.add`. Last, n copies of the common
    shift (lam v), added exactly (:func:`~mpifed.ddsum.dd_times`). The chunks' sums and the shift are added in
    place, a piece at a time: beyond the chunk's slots, the running sum (2 U) and the result (2 d) are the
    only vectors held.
    """
    block, sums = vectors.block, BlockSums()
    columns = block.support_columns()
    for lo, hi, index, values in vectors.chunks():
        if index is None:
            sums.add("v", values, xp)
        else:
            sums.add_sparse("v", index, values, len(columns) + 1, xp)
    if "v" not in sums:
        hi, lo = xp.zeros(block.d), xp.zeros(block.d)
    elif columns is None:
        hi, lo = sums.pop("v")
    else:
        hi, lo = xp.zeros(block.d), xp.zeros(block.d)
        hi[columns], lo[columns] = sums["v"][0][:-1], sums["v"][1][:-1]
        del sums["v"]
    dd_add_times_into(hi, lo, block.n, vectors.shift_of, xp)
    return hi, lo



def summed_gradients(block, x):
    """(f_i(x) (n,), the block's sum of grad f_i(x) as a double-double pair (hi, lo) of shape (d,), the rows'
    Hessian coefficients h_ij(x)): the gradients without a (clients x d) array
    (:meth:`~mpifed.problems.logistic.LogisticBlock.gradients`, summed as the Hessian-free methods sum them)."""
    loss, grads, h = block.gradients(x)
    return loss, block_sum(grads, block.bk.xp), h


CLIENT_CHUNK_BYTES = 1 << 24  # a chunked client step holds about this much of each (clients x T) temporary
GPU_CLIENT_CHUNK_BYTES = 1 << 30  # on a GPU: fewer, larger kernels


def clients_per_chunk(T: int, gpu: bool = False) -> int:
    """How many clients' rows of T float64 fit in about CLIENT_CHUNK_BYTES (on a GPU: GPU_CLIENT_CHUNK_BYTES)."""
    return max(1, (GPU_CLIENT_CHUNK_BYTES if gpu else CLIENT_CHUNK_BYTES) // (8 * T))


def client_chunks(block) -> list[tuple[int, int]]:
    """Ranges (lo, hi) of the block's clients of :func:`clients_per_chunk` clients each (w8a's 71 clients per
    rank, 26 MB per array, go in two; a block without clients is one empty range)."""
    step = clients_per_chunk(block.T, block.bk.xp is not np)
    return [(lo, min(lo + step, block.n)) for lo in range(0, block.n, step)] or [(0, 0)]


def hessians_in_chunks(block, x, loss, grad):
    """For each chunk of :func:`client_chunks`: fill loss[lo:hi] (n,) and grad[lo:hi] (n, d) with f_i(x) and
    grad f_i(x), and yield (lo, hi, the chunk's packed Hessians (hi - lo, T))."""
    for lo, hi in client_chunks(block):
        loss[lo:hi], grad[lo:hi], hess = block.clients(lo, hi).derivatives(x)
        yield lo, hi, hess


def coefficient_hessians_in_chunks(block, h):
    """For each chunk of :func:`client_chunks`: (lo, hi, the chunk's packed (1/m_i) sum_j h_ij a_ij a_ij^T + lam I
    (hi - lo, T)) from coefficients h of every row of the block (Newton-Learn's learned Hessians)."""
    for lo, hi in client_chunks(block):
        yield lo, hi, block.clients(lo, hi).hessians_from_coefficients(block.coefficients_of(h, lo, hi))


class BlockSums(dict):
    """Running double-double sums over the block's clients, chunk by chunk: name -> (hi, lo).

    Each column is summed exactly as :func:`mpifed.ddsum.dd_sum_rows` sums the whole block (about
    106 bits, then one rounding on the server), so the total does not depend on the chunking.
    """

    def add(self, name: str, rows, xp=np) -> None:
        self._add(name, *dd_sum_rows(rows, xp))

    def add_sparse(self, name: str, index, values, width: int, xp=np) -> None:
        """:meth:`add` of the rows holding ``values`` at columns ``index`` and zeros elsewhere (same bits), added
        in place (:func:`~mpifed.ddsum.dd_add_into`): the running sum and the chunk's are the only vectors."""
        hi, lo = dd_sum_sparse_rows(index, values, width, xp)
        if name in self:
            dd_add_into(*self[name], hi, lo)
        else:
            self[name] = (hi, lo)

    def add_slots(self, name: str, hi, lo, xp=np) -> None:
        """:meth:`add_sparse` from slots already accumulated (:func:`~mpifed.ddsum.dd_slots`, as
        :func:`~mpifed.ddsum.dd_sum_sparse_rows` fills them): their tree, then the running sum."""
        hi, lo = dd_slots_total(hi, lo, xp)
        if name in self:
            dd_add_into(*self[name], hi, lo)
        else:
            self[name] = (hi, lo)

    def _add(self, name: str, hi, lo) -> None:
        self[name] = dd_add(*self[name], hi, lo) if name in self else (hi, lo)


@dataclass(frozen=True)
class Aggregate:
    """Sums over all n clients of an :class:`Uplink`, on the server; ``mean`` divides by n."""

    n: int
    loss: float
    grad: np.ndarray
    value_bits: float
    index_bits: float
    fields: dict
    gathered: dict = field(default_factory=dict)
    participants: int = 0
    stop_requests: int = 0  # ranks that caught SIGTERM/SIGINT (the driver checkpoints and stops)

    def mean(self, name: str) -> np.ndarray:
        return self.fields[name] / self.n


@dataclass(frozen=True)
class Query:
    """An extra exchange inside a round: broadcast ``point`` (d,), then call the clients'
    ``client_query``. ``state`` is the server state to resume from; ``down_bits`` what the
    broadcast costs per client (e.g. one float for a step length when the direction is known). ``kind``
    names the question when a method asks more than one (listed in its module's ``QUERIES``): the clients
    answer with ``client_<kind>`` (Newton-CG: a Hessian-vector product or a trial point's loss)."""

    point: np.ndarray
    state: object
    down_bits: float
    kind: str = "query"


def participation(xp, streams):
    """(the round's participants among the block's clients as a host bool mask, the same mask on the backend)."""
    active = np.asarray(streams.active, dtype=bool)
    return active, xp.asarray(active)


def to_participants(agg: Aggregate, floats: int, float_bits: int) -> float:
    """Downlink bits per client (the mean over all n) when ``floats`` values go to the round's
    participants only (all clients under full participation)."""
    return agg.participants / agg.n * floats * float_bits


def bits_for(n: int, values: int, float_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-client (value bits, index bits) for ``values`` dense floats (no indices)."""
    return np.full(n, values * float_bits, dtype=np.float64), np.zeros(n)


def solve_spd(H: np.ndarray, g: np.ndarray, shift: float = 0.0, what: str = "H") -> np.ndarray:
    """(H + shift I)^{-1} g by Cholesky; a clear SolverError when H + shift I is not positive definite."""
    A = H + shift * np.eye(len(H)) if shift else H
    if not np.all(np.isfinite(A)):
        raise SolverError(f"the server matrix {what} has NaN or inf entries")
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, check_finite=False), g, check_finite=False)
    except np.linalg.LinAlgError:
        raise SolverError(f"the server matrix {what} is not positive definite (smallest eigenvalue "
                          f"{np.linalg.eigvalsh(A)[0]:.3e})") from None


def solve_projected(H: np.ndarray, g: np.ndarray, mu: float, report: dict | None = None) -> np.ndarray:
    """[H]_mu^{-1} g: eigenvalues of H clipped below at mu (FedNL Option 1, the projection onto
    {H >= mu I}); ``report["clipped_eigenvalues"]`` gets how many were clipped."""
    if not np.all(np.isfinite(H)):
        raise SolverError("the server matrix H has NaN or inf entries")
    w, U = np.linalg.eigh(H)
    if report is not None:
        report["clipped_eigenvalues"] = int(np.count_nonzero(w < mu))
    return U @ ((U.T @ g) / np.maximum(w, mu))
