"""The one round loop, shared by every method (and by the reference Newton solve).

Round k: rank 0 broadcasts [flag, x^k] -> every rank runs the method's client step for
its whole block -> the uplinks are packed into one (clients x fields) array, summed over
all clients in double-double and reduced to rank 0 -> rank 0 takes the server step to x^{k+1} (unless the run
stops here) and records the metrics at x^k once the next broadcast is out, so the other ranks' clients start
while it writes the trace row. With a held-out set, test accuracy and loss
at x^k are evaluated every ``eval_every`` rounds (a LIBSVM set on rank 0: one sparse mat-vec; an image set by all
ranks, each on its share of the images), outside ``time_s``; its seconds are the trace's ``time_eval``.

Errors: setup runs collectively (every rank learns of an error on any rank and raises the
same one-line MpifedError); in the loop, a server error stops all ranks cleanly through the
broadcast flag, and an error in a client step aborts the job with that rank's message.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from . import checkpoint as ckpt
from . import footprint
from . import config as cfgmod
from . import trace as tracemod
from .algorithms import method_for
from .algorithms.base import Aggregate, Query, Uplink
from .algorithms.first_order.gd import smoothness_of_P
from .algorithms.proximal import proxnewton
from .algorithms.second_order import newton
from .checkpoint import SIGNALS
from .comm import collective, world
from .ddsum import dd_sum_blocks
from .errors import ConfigError, MpifedError
from .federation import Federation, build_federation, map_large_vectors
from . import network
from .plan import resolve
from .problems import l1

CONTINUE, STOP, QUERY, SUSPEND = 0.0, 1.0, 2.0, 3.0


@dataclass
class RunResult:
    """The outcome on every rank; ``metrics`` and ``path`` are filled on rank 0 only."""

    x: np.ndarray
    status: str
    message: str
    rounds: int
    metrics: dict
    path: Path | None


def exchange(fed: Federation, uplink, active=None) -> Aggregate | None:
    """Sum an uplink over all clients of all ranks; the Aggregate on rank 0, None elsewhere.

    The summed columns are loss | grad | value bits | index bits | participation | fields | sums
    (``uplink.sums``: fields the block summed itself); ``uplink.gathered`` goes to rank 0 row by row,
    in global client order.
    """
    xp, n, d, host = fed.backend.xp, fed.block.n, fed.d, fed.backend.to_host
    names, summed = sorted(uplink.fields), sorted(uplink.sums)
    taking_part = np.ones(n) if active is None else np.asarray(active, dtype=np.float64)
    small = [uplink.loss[:, None], xp.asarray(uplink.value_bits)[:, None],
             xp.asarray(uplink.index_bits)[:, None], xp.asarray(taking_part)[:, None]]
    # the small columns, the (clients x d) gradient and the narrow fields in one pass, each wide field on its own: no
    # copy of the whole uplink (every column is summed on its own, so the grouping does not change a bit)
    dense_grad = uplink.grad is not None and not isinstance(uplink.grad, tuple)
    grad = [uplink.grad] if dense_grad else []
    hi, lo = dd_sum_blocks([xp.concatenate(small, axis=1)] + grad + [uplink.fields[k].reshape(n, -1) for k in names], xp)
    hi, lo = host(hi), host(lo)
    # the message: loss | grad | value bits | index bits | participation | fields | sums | whether this rank caught
    # SIGTERM/SIGINT (the root then checkpoints and stops), reduced a piece at a time from where the parts lie
    if dense_grad:
        parts = [(hi[:1], lo[:1]), (hi[4:4 + d], lo[4:4 + d]), (hi[1:4], lo[1:4]), (hi[4 + d:], lo[4 + d:])]
    else:
        if uplink.grad is None:  # no gradient sent: zeros, without an (n, d) array (nor a d-vector: a broadcast view)
            g = (np.broadcast_to(np.zeros(1), (d,)),) * 2
        else:  # already summed over the block (a double-double pair)
            g = (host(uplink.grad[0]), host(uplink.grad[1]))
        parts = [(hi[:1], lo[:1]), g, (hi[1:], lo[1:])]
    parts += [(host(uplink.sums[k][0]).ravel(), host(uplink.sums[k][1]).ravel()) for k in summed]
    total = fed.comm.reduce_dd_parts(parts + [(np.array([float(bool(SIGNALS.requested))]), np.zeros(1))])
    gathered = _gather(fed, uplink.gathered)
    if total is None:
        return None
    fields, at = {}, d + 4
    shapes = [(k, uplink.fields[k].shape[1:]) for k in names] + [(k, uplink.sums[k][0].shape) for k in summed]
    for k, shape in shapes:
        size = int(np.prod(shape))
        fields[k] = total[at:at + size].reshape(shape)
        at += size
    return Aggregate(fed.n_clients, float(total[0]), total[1:d + 1], float(total[d + 1]), float(total[d + 2]),
                     fields, gathered, int(round(total[d + 3])), int(round(total[-1])))


def _gather(fed: Federation, arrays: dict) -> dict:
    """Per-client arrays (n, ...) of every rank, stacked in client order on rank 0 ({} elsewhere)."""
    if not arrays:
        return {}
    names, n = sorted(arrays), fed.block.n
    host = [np.asarray(fed.backend.to_host(arrays[k]), dtype=np.float64).reshape(n, -1) for k in names]
    rows = fed.comm.gather_rows(np.concatenate(host, axis=1), fed.n_clients)
    if rows is None:
        return {}
    out, at = {}, 0
    for k, h in zip(names, host):
        out[k] = rows[:, at:at + h.shape[1]].reshape((fed.n_clients,) + arrays[k].shape[1:])
        at += h.shape[1]
    return out


def iterate(fed: Federation, method, params, x0, rounds: int, tol: float, record=None, checkpoint=None,
            resume=None, evaluate=None, optimality=None, clock=None):
    """Run ``method`` from x0 for at most ``rounds`` server steps; returns (x, status, message, rounds done).

    The run stops once ``optimality(agg, x)`` <= tol (default ||grad P(x^k)||; the composite problem's
    prox-gradient mapping norm, :class:`Composite`).

    ``record(k, agg, x, timing, bits)`` is called on rank 0 with the metrics of x^k, right after the broadcast that
    follows round k (x^{k+1}, SUSPEND or STOP; before a checkpoint is taken); ``evaluate(k, x)``, on every
    rank after each round's exchange, gives rank 0 ``timing["test"]``.
    The broadcast buffer is [flag, kind, vector]: CONTINUE with x^k starts round k, QUERY with a
    point asks the clients for an extra exchange (:class:`~mpifed.algorithms.base.Query`; ``kind`` says which
    of the method's ``QUERIES`` it is),
    SUSPEND with x^k checkpoints and stops (a rank caught SIGTERM/SIGINT), STOP ends the run.
    With a :class:`~mpifed.checkpoint.Checkpointer`, every rank saves its state at the top of the
    rounds it is due; ``resume`` (a :class:`~mpifed.checkpoint.State`) starts from a checkpoint.
    ``clock`` (rank 0, a :class:`~mpifed.network.Clock`) adds each round's simulated seconds to the ledger.
    """
    comm, bk = fed.comm, fed.backend
    buf = np.zeros(fed.d + 2)
    kinds = query_kinds(method)
    status, message, requests = "completed", "", 0
    if resume is not None:
        k, x, server, state, bits = resume.k, np.array(resume.x, dtype=np.float64), resume.server, resume.client, dict(resume.bits)
    else:
        k, x, server = 0, np.array(x0, dtype=np.float64), None
        state, init = _client(fed, lambda: method.client_init(params, fed.block, fed.point(x), fed.streams(-1)))
        agg = exchange(fed, init) if init is not None else None
        init = None  # H_i^0 lives on in the client state only, not in the setup's uplink
        bits = {"up": 0.0, "up_index": 0.0, "down": 0.0}
        if comm.is_root:
            try:
                server = method.server_init(params, agg, x)
            except MpifedError as err:
                status, message = "failed", str(err)
            if agg is not None:  # setup uploads (FedNL's H_i^0) count towards row 0
                _spend(bits, agg, counted=bool(agg.value_bits + agg.index_bits))
                requests += agg.stop_requests
                if clock is not None and bits["exchanges"]:
                    up = (agg.value_bits + agg.index_bits) / max(agg.participants, 1)
                    _simulate(bits, clock.setup(up), up=up)
    flag, received, row = (STOP if status == "failed" else CONTINUE), False, None
    while True:
        if not received:  # a non-root rank may already hold this broadcast (see _answer_queries)
            if flag == CONTINUE and checkpoint is not None and (requests or SIGNALS.requested):
                flag = SUSPEND
            buf[0], buf[1], buf[2:] = flag, 0.0, x
            comm.bcast_array(buf)
        if row is not None:  # rank 0 records round k - 1 once x^k is out: the clients start meanwhile
            record(*row)
            row = None
        if buf[0] == STOP:
            break
        x = buf[2:].copy()
        if checkpoint is not None and (buf[0] == SUSPEND or checkpoint.due(k)):
            checkpoint.save(k, x, server, state, bits)
        if buf[0] == SUSPEND:
            status, message = "suspended", f"stopped by a signal at round {k}; checkpoint written"
            break
        streams = fed.streams(k)
        t0 = time.perf_counter()
        if k >= rounds and hasattr(method, "client_metrics"):  # x^R's row: its metrics only, no local work
            uplink = _client(fed, lambda: method.client_metrics(params, fed.block, state, fed.point(x), streams))
        else:
            state, uplink = _client(fed, lambda: method.client_step(params, fed.block, state, fed.point(x), streams))
        t1 = time.perf_counter()
        agg = exchange(fed, uplink, streams.active)
        uplink = None  # summed: its (clients x T) fields are not held through the next client step
        t2 = time.perf_counter()
        timing = {"client": t1 - t0, "comm": t2 - t1, "server": 0.0}
        if evaluate is not None:
            timing["test"] = evaluate(k, x)
        requests = agg.stop_requests if agg is not None else 0
        if not comm.is_root:
            state = _answer_queries(fed, method, params, state, buf, streams, kinds)
            received = True
            k += 1
            continue
        grad_norm = float(np.linalg.norm(agg.grad / agg.n)) if optimality is None else optimality(agg, x)
        spent = dict(bits)  # row k: what it cost to reach x^k
        finite = np.isfinite(grad_norm) and np.isfinite(agg.loss)
        done = k >= rounds or grad_norm <= tol or not finite
        if not finite:
            status, message = "failed", (f"the gradient norm is {grad_norm} and the loss {agg.loss / agg.n} at round {k}: "
                                         f"the run diverged")
        elif grad_norm <= tol:
            status = "converged"
        first = agg
        if not done:
            _spend(bits, agg)
            queries = []  # (down, up, kind index) per participant of each extra exchange
            try:
                out = method.server_step(params, server, x, agg)
                while isinstance(out, Query):  # extra exchanges within the round
                    bits["down"] += out.down_bits
                    buf[0], buf[1], buf[2:] = QUERY, kinds.index(out.kind), out.point
                    comm.bcast_array(buf)
                    ts = time.perf_counter()
                    answer_query = getattr(method, f"client_{out.kind}")
                    state, reply = _client(fed, lambda: answer_query(
                        params, fed.block, state, bk.asarray(out.point), streams))
                    tc = time.perf_counter()
                    answer = exchange(fed, reply, streams.active)
                    reply = None  # summed: not held through the next query's client step
                    timing["client"] += tc - ts
                    timing["comm"] += time.perf_counter() - tc
                    _spend(bits, answer)
                    queries.append((out.down_bits * agg.n, answer.value_bits + answer.index_bits, int(buf[1])))
                    requests += answer.stop_requests
                    out, answer = method.server_resume(params, out.state, x, answer), None
                server, x_next, down = out
                bits["down"] += down
                if clock is not None:
                    _charge_round(bits, clock, k, agg, queries, down)
                if not np.all(np.isfinite(x_next)):
                    raise MpifedError(f"the next iterate has {np.count_nonzero(~np.isfinite(x_next))} non-finite "
                                      f"entries: the run diverged")
            except MpifedError as err:
                status, message, done, x_next = "failed", f"round {k}: {err}", True, x
            timing["server"] = time.perf_counter() - t2 - (timing["client"] - (t1 - t0)) - (timing["comm"] - (t2 - t1))
            # a server state may report what its safeguards did this round (clipped eigenvalues, ...)
            timing["report"] = dict(getattr(server, "report", None) or {}) if not done else {}
        if record:
            row = (k, first, x, timing, spent)
        if done:
            flag = STOP
        else:
            x = x_next
            k += 1
    x = buf[2:].copy()
    return x, status, message, k


def _evaluate(fed: Federation, x, lam: float):
    """Rank 0: (test accuracy, test loss, seconds) at x, or None without a test set. A set with ``partial`` (images)
    is shared by all ranks: each evaluates its chunks and rank 0 combines them in order; others are rank 0's."""
    t0, test = time.perf_counter(), fed.test
    if hasattr(test, "partial"):
        parts = fed.comm.gather_objects(test.partial(x))
        out = test.combine(np.concatenate(parts)) if parts is not None else None
    else:
        out = test.evaluate(x, lam) if test is not None else None
    return None if out is None else (*out, time.perf_counter() - t0)


def _spend(bits: dict, agg: Aggregate, counted: bool = True) -> None:
    """Add an exchange's uplink to the per-client ledger (averaged over all n clients), and count the exchange
    (unless not ``counted``: a setup message that is a simulator's convenience, such as GD's Gram matrices)."""
    bits["exchanges"] = bits.get("exchanges", 0) + counted  # a checkpoint of an older trace has no count
    bits["up"] += (agg.value_bits + agg.index_bits) / agg.n
    bits["up_index"] += agg.index_bits / agg.n


def _charge_round(bits: dict, clock, k: int, agg: Aggregate, queries: list, down: float) -> None:
    """Round k's simulated seconds into the ledger: its main exchange (the x^k broadcast the previous round
    charged, this round's uplink), then its queries, each charged its kind's FLOPs; ``down`` (x^{k+1}, a mean over
    all n) waits for round k+1. The round's count of queries of each kind but the first goes to ``net_queries_<j>``
    (what a replay needs to charge them)."""
    up = (agg.value_bits + agg.index_bits) / max(agg.participants, 1)
    q_down = sum(q[0] for q in queries) / max(agg.participants, 1)
    q_up = sum(q[1] for q in queries) / max(agg.participants, 1)
    pending = bits.get("net_pending", 0.0)
    kinds = [q[2] for q in queries]
    spent = clock.round(k, pending, up, kinds, q_down, q_up)
    _simulate(bits, spent, pending, up, q_down, q_up)
    for j in range(1, clock.flops.shape[1] - network.simulate.QUERY):
        bits[f"net_queries_{j}"] = float(kinds.count(j))
    bits["net_pending"] = down * agg.n / max(agg.participants, 1)


def _simulate(bits: dict, spent, down: float = 0.0, up: float = 0.0, q_down: float = 0.0, q_up: float = 0.0):
    """Add [seconds, communication, computation] to the ledger's cumulative simulated time and note the
    exchange's bits per participant (the trace's ``net_*`` columns, from which a replay re-simulates)."""
    for name, value in zip(network.SIM_COLUMNS, spent):
        bits[name] = bits.get(name, 0.0) + float(value)
    bits.update(zip(network.NET_COLUMNS, (down, up, q_down, q_up)))


def query_kinds(method) -> tuple:
    """The kinds of in-round query a method answers: ``kind`` is served by ``client_<kind>`` (default: ``query``)."""
    return tuple(getattr(method, "QUERIES", ("query",)))


def _answer_queries(fed, method, params, state, buf, streams, kinds):
    """Non-root ranks after a round's exchange: serve the server's queries, if any.

    Returns at the first broadcast that is not a QUERY; it is the next round's [flag, kind, x],
    left in ``buf`` for the main loop.
    """
    while True:
        fed.comm.bcast_array(buf)
        if buf[0] != QUERY:
            return state
        point = fed.backend.asarray(buf[2:].copy())
        answer_query = getattr(method, f"client_{kinds[int(buf[1])]}")
        state, reply = _client(fed, lambda: answer_query(params, fed.block, state, point, streams))
        exchange(fed, reply, streams.active)
        point = reply = None  # not held through the next broadcast and client step


def _client(fed: Federation, step):
    """A client step; a failure here ends the whole job with this rank's message (never a hang)."""
    try:
        return step()
    except Exception as err:
        if fed.comm.size == 1:
            raise
        print(f"mpifed: error on rank {fed.comm.rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        if fed.on_abort:
            fed.on_abort(f"rank {fed.comm.rank}: {err}")
        fed.comm.abort(1)


@dataclass(frozen=True)
class Composite:
    """The L1 term of P = f + lam1 ||x||_1 as the driver measures it: gamma = 1/L of the prox-gradient mapping
    G_gamma (:func:`mpifed.problems.l1.gradient_mapping`), L the smoothness constant of f (GD's)."""

    lam1: float
    gamma: float

    def optimality(self, agg, x) -> float:
        """||G_gamma(x^k)||, from the round's summed gradient."""
        return float(np.linalg.norm(l1.gradient_mapping(x, agg.grad / agg.n, self.gamma, self.lam1)))


def composite(fed: Federation, lam1: float) -> Composite | None:
    """The run's :class:`Composite` (None when lam1 = 0); collective: L from the clients' summed Gram matrices,
    a setup message outside the trace's bits."""
    if not lam1:
        return None
    zero = np.zeros(fed.block.n)
    agg = exchange(fed, Uplink(zero, fed.backend.xp.zeros((fed.block.n, fed.d)), zero, zero,
                               {"gram": fed.block.gram()}))
    L = smoothness_of_P(agg, fed.d, fed.block.lam, fed.block.curvature_bound) if agg is not None else None
    return Composite(lam1, 1.0 / fed.comm.allgather(L)[0])


def reference_solution(fed: Federation, iterations: int, prox: Composite | None = None):
    """x*, f* = P(x*) from ``iterations`` Newton steps from 0 (the papers use 20); with an L1 term, at most
    ``iterations`` proximal Newton steps, stopping once ||G_gamma(x)|| <= REFERENCE_TOL. On the sphere
    (``--problem pca``) the leading eigenvector instead (:func:`reference_eigenvector`; ``iterations`` > 0 only asks
    for it); a block with its own ``solution()`` (the saddle problem's linear solve for z*, the same on every rank)
    gives it directly."""
    if iterations == 0:
        return None, float("nan")
    if getattr(fed.block, "manifold", None) == "sphere":
        return reference_eigenvector(fed)
    if hasattr(fed.block, "solution"):
        return fed.block.solution()
    method, params, tol = newton, newton.Params(), 0.0
    if prox is not None:
        method, params, tol = proxnewton, proxnewton.Params(prox.lam1), REFERENCE_TOL
    out = {}

    def record(k, agg, x, timing, bits):
        out["f"] = agg.loss / agg.n + (l1.value(x, prox.lam1) if prox else 0.0)

    x, status, message, _ = iterate(fed, method, params, np.zeros(fed.d), iterations, tol, record,
                                    optimality=prox.optimality if prox else None)
    if status == "failed":
        raise MpifedError(f"the reference {'proximal ' if prox else ''}Newton solve for x* failed: {message}")
    f_star = fed.comm.allgather(out.get("f"))[0]
    return x, f_star


REFERENCE_TOL = 1e-13  # the L1 reference stops here (x* to about 1e-12; the rounding floor of ||G|| is near 1e-15)


EIGEN_TOL = 1e-12  # ARPACK's relative accuracy of the reference eigenpair


def reference_eigenvector(fed: Federation):
    """(v_1, f* = -lambda_1) of the mean second moment A = (1/n) sum_i A_i, the minimiser of PCA on the sphere.

    Rank 0 runs ARPACK (:func:`_largest_eigenpair`); each product A v it asks for is one collective exchange of the
    clients' A_i v (double-double sums: the same bits at any rank count). The sign is fixed so that v_1's largest
    entry is positive. Every rank returns the pair.
    """
    lam, v = _largest_eigenpair(fed, _moment_products, "the reference eigensolver for v_1")
    return v, -lam


def smoothness_matrix_free(fed: Federation, lam: float, curvature: float) -> float:
    """L = lam + c lambda_max((1/n) sum_i A_i^T A_i / m_i) without a d x d matrix (GD above its GRAM_MAX_D).

    Rank 0 runs ARPACK (:func:`_largest_eigenpair`, relative tolerance EIGEN_TOL); each product it asks for is
    one exchange of the clients' (1/m_i) sum_j (a_ij^T v) a_ij summed over the block in double-double
    (:func:`~mpifed.algorithms.hessian_free.common.block_sum`), so the products, hence L, are the same at any rank
    count. Like the Gram matrices it replaces, a simulator's convenience: not counted in exchanges or bits."""
    return float(_largest_eigenpair(fed, _gram_products, "the matrix-free eigensolver for L")[0] * curvature + lam)


def _largest_eigenpair(fed: Federation, products, what: str):
    """(lambda, v) of the largest algebraic eigenvalue of the symmetric operator whose product with v is
    ``products(fed, v)`` (the sum on rank 0, None elsewhere), on every rank: ARPACK on rank 0 (scipy's eigsh,
    tol :data:`EIGEN_TOL`, a seeded start), every other rank answering the products it asks for."""
    comm, d = fed.comm, fed.d
    buf = np.zeros(d + 1)

    def product(v):
        buf[0], buf[1:] = CONTINUE, np.ravel(v)
        comm.bcast_array(buf)
        return products(fed, buf[1:]).ravel()

    result = np.full(d + 1, np.nan)
    if comm.is_root:
        import scipy.sparse.linalg as sla

        try:
            if d <= 2:  # ARPACK needs k < d: the d products of the basis vectors, then a dense solve
                w, V = np.linalg.eigh(np.stack([product(e) for e in np.eye(d)], axis=1))
                lam, v = w[-1], V[:, -1]
            else:
                op = sla.LinearOperator((d, d), matvec=product, dtype=np.float64)
                v0 = np.random.default_rng(0).standard_normal(d)
                w, V = sla.eigsh(op, k=1, which="LA", tol=EIGEN_TOL, v0=v0)
                lam, v = w[0], V[:, 0]
            v = v / np.linalg.norm(v)
            result[0], result[1:] = lam, v * np.sign(v[np.argmax(np.abs(v))])
        except Exception as err:  # noqa: BLE001 - every rank must leave the loop below; the error follows
            result[0] = np.nan
            print(f"mpifed: {what} failed: {type(err).__name__}: {err}", file=sys.stderr)
        buf[0] = STOP
        comm.bcast_array(buf)
    else:
        while True:
            comm.bcast_array(buf)
            if buf[0] == STOP:
                break
            products(fed, buf[1:])
    comm.bcast_array(result)
    if not np.all(np.isfinite(result)):
        raise MpifedError(f"{what} failed (see the message above)")
    return float(result[0]), result[1:].copy()


def _gram_products(fed: Federation, v):
    """(1/n) sum_i A_i^T A_i v / m_i on rank 0 (None elsewhere): the clients' products, block-summed, in one exchange."""
    from .algorithms.base import block_sum
    from .problems.logistic import ClientVectors

    block = fed.block
    v = fed.backend.asarray(v)
    summed = _client(fed, lambda: block_sum(ClientVectors(block, block.margins(v), v, 0.0), fed.backend.xp))
    zero = np.zeros(block.n)
    agg = exchange(fed, Uplink(fed.backend.xp.zeros(block.n), None, zero, zero, sums={"Av": summed}))
    return None if agg is None else agg.mean("Av")


def _moment_products(fed: Federation, v):
    """(1/n) sum_i A_i v on rank 0 (None elsewhere): the clients' products summed in one exchange."""
    Av = _client(fed, lambda: fed.block.products(fed.backend.asarray(v)))
    zero = np.zeros(fed.block.n)
    agg = exchange(fed, Uplink(fed.backend.xp.zeros(fed.block.n), Av, zero, zero))
    return None if agg is None else agg.grad / agg.n


def run(config, comm=None, resume: str | Path | None = None) -> RunResult:
    """Run one configuration on every rank of ``comm`` (default: MPI.COMM_WORLD).

    ``config`` is a :class:`~mpifed.config.RunConfig`, a dict of its fields, or a TOML path.
    Call it on every rank of a script launched under ``mpiexec``; rank 0 writes the trace.
    With ``resume`` (a trace path), the run continues from that trace's checkpoint and ``config``
    is a dict of overrides (only ``checkpoint.RESUMABLE`` fields may differ from the checkpoint's).
    """
    comm = comm or world()
    if resume is not None:
        config, start = _resume_point(comm, Path(resume), dict(config or {}))
    else:
        if isinstance(config, (str, Path)):
            config = cfgmod.load(config)
        elif isinstance(config, dict):
            config = cfgmod.build(config)
        start = None
    SIGNALS.install()
    try:
        with threadpool_limits(limits=1, user_api="blas"):  # rank-independent rounding (see mpifed/__init__.py)
            return _run(config, comm, start)
    finally:
        SIGNALS.restore()


def _resume_point(comm, trace: Path, overrides: dict):
    """(config, what this rank resumes from) out of the checkpoint beside ``trace``, read on rank 0."""
    def read():
        if not comm.is_root:
            return None
        payload = ckpt.read(trace)
        config = ckpt.resumed_config(payload, overrides, trace)
        if payload["mpi_size"] != comm.size:
            raise MpifedError(f"the checkpoint of {trace} was written by {payload['mpi_size']} MPI rank(s) and is "
                              f"resumed on as many: mpiexec -n {payload['mpi_size']} (this job has {comm.size})")
        return payload, config

    payload, config = collective(comm, read) or (None, None)
    head = {key: payload[key] for key in ("round", "x", "bits", "x_star", "f_star")} if payload else None
    config, head = comm.allgather((config, head))[0]
    blob = comm.scatter_objects(payload["clients"] if payload else None)
    return config, {"payload": payload, "head": head, "client": blob, "trace": trace}


def _run(config, comm, start=None) -> RunResult:
    plan = collective(comm, lambda: resolve(config))
    fed = collective(comm, lambda: build_federation(plan.data, comm))
    map_large_vectors(fed.d)
    method = method_for(config.algorithm, config.model is not None)
    if config.model is None:  # before any d x d allocation: refuse a state that cannot fit
        collective(comm, lambda: footprint.check(config.algorithm, fed.d, fed.block.n, comm.is_root,
                                                 config.reference_iterations > 0 and start is None))
    params = collective(comm, lambda: method.Params.from_options(plan.method, fed))
    if getattr(method, "MATRIX_FREE_L", False) and fed.d > method.GRAM_MAX_D and params.L is None:
        params = dataclasses.replace(params, L=smoothness_matrix_free(fed, params.lam, params.curvature))
    prox = composite(fed, config.l1)
    if start is None:
        x_star, f_star = reference_solution(fed, config.reference_iterations, prox)
    else:  # the checkpoint's x*, f* (no second reference solve)
        x_star, f_star = start["head"]["x_star"], start["head"]["f_star"]
    if hasattr(params, "x_star"):  # oracle methods (NEWTON-STAR) are told x*
        params = dataclasses.replace(params, x_star=x_star)
    if getattr(params, "f_star", 0.0) is None:  # Polyak-type methods (LCD2, LCD3) without --f-star: P(x*)
        params = dataclasses.replace(params, f_star=f_star)
    x0 = fed.x0 if fed.x0 is not None else start_point(config, fed.d, x_star)
    if hasattr(method, "client_reference"):  # hyper-parameters from x* (SPPM's --step-size auto), before round 0
        params = collective(comm, lambda: _from_reference(fed, method, params, x_star, x0))
        note = method.describe(params) if comm.is_root and not config.quiet else None
        if note:
            print(f"{config.algorithm}: {note}", flush=True)
    if start is None:
        # label histogram of every client, gathered from what the ranks actually hold (sizes = its row sums)
        histogram = comm.gather_rows(np.asarray(fed.label_counts, dtype=np.float64), fed.n_clients)
        writer = collective(comm, lambda: _open_trace(fed, config, params, f_star, x_star, histogram, prox))
        resume = None
    else:
        head = start["head"]
        client = collective(comm, lambda: ckpt.client_state(start["client"], fed.backend))
        env = tracemod.environment(comm, fed.backend)  # this job's hosts and SLURM ids, noted in `resumes`
        writer = collective(comm, lambda: _reopen_trace(comm, start, env, params))
        server = start["payload"]["server"] if comm.is_root else None
        resume = ckpt.State(head["round"], head["x"], server, client, head["bits"])
    fed.on_abort = (lambda msg: writer.close("failed", msg)) if writer else None
    rows = {key: list(v) for key, v in writer.metrics_so_far().items()} if writer and start else {}
    sphere = config.problem == "pca" and config.model is None
    report = _Progress(config, comm.is_root, resume.k if resume else 0)
    events = [writer.file["events"][()]] if writer and start and "events" in writer.file else []
    def record(k, agg, x, timing, bits):
        loss = agg.loss / agg.n + (l1.value(x, prox.lam1) if prox else 0.0)
        row = {"round": k, "loss": loss, "grad_norm": float(np.linalg.norm(agg.grad / agg.n)),
               "f_gap": loss - f_star, "dist_to_opt": _distance(x, x_star, sphere),
               "participants": agg.participants, "bits_up": bits["up"], "bits_up_index": bits["up_index"], "bits_down": bits["down"],
               "exchanges": bits.get("exchanges", 0),
               **{name: bits.get(name, 0.0) for name in network.SIM_COLUMNS + network.NET_COLUMNS},
               **{f"net_queries_{j}": bits.get(f"net_queries_{j}", 0.0) for j in range(1, len(query_kinds(method)))},
               "time_client": timing["client"], "time_comm": timing["comm"], "time_server": timing["server"]}
        row["time_s"] = (rows["time_s"][-1] if rows else 0.0) + timing["client"] + timing["comm"] + timing["server"]
        if sphere:
            row["pca_gap"] = pca_gap(x, x_star) if x_star is not None else np.nan
        if prox:  # the composite problem: its optimality measure and the support against x*'s
            row["prox_grad_norm"] = prox.optimality(agg, x)
            row.update(l1.support_scores(x, x_star) if x_star is not None else {"nnz": float(np.count_nonzero(x))})
        row.update({key: float(v) for key, v in timing.get("report", {}).items()})
        evaluated = k % config.eval_every == 0
        if fed.test is not None:  # at the broadcast iterate x^k, outside time_s
            acc, test_loss, seconds = timing.get("test") or (np.nan, np.nan, 0.0)
            row.update(test_accuracy=acc, test_loss=test_loss, time_eval=seconds)
        if fed.validation is not None:  # --validation: the rows a step size may be tuned on (rank 0)
            acc, val_loss = fed.validation.evaluate(x, config.lam) if evaluated else (np.nan, np.nan)
            row.update(val_accuracy=acc, val_loss=val_loss)
        done_rows = len(rows.get("round", []))
        for key in set(rows) | set(row):  # a column that some rounds lack holds NaN there, as in the trace
            rows.setdefault(key, [np.nan] * done_rows).append(row.get(key, np.nan))
        writer.write(row)
        report.round(row)
        if "events" in agg.gathered:  # FedRCO's monitor: (client, local step) -> (score, action)
            _note_events(writer, events, k, agg.gathered["events"])

    if writer and start is None:
        writer.save_array("x/start", x0)
    clock = collective(comm, lambda: _clock(fed, config, method, params, writer))
    checkpoint = ckpt.Checkpointer(comm, config, writer, x_star, f_star, resume.k if resume else None)
    try:
        x, status, message, k = iterate(fed, method, params, x0, config.rounds, config.tol,
                                        record if comm.is_root else None, checkpoint, resume,
                                        lambda k, x: _evaluate(fed, x, config.lam) if k % config.eval_every == 0 else None,
                                        prox.optimality if prox else None, clock)
    except BaseException as err:  # serial runs and Ctrl-C: leave a closed trace that says why
        if writer:
            writer.close("failed", f"{type(err).__name__}: {err}")
        raise
    if writer:
        if status != "suspended":
            writer.save_array("x/final", x)
        writer.close(status, message)
        if status in ("completed", "converged"):  # a checkpoint exists only while a run is unfinished
            checkpoint.remove()
    result = RunResult(x, status, message, k, {key: np.asarray(v) for key, v in rows.items()},
                       writer.path if writer else None)
    report.summary(result)
    return result


def _from_reference(fed: Federation, method, params, x_star, x0):
    """The method's ``params`` after one setup exchange at x* (``client_reference``, None: no exchange) and the
    server's ``server_reference`` on rank 0, the same on every rank. The exchange is outside the bit ledger."""
    point = None if x_star is None else fed.point(x_star)
    uplink = _client(fed, lambda: method.client_reference(params, fed.block, point))
    if uplink is None:  # the same on every rank (it depends on params alone)
        return params
    agg = exchange(fed, uplink)
    new = collective(fed.comm, lambda: method.server_reference(params, agg, x_star, x0) if agg is not None else None)
    return fed.comm.allgather(new)[0]


def _clock(fed: Federation, config, method, params, writer):
    """Rank 0: the run's :class:`~mpifed.network.Clock` on ``--network`` / ``--device``, from the method's FLOP
    model on every client's shape; the FLOP vectors and the profile go into the trace (what a replay needs)."""
    rows = fed.comm.gather_rows(np.asarray(fed.client_shape, dtype=np.float64), fed.n_clients)
    if not fed.comm.is_root:
        return None
    shape = network.shape_of(rows, fed.d, fed.tau, fed.layers, fed.batch)
    work = network.work_of(method, params, shape)
    profile = cfgmod.network_profile(config)
    kinds = query_kinds(method) if isinstance(work.query, dict) else None
    vectors, server = work.vectors(shape.n, kinds), work.servers(kinds)
    if vectors.shape[1] - 2 not in (1, len(query_kinds(method))):
        raise MpifedError(f"{method.__name__}.flops gives {vectors.shape[1] - 2} query costs for the "
                          f"{len(query_kinds(method))} kinds of QUERIES")
    if writer is not None:
        writer.save_array("netsim/flops", vectors)
        writer.save_array("netsim/server_flops", server)
        writer.set_attrs(netsim={"profile": profile.to_dict(), "tau": shape.tau, "seed": fed.seed})
    return network.Clock(profile, vectors, server, fed.seed, shape.tau)


EVENT_COLUMNS = ("round", "client", "step", "score", "action")  # action: 1 soft rollback, 2 hard reset


def _note_events(writer, events: list, k: int, gathered) -> None:
    """Append round k's monitor actions (rows of ``gathered`` (n, K, 2) = score, action) to the trace's ``events``."""
    client, step = np.nonzero(gathered[:, :, 1] > 0)
    if not len(client):
        return
    events.append(np.stack([np.full(len(client), k), client, step, gathered[client, step, 0],
                            gathered[client, step, 1]], axis=1))
    writer.save_array("events", np.concatenate(events))
    writer.file["events"].attrs["columns"] = ",".join(EVENT_COLUMNS)


def start_point(config, d: int, x_star) -> np.ndarray:
    """x^0 = 0, or x* + sigma N(0, I) drawn from the run's seed (FedPM Test 1: sigma = 0.1); on the sphere
    (``--problem pca``) a random unit vector drawn from the run's seed."""
    if config.problem == "pca":
        x0 = np.random.default_rng(config.seed).standard_normal(d)
        return x0 / np.linalg.norm(x0)
    if config.x0_noise is None:
        return np.zeros(d)
    return x_star + config.x0_noise * np.random.default_rng(config.seed).standard_normal(d)


def pca_gap(x, v) -> float:
    """1 - <x, v>^2 / ||x||^2 for unit v, as ||x - <x, v> v||^2 / ||x||^2 (no cancellation near the optimum)."""
    return float(np.sum((x - (x @ v) * v) ** 2) / (x @ x))


def _distance(x, x_star, sphere: bool) -> float:
    """||x - x*||; on the sphere to the nearer of +-v_1 (both minimise)."""
    if x_star is None:
        return np.nan
    return float(np.linalg.norm(x - np.copysign(1.0, x @ x_star) * x_star if sphere else x - x_star))


def _reopen_trace(comm, start, env, params):
    """Rank 0: put the trace back as the checkpoint saw it and append to it. Hyper-parameters set from the run's
    target and budget (SPPM's ``--step-size auto``) must come out as they did at the start."""
    if not comm.is_root:
        return None
    ckpt.restore_trace(start["payload"], start["trace"])
    if getattr(params, "auto", None) is not None:
        before = tracemod.load(start["trace"]).attrs.get("method")
        if before != repr(params):
            raise ConfigError(f"this resume changes the method's parameters, which depend on --tol and --rounds: "
                              f"{before} -> {repr(params)}; resume with the run's original --tol and --rounds")
    return tracemod.TraceWriter.reopen(start["trace"], {"round": start["head"]["round"], "mpi_size": comm.size,
                                                        "environment": env})


def _open_trace(fed: Federation, config, params, f_star, x_star, histogram, prox=None):
    env = tracemod.environment(fed.comm, fed.backend)
    if not fed.comm.is_root:
        return None
    path = Path(config.out) if config.out else tracemod.default_path(config.algorithm, config.dataset)
    test = fed.test_note
    if fed.test and config.model is not None:
        test += f"; test_accuracy and test_loss (cross-entropy) of the global model x^k every {config.eval_every} round(s)"
        if fed.validation is not None:
            test += f"; val_accuracy and val_loss: the same on {fed.validation.name} (--validation)"
    elif fed.test:
        row_loss = "(a^T x - b)^2 / 2" if config.problem == "least-squares" else "log(1 + exp(-b a^T x))"
        test += (f"; test_accuracy = share of rows with b a^T x > 0, test_loss = mean {row_loss} "
                 f"+ lam/2 ||x||^2, every {config.eval_every} round(s) at x^k")
    writer = tracemod.TraceWriter(path, {
        "config": config.to_json(), "mpi_size": fed.comm.size, "environment": env, "f_star": f_star,
        "method": repr(params), "n_clients": fed.n_clients, "dimension": fed.d, "data_source": fed.source,
        "partition": {**fed.partition, "labels": list(fed.labels), "m_min": fed.m_min,
                      "m_max": fed.m_max},
        "test_set": test,
        **({"composite": f"P = f + lam1 ||x||_1, lam1 = {prox.lam1!r}; loss includes the L1 term; prox_grad_norm = "
                         f"||G_gamma(x^k)|| with gamma = 1/L = {prox.gamma!r}; nnz, support_recall and "
                         f"support_precision against x*'s support"} if prox else {}),
    }, overwrite=config.overwrite)
    if x_star is not None:
        writer.save_array("x/star", x_star)
    writer.save_array("partition/labels", histogram.astype(np.int64))  # (n, labels): rows per label
    writer.save_array("partition/sizes", histogram.sum(axis=1).astype(np.int64))
    return writer


class _Progress:
    """Rank 0's console output while a run goes on, and a short result table at the end.

    On a terminal, one live line (round, ||grad P||, bits, rounds/s, ETA) rewritten in place;
    otherwise (SLURM logs, pipes) one plain line every tenth of the round budget.
    """

    COLUMNS = ("round", "grad_norm", "f_gap", "dist_to_opt", "bits_up", "time_s")
    NN_COLUMNS = ("round", "loss", "grad_norm", "test_accuracy", "bits_up", "time_s")

    def __init__(self, config, active: bool, first_round: int = 0):
        self.active = active and not config.quiet
        self.live = self.active and sys.stdout.isatty()
        self.every = max(1, config.rounds // 10)
        self.start, self.first, self.last = time.perf_counter(), first_round, 0.0
        self.config = config

    def round(self, row):
        if not self.active:
            return
        k, now = int(row["round"]), time.perf_counter()
        if self.live and now - self.last < 0.2 and k < self.config.rounds:
            return
        if not self.live and (k % self.every or k == 0):
            return
        self.last = now
        rate = (k + 1 - self.first) / max(now - self.start, 1e-9)
        eta = (self.config.rounds - k) / rate
        measure = f"|G(x)| {row['prox_grad_norm']:.3e}" if "prox_grad_norm" in row else f"|grad P| {row['grad_norm']:.3e}"
        line = (f"round {k:>6}/{self.config.rounds}  {measure}  bits/client {row['bits_up']:.3e}  "
                f"{rate:.1f} rounds/s  ETA {eta:.0f} s")
        if self.live:
            print("\r" + line, end="", flush=True)
        else:
            print(line, flush=True)

    def summary(self, result: RunResult):
        if not self.active:
            return
        m, c = result.metrics, self.config
        if self.live and self.last:
            print()  # end the live line
        why = result.message
        if result.status == "converged":
            measure = ("||G(x)||", "prox_grad_norm") if c.l1 else ("||grad P||", "grad_norm")
            why = f"{measure[0]} = {m[measure[1]][-1]:.3e} <= --tol {c.tol:g}" + (
                ", the default; --tol 0 runs every round" if c.tol == cfgmod.DEFAULT_TOL else "")
        print(f"{c.algorithm} on {c.dataset}: {result.status} after {result.rounds} rounds" + (f" ({why})" if why else ""))
        if not len(m.get("round", ())):
            print(f"trace: {result.path}", flush=True)
            return
        rows = sorted({0, *range(0, len(m["round"]), max(1, len(m["round"]) // 8)), len(m["round"]) - 1})
        columns = self.NN_COLUMNS if c.model is not None else self.COLUMNS
        if c.l1:
            columns = ("round", "prox_grad_norm", "f_gap", "dist_to_opt", "nnz", "bits_up", "time_s")
        print("  ".join(f"{h:>12}" for h in columns))
        for i in rows:
            print("  ".join(f"{m[h][i]:>12.0f}" if h == "round" else f"{m[h][i]:>12.4e}" for h in columns))
        print(f"trace: {result.path}", flush=True)
