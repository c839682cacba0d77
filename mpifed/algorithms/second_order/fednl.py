"""FedNL: Newton's method with learned, compressed Hessians (Safaryan, Islamov, Qian,
Richtarik, ICML 2022, Algorithm 1).

Client i at round k (H_i^0 = grad^2 f_i(x^0), sent once at setup):

    S_i^k     = C(grad^2 f_i(x^k) - H_i^k)             compressed Hessian correction
    l_i^k     = ||H_i^k - grad^2 f_i(x^k)||_F          before the update (Option 2 only)
    H_i^{k+1} = H_i^k + alpha S_i^k
    sends grad f_i(x^k), S_i^k, l_i^k

Server, with H^k = (1/n) sum_i H_i^k kept in step with the clients:

    Option 1: x^{k+1} = x^k - [H]_mu^{-1} grad f(x^k)          ([.]_mu: eigenvalues clipped at mu)
    Option 2: x^{k+1} = x^k - (H + l^k I)^{-1} grad f(x^k),    l^k = (1/n) sum_i l_i^k
    H^{k+1}  = H^k + alpha (1/n) sum_i S_i^k

Which H the step uses (``step_hessian``):

* ``previous`` (default, the paper's Algorithm 1 and the authors' numpy code): H = H^k;
* ``updated`` (the C++ u-FedNL of Burlachenko & Richtarik): H = H^{k+1}, with l^k still
  measured before the update, as u-FedNL does.

With the identity compressor and alpha = 1, ``previous`` steps with a one-round-old Hessian;
``updated`` under Option 1 is exactly Newton's method (the projection is inactive since
grad^2 f >= lam I = mu I), while under Option 2 it adds the pre-update l^k I.

alpha defaults to the theory of each compressor class: 1/(omega + 1) for unbiased ones,
1 for contractive ones under Option 2 and 1 - sqrt(1 - delta) under Option 1.

Options beyond the paper (defaults: the paper's method):

* ``hessian = "diagonal"``: learn only diag grad^2 f_i, a d-vector per client, compressed as a vector
  (:mod:`~mpifed.algorithms.second_order.fednl_diag`); the server's M is diagonal and its solve elementwise,
  [H]_mu = max(H, mu) entrywise under Option 1. The default compressor is then ``topk:k=0.25d``, and under
  Option 2 adaptive regularization is on unless turned off (``--no-adaptive-regularization``).
* ``solver = "cg"``: the server solves with ``cg_iterations`` conjugate-gradient steps on the learned H
  (:mod:`~mpifed.algorithms.second_order.fednl_solve`) instead of Cholesky / the eigendecomposition.
* ``adaptive``: Option 2's shift becomes l^k + sigma^k with sigma^k set by a Levenberg-Marquardt ratio test
  (:mod:`~mpifed.algorithms.second_order.fednl_lm`), which costs an extra exchange per round.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ... import compressors, kernels, tri
from ...ddsum import dd_slots
from ...errors import ConfigError
from . import fednl_diag, fednl_lm
from .fednl_solve import cg_solve, diagonal_solve
from ..base import (Aggregate, BlockSums, Uplink, bits_for, client_chunks, hessians_in_chunks, solve_projected,
                    solve_spd)
from ...network import flops as fl

DIAGONAL_COMPRESSOR = "topk:k=0.25d"  # --hessian diagonal: a quarter of the d entries (the matrix default, 8d, exceeds d)
CG_ITERATIONS = 20  # --solver cg without --cg-iterations (the blog's cg_iterations = 20)


@dataclass(frozen=True)
class Params:
    """compressor C, Hessian learning rate alpha, option (1 or 2), mu for Option 1, step_hessian; hessian
    (full or diagonal), solver (cholesky or cg) with cg_iterations, adaptive (the LM shift sigma) with its
    floor sigma_min."""

    compressor: compressors.Compressor
    alpha: float
    option: int = 2
    mu: float = 1e-3
    step_hessian: str = "previous"
    float_bits: int = 32
    hessian: str = "full"
    solver: str = "cholesky"
    cg_iterations: int = CG_ITERATIONS
    adaptive: bool = False
    sigma_min: float = 1e-3
    uses = ("compressor", "alpha", "option", "mu", "step_hessian", "hessian", "solver", "cg_iterations",
            "adaptive_regularization")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        option = opts.option or 2
        if opts.mu is not None and option != 1:
            raise ConfigError("--mu is the projection level of Option 1; it does not apply to --option 2")
        hessian, solver = opts.hessian or "full", opts.solver or "cholesky"
        comp = _compressor(opts.compressor, hessian, fed.d, opts.float_bits)
        alpha = opts.alpha if opts.alpha is not None else comp.theoretical_alpha(option)
        mu = opts.mu if opts.mu is not None else opts.lam
        if option == 1 and mu <= 0:
            raise ConfigError("Option 1 projects onto {H >= mu I} and needs mu > 0; lam is 0, so give --mu")
        if opts.cg_iterations is not None and solver != "cg":
            raise ConfigError(f"--cg-iterations = {opts.cg_iterations} caps the CG solver's iterations; "
                              f"it needs --solver cg (got {solver})")
        if solver == "cg" and hessian == "diagonal":
            raise ConfigError("--solver cg needs --hessian full: the diagonal solve is elementwise")
        # the diagonal model need not dominate grad^2 P, and undamped it diverges on a9a and w8a: damp it by default
        adaptive = opts.adaptive_regularization
        if adaptive is None:
            adaptive = hessian == "diagonal" and option == 2
        if adaptive and option != 2:
            raise ConfigError("--adaptive-regularization adjusts the shift of Option 2 (H + l I); "
                              "it does not apply to --option 1")
        return cls(comp, alpha, option, mu, opts.step_hessian or "previous", opts.float_bits, hessian, solver,
                   opts.cg_iterations or CG_ITERATIONS, adaptive, fednl_lm.sigma_min(opts.lam))


def _compressor(spec, hessian: str, d: int, float_bits: int) -> compressors.Compressor:
    """C of packed d x d matrices, or of d-vectors (``hessian = "diagonal"``: K counts diagonal entries, <= d)."""
    if hessian == "full":
        return compressors.make(spec or "topk:k=8d", d, float_bits)
    try:
        return compressors.make(spec or DIAGONAL_COMPRESSOR, d, float_bits, vector=True)
    except ConfigError as err:
        raise ConfigError(f"--hessian diagonal compresses the d-vector diag H_i: {err}") from None


@dataclass(frozen=True)
class ClientState:
    H: object  # (n, T) learned Hessians H_i^k, packed; (n, d) diagonals under hessian = "diagonal"


@dataclass(frozen=True)
class ServerState:
    H: object  # (T,) H^k = mean of the H_i^k, packed; (d,) diagonal
    report: dict = field(default_factory=dict)  # Option 1: how many eigenvalues the projection clipped
    sigma: float = 0.0  # adaptive: the LM shift sigma^k


def client_init(p: Params, block, x0, streams):
    """H_i^0 = grad^2 f_i(x^0), uploaded once (counted in the setup bits).

    Chunk by chunk of clients (:func:`~mpifed.algorithms.base.client_chunks`): each chunk's Hessians go
    into the block's H and into the running sum, so no second (clients x T) array is ever held.
    """
    if p.hessian == "diagonal":
        H, uplink = fednl_diag.client_init(p, block, x0, streams)
        return ClientState(H), uplink
    xp = block.bk.xp
    if xp is np and isinstance(p.compressor, compressors.TopK) and p.compressor.k < block.T:
        # at setup, not in round 0's time: the step's kernel and the sums'
        kernels.warm_up("fused" if getattr(block, "compiled", lambda: False)() else "topk", "sums")
    loss, grad = xp.empty(block.n), xp.empty((block.n, block.d))
    H, sums = xp.empty((block.n, block.T)), BlockSums()
    for lo, hi, hess in hessians_in_chunks(block, x0, loss, grad):
        H[lo:hi] = hess
        sums.add("hess", hess, xp)
    values, index = bits_for(block.n, block.T, p.float_bits)
    return ClientState(H), Uplink(loss, grad, values, index, sums=sums)


def _compiled_topk_step(p: Params, block, H, x, loss, grad, fields, value_bits, index_bits, sums):
    """:func:`client_step` for Top-K on the host by :mod:`mpifed.kernels`: the same chunks, each client's
    difference, l_i, selection, update and slot sums in one pass over its row (and for sparse data its Hessian
    formed in that row), with the same bits."""
    k, T = p.compressor.k, block.T
    weights = tri.multiplicity(block.d)
    for lo, hi in client_chunks(block):
        piece = block.clients(lo, hi)
        index, S = np.empty((hi - lo, k), dtype=np.intp), np.empty((hi - lo, k))
        slot_hi, slot_lo, slots = dd_slots(hi - lo, T)
        norms = fields["l"][lo:hi] if p.option == 2 else None
        step = (H[lo:hi], k, p.alpha, weights, norms, index, S, slot_hi, slot_lo, slots)
        if getattr(piece, "compiled", lambda: False)():
            loss[lo:hi], grad[lo:hi], h = piece.derivatives_and_coefficients(x)
            kernels.hessian_topk_update(piece.packed_rows(), h, piece.lam, piece.d, *step)
        else:
            loss[lo:hi], grad[lo:hi], hess = piece.derivatives(x)
            kernels.topk_update(np.ascontiguousarray(hess), *step)
        del index, S
        sums.add_slots("S", slot_hi, slot_lo)
        value_bits[lo:hi], index_bits[lo:hi] = p.compressor.bits(hi - lo)
    values, _ = bits_for(block.n, block.d + len(fields), p.float_bits)
    return ClientState(H), Uplink(loss, grad, values + value_bits, index_bits, fields, sums=sums)


def server_init(p: Params, agg: Aggregate, x0):
    return ServerState(agg.mean("hess"))


def client_step(p: Params, block, state: ClientState, x, streams):
    """One round of Algorithm 1 on the block, a chunk of clients at a time.

    H_i^{k+1} overwrites H_i^k in place (the driver holds no other reference to the state), and S_i^k
    is summed chunk by chunk: besides the state, a round holds three chunk-sized (clients x T) arrays
    (grad^2 f_i, the difference, C(difference)), whatever the number of clients.
    """
    if p.hessian == "diagonal":
        H, uplink = fednl_diag.client_step(p, block, state.H, x, streams)
        return ClientState(H), uplink
    xp, n = block.bk.xp, block.n
    loss, grad, H = xp.empty(n), xp.empty((n, block.d)), state.H
    value_bits, index_bits, sums = np.empty(n), np.empty(n), BlockSums()
    fields = {"l": xp.empty(n)} if p.option == 2 else {}
    sparse = isinstance(p.compressor, compressors.TopK) and p.compressor.k < block.T
    if sparse and xp is np and kernels.enabled():
        return _compiled_topk_step(p, block, H, x, loss, grad, fields, value_bits, index_bits, sums)
    for lo, hi, hess in hessians_in_chunks(block, x, loss, grad):
        diff = xp.subtract(hess, H[lo:hi], out=hess)
        if p.option == 2:
            fields["l"][lo:hi] = tri.frobenius(diff, xp)
        if sparse:  # K of T entries per client: H_i and the sum change at those entries only
            index, S = p.compressor.sparse(diff)
            del diff, hess
            sums.add_sparse("S", index, S, block.T, xp)
            at = index + (xp.arange(hi - lo) * block.T)[:, None]
            H[lo:hi].reshape(-1)[at] += S if p.alpha == 1.0 else p.alpha * S  # 1.0 * S == S exactly
            value_bits[lo:hi], index_bits[lo:hi] = p.compressor.bits(hi - lo)
        else:
            message = p.compressor.compress(diff, streams.clients(lo, hi))
            del diff, hess
            sums.add("S", message.values, xp)
            H[lo:hi] += message.values if p.alpha == 1.0 else p.alpha * message.values
            value_bits[lo:hi], index_bits[lo:hi] = message.value_bits, message.index_bits
            del message
    values, _ = bits_for(n, block.d + len(fields), p.float_bits)
    return ClientState(H), Uplink(loss, grad, values + value_bits, index_bits, fields, sums=sums)


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    H_next = state.H + p.alpha * agg.mean("S")
    H = server_matrix(p, H_next if p.step_hessian == "updated" else state.H, len(x))
    g, report = agg.grad / agg.n, {}
    step = newton_step(p, H, g, agg, report, shift=state.sigma)
    server = ServerState(H_next, report, state.sigma)
    if p.adaptive:
        return fednl_lm.propose(server, x, -step, H, g, agg.loss / agg.n, state.sigma, p.float_bits)
    return server, x - step, len(x) * p.float_bits


def client_query(p: Params, block, state, point, streams):
    """Adaptive regularization's trial value f_i(x^k + s)."""
    return fednl_lm.client_query(p, block, state, point, streams)


def server_resume(p: Params, trial, x, agg: Aggregate):
    return fednl_lm.resume(trial, x, agg, p.sigma_min)


def server_matrix(p: Params, H, d: int):
    """The server's H as its solve takes it: unpacked (d, d), or the (d,) diagonal."""
    return H if p.hessian == "diagonal" else tri.unpack(H, d)


def newton_step(p: Params, H, g, agg: Aggregate, report: dict, shift: float = 0.0):
    """M^{-1} g with M = [H]_mu (Option 1; the clipped count goes to ``report``) or H + (l^k + shift) I
    (Option 2), for H from :func:`server_matrix`: by Cholesky / eigendecomposition, by CG from 0, or
    elementwise for a diagonal H.

    CG starts from 0: a warm start from the best multiple of the previous round's solution saved 2-4% of
    the CG iterations on a9a and w8a (to ||grad P|| <= 1e-8) and costs one product per solve."""
    mu = p.mu if p.option == 1 else None
    if p.option == 2:
        shift = float(agg.mean("l")) + shift
    if H.ndim == 1:
        return diagonal_solve(H, g, shift, mu, report)
    if p.solver == "cg":
        return cg_solve(H, g, p.cg_iterations, shift, mu, report=report)
    if p.option == 1:
        return solve_projected(H, g, p.mu, report)
    return solve_spd(H, g, shift=shift, what="H^k + l^k I")


def flops(p: Params, s) -> fl.Work:
    """Setup: H_i^0 (gradient and Hessian, or its diagonal). A round: gradient and Hessian, the difference (T),
    l_i (2T, Option 2), C (:func:`~mpifed.network.flops.compression`), H_i += alpha S_i (one add per sent entry);
    the server sums the messages, updates H (T), unpacks it and solves (Cholesky, or the eigendecomposition of
    Option 1). The options (:func:`client_work`, :func:`server_work`): ``hessian = "diagonal"`` puts d for T
    and the O(nnz) diagonal for the Hessian, with an elementwise solve; ``solver = "cg"`` replaces the
    factorisation by ``cg_iterations`` CG steps; ``adaptive`` adds the model decrease and the trial point on the
    server and one query per round, f_i at the trial point (charged every round: the untested rounds, below P's
    resolution, skip it)."""
    work = fl.Work(client_work(p, s), server_work(p, s), init=init_work(p, s),
                   init_server=fl.aggregate(s, s.d if p.hessian == "diagonal" else s.T))
    if not p.adaptive:
        return work
    return dataclasses.replace(work, query=fl.loss_only(s), query_server=fl.aggregate(s, 1) + 6.0)


def init_work(p: Params, s) -> "np.ndarray":
    """H_i^0: the gradient and the Hessian (or its diagonal)."""
    return fl.loss_grad(s) + (fl.diagonal_hessian(s) if p.hessian == "diagonal" else fl.hessian(s))


def client_work(p: Params, s) -> "np.ndarray":
    """The client step under p's options: :func:`client_round`, or with ``hessian = "diagonal"`` the O(nnz)
    diagonal, the difference (d), l_i (2d, Option 2), C of the d-vector and H_i += alpha S_i."""
    if p.hessian != "diagonal":
        return client_round(p.compressor, p.option, s)
    C = p.compressor
    return (fl.loss_grad(s) + fl.diagonal_hessian(s) + s.d + (2.0 * s.d if p.option == 2 else 0.0)
            + fl.compression(C) + fl.payload(C))


def server_work(p: Params, s, cg_extra: int = 0) -> float:
    """The server step under p's options: the sums, the H update, then the solve and x - step (d):

    * full, Cholesky or the eigendecomposition: :func:`server_round`;
    * full, ``solver = "cg"``: unpack (d^2) and ``cg_iterations`` (+ ``cg_extra``: a warm start's product) CG
      steps, each a dense product H p (2 d^2) with the shift (2 d) (:func:`~mpifed.network.flops.cg`); the cap
      is an upper bound (CG stops earlier at ||r|| <= 1e-12 ||g||); Option 1's fallback to the
      eigendecomposition (when the projection acts) is not counted;
    * ``hessian = "diagonal"``: the update of the d-vector (d), the elementwise solve (2 d: the shift or the
      clip, a divide);
    * ``adaptive``: pred = -(<g, s> + s^T H s / 2) (H s: 2 d^2, or d for a diagonal; two dots 4 d; 3) and the
      trial point x + s (d)."""
    C, d = p.compressor, s.d
    if p.hessian == "diagonal":
        work = fl.aggregate(s, d + (p.option == 2) + fl.payload(C)) + 2.0 * d + 2.0 * d + d
        hs = float(d)
    elif p.solver == "cg":
        solve = fl.cg(d, p.cg_iterations + cg_extra, 2.0 * d * d + 2.0 * d)
        work = fl.aggregate(s, d + 1 + fl.payload(C)) + s.T + fl.unpack(d) + solve + d
        hs = 2.0 * d * d
    else:
        work = server_round(C, p.option, s)
        hs = 2.0 * d * d
    if p.adaptive:
        work += hs + 4.0 * d + 3.0 + d
    return work


def client_round(C, option: int, s) -> "np.ndarray":
    """The FedNL client step's FLOPs with the full Hessian (shared by FedNL-LS, -CR, -BC)."""
    return (fl.loss_grad(s) + fl.hessian(s) + s.T + (2.0 * s.T if option == 2 else 0.0) + fl.compression(C)
            + fl.payload(C))


def server_round(C, option: int, s) -> float:
    """The FedNL server step's FLOPs: sums, H update, unpack, solve."""
    solve = fl.eigen_solve(s.d) if option == 1 else fl.cholesky_solve(s.d)
    return fl.aggregate(s, s.d + 1 + fl.payload(C)) + s.T + fl.unpack(s.d) + solve + s.d
