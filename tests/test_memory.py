"""Memory: what a rank imports, and the chunked versions of the big per-round and setup
computations, which must give the very bits of the one-shot ones (checked against plain re-implementations
and dense oracles written here)."""
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from mpifed import compressors, tri

from mpifed.problems import logistic as problems
from mpifed.backend import local_rank_and_size
from mpifed.data.libsvm import read_libsvm


def test_a_rank_does_not_import_what_only_rank_0_or_other_commands_need():
    """h5py (the trace writer, rank 0), matplotlib (plots), scipy.special (synthetic data) and cupy stay
    unloaded by the driver, the CLI and the bench: each would add to every rank's resident set."""
    code = ("import sys, mpifed.driver, mpifed.cli, mpifed.ops.bench, mpifed.federation; "
            "print(sorted(m for m in ('h5py', 'matplotlib', 'scipy.special', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_libsvm_numbers_are_what_float_reads(tmp_path):
    """The one-call numeric parse gives float()'s value of every token, also where it must fall back
    (a token numpy's reader refuses but float() accepts, like 1_0)."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal(200) * 10.0 ** rng.integers(-300, 300, 200)
    tokens = [repr(float(v)) for v in values] + ["1e-400", "1E5", ".5", "5.", "+3", "0.1000000000000000055511151231257827"]
    lines = [f"{1 if i % 2 else -1} {i % 9 + 1}:{t}" for i, t in enumerate(tokens)]
    path = tmp_path / "f.svm"
    path.write_text("\n".join(lines) + "\n")
    ds = read_libsvm(path, n_features=9)
    expected = np.array([float(t) for t in tokens])
    kept = expected != 0.0
    assert ds.A.data.tobytes() == expected[kept].tobytes()
    path.write_text("1 1:1_0 2:3\n-1 3:2\n")  # float("1_0") == 10.0; numpy's reader stops there
    ds = read_libsvm(path)
    assert ds.A.toarray().tolist() == [[10.0, 3.0, 0.0], [0.0, 0.0, 2.0]]


def _sparse_block(n=12, rows=9, d=30, seed=0):
    rng = np.random.default_rng(seed)
    A = sp.random(n * rows, d, density=0.2, format="csr", random_state=seed)
    A.data[:] = rng.standard_normal(A.nnz)
    b = np.where(rng.random(n * rows) < 0.5, -1.0, 1.0)
    return A, b, np.arange(n + 1) * rows


def test_hessian_scatter_matrix_built_in_pieces_is_the_same(monkeypatch):
    """Any number of rows per construction step gives the same matrix, and its Hessians equal the dense
    per-client sum (1/m) sum_j h_j a_j a_j^T + lam I."""
    A, b, offsets = _sparse_block()
    monkeypatch.setattr(problems, "PAIR_CHUNK", 1 << 20)
    whole = problems.LogisticBlock(A, b, offsets, 1e-3, dense=False)
    h = np.random.default_rng(1).random(A.shape[0])
    reference = whole.hessians_from_coefficients(h)
    for chunk in (1, 7, 100):
        monkeypatch.setattr(problems, "PAIR_CHUNK", chunk)
        block = problems.LogisticBlock(A, b, offsets, 1e-3, dense=False)
        for name in ("data", "indices", "indptr"):
            assert getattr(block._M, name).tobytes() == getattr(whole._M, name).tobytes()
        assert block.hessians_from_coefficients(h).tobytes() == reference.tobytes()
    dense = A.toarray()
    for i in range(len(offsets) - 1):
        r = slice(offsets[i], offsets[i + 1])
        full = (dense[r].T * h[r]) @ dense[r] / (offsets[i + 1] - offsets[i]) + 1e-3 * np.eye(A.shape[1])
        np.testing.assert_allclose(reference[i], tri.pack(full), rtol=1e-12, atol=1e-15)


def test_dense_hessians_in_client_chunks_keep_bits(monkeypatch):
    """The dense path computes a few clients at a time: the same bits as the one-shot product."""
    rng = np.random.default_rng(2)
    n, m, d = 9, 5, 16
    A = sp.csr_matrix(rng.standard_normal((n * m, d)))
    block = problems.LogisticBlock(A, np.ones(n * m), np.arange(n + 1) * m, 1e-3)
    assert block.dense
    h = rng.random((n, m))
    full = (block._A3 * (block._W * h)[:, :, None]).transpose(0, 2, 1) @ block._A3
    one_shot = full[:, block._tri_rows, block._tri_cols]
    one_shot[:, block._diag] += 1e-3
    for chunk in (1, 8 * d * d * 3, 1 << 30):
        monkeypatch.setattr(problems, "CHUNK_BYTES", chunk)
        packed = block.hessians_from_coefficients(h)
        assert packed.tobytes() == one_shot.tobytes()
    oracle = np.einsum("ij,ija,ijb->iab", block._W * h, block._A3, block._A3) + 1e-3 * np.eye(d)
    np.testing.assert_allclose(packed, tri.pack(oracle), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("order", ["C", "F"])
def test_topk_and_frobenius_in_row_chunks_match_plain_oracles(monkeypatch, order):
    """Top-K a few rows at a time equals a stable-sort oracle (K largest |x|, ties to the lower index);
    the chunked Frobenius norm has the bits of the one-shot row sum of the row-major array, in either
    memory layout (a client's l_i must not depend on how its block is laid out)."""
    rng = np.random.default_rng(4)
    d, n, K = 12, 23, 20
    T = tri.size(d)
    X = rng.standard_normal((n, T))
    X[::2, : T // 2] = np.round(X[::2, : T // 2])  # many ties at the threshold
    X[3] = 0.0
    X = np.asarray(X, order=order)
    oracle = np.zeros_like(X)
    for i in range(n):
        keep = np.argsort(-np.abs(X[i]), kind="stable")[:K]
        oracle[i, keep] = X[i, keep]
    w = tri.multiplicity(d)
    Xc = np.ascontiguousarray(X)
    plain_norm = np.sqrt((Xc * Xc * w).sum(axis=-1))
    for chunk in (1, 8 * T * 5, 1 << 30):
        monkeypatch.setattr(tri, "ROW_CHUNK_BYTES", chunk)
        kept = compressors.TopK(d=d, k=K).compress(X).values
        assert kept.tobytes() == oracle.tobytes() and kept.flags[f"{order}_CONTIGUOUS"]
    for rows in (1, 2, 5, 11, n):
        monkeypatch.setattr(tri, "ROW_CHUNK_BYTES", 8 * T * rows)
        chunks = tri.row_chunks(n, T)
        assert [c.start for c in chunks] == list(range(0, n, rows)) and chunks[-1].stop == n
        assert tri.frobenius(X).tobytes() == plain_norm.tobytes()
    assert tri.row_chunks(1, T) == [slice(0, 1)] and tri.row_chunks(0, T) == []
    np.testing.assert_allclose(plain_norm, np.linalg.norm(tri.unpack(X, d), axis=(1, 2)), rtol=1e-13)


def test_local_rank_comes_from_the_launcher(monkeypatch):
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK",
                "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(var, raising=False)
    assert local_rank_and_size() == (0, 1)
    monkeypatch.setenv("SLURM_LOCALID", "3")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert local_rank_and_size() == (3, 4)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")  # Open MPI's variable comes before SLURM's
    assert local_rank_and_size()[0] == 1
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x3)")  # not a plain count: the rank bounds it below
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK")
    assert local_rank_and_size() == (3, 4)


@pytest.mark.mpi
def test_local_rank_from_mpi_counts_the_ranks_of_this_node():
    from mpifed.comm import world

    comm = world()
    rank, size = local_rank_and_size(comm)
    assert size == comm.size and rank == comm.rank  # mpiexec on one machine: every rank is local


def _blocks():
    """A dense (synthetic-like) and a sparse (a9a-like) block of 10 clients of unequal sizes."""
    rng = np.random.default_rng(7)
    sizes = np.array([3, 5, 2, 6, 4, 3, 5, 2, 4, 6])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    dense = sp.csr_matrix(rng.standard_normal((offsets[-1], 9)))
    sparse = sp.random(offsets[-1], 30, density=0.15, random_state=8, format="csr")
    b = np.where(rng.random(offsets[-1]) < 0.5, -1.0, 1.0)
    return [problems.LogisticBlock(A, b, offsets, 1e-2) for A in (dense, sparse)], rng


def test_a_range_of_clients_is_a_block_with_the_same_numbers():
    """block.clients(lo, hi) gives clients lo..hi-1 the loss, gradient and Hessian the whole block gives them."""
    (dense, sparse), rng = _blocks()
    assert dense.dense and not sparse.dense
    for block in (dense, sparse):
        x = rng.standard_normal(block.d)
        whole = block.derivatives(x)
        for lo, hi in ((0, 3), (3, 4), (4, 10), (0, 10)):
            part = block.clients(lo, hi).derivatives(x)
            assert part[2].shape == (hi - lo, block.T)
            for w, p in zip(whole, part):
                assert p.tobytes() == w[lo:hi].tobytes()


def test_hessians_of_some_clients_are_their_rows_of_the_whole_block():
    """FedNL-PP computes Hessians for the round's participants only: the same bits as the whole block's rows."""
    (dense, sparse), rng = _blocks()
    for block in (dense, sparse):
        h = block.derivatives_and_coefficients(rng.standard_normal(block.d))[2]
        whole = block.hessians_from_coefficients(h)
        for clients in ([0], [9], [2, 3, 7], [8, 1, 4], list(range(10)), []):
            got = block.hessians_of(clients, h)
            assert got.shape == (len(clients), block.T) and got.tobytes() == whole[clients].tobytes()


@pytest.mark.parametrize("compressor,option", [("topk:k=2d", 2), ("randk:k=1d", 1), ("natural", 2)])
def test_fednl_chunked_client_step_is_algorithm_1(monkeypatch, compressor, option):
    """FedNL's client step, a few clients at a time, against Algorithm 1 written here for the whole block:
    H_i^{k+1} = H_i^k + alpha C(hess f_i - H_i^k) bit for bit, l_i = ||hess f_i - H_i^k||_F, and the
    chunk-by-chunk double-double sums of S_i and H_i^0 round to the exact (Fraction) sums over clients."""
    from fractions import Fraction

    from mpifed.algorithms import base

    from mpifed.algorithms.second_order import fednl
    from mpifed.rng import ClientStreams

    (dense, sparse), rng = _blocks()
    for block in (dense, sparse):
        comp = compressors.make(compressor, block.d, 64)
        p = fednl.Params(comp, comp.theoretical_alpha(option), option)
        x0, x1 = rng.standard_normal(block.d), rng.standard_normal(block.d)
        streams = ClientStreams(5, np.arange(20, 30), 3)
        H0 = block.derivatives(x0)[2]
        hess = block.derivatives(x1)[2]
        S = comp.compress(hess - H0, streams).values
        for step in (1, 3, 10):
            monkeypatch.setattr(base, "CLIENT_CHUNK_BYTES", 8 * block.T * step)
            assert len(base.client_chunks(block)) == -(-10 // step)
            state, init = fednl.client_init(p, block, x0, ClientStreams(5, np.arange(20, 30), -1))
            assert state.H.tobytes() == H0.tobytes()
            state, up = fednl.client_step(p, block, state, x1, streams)
            assert state.H.tobytes() == (H0 + p.alpha * S).tobytes()
            if option == 2:
                assert up.fields["l"].tobytes() == tri.frobenius(hess - H0).tobytes()
                np.testing.assert_allclose(up.fields["l"], np.linalg.norm(tri.unpack(hess - H0, block.d), axis=(1, 2)),
                                           rtol=1e-13)
            for (hi, lo), rows in ((init.sums["hess"], H0), (up.sums["S"], S)):
                exact = [float(sum(map(Fraction, column))) for column in rows.T]
                assert (hi + lo).tolist() == exact


# Every second-order method on the logistic problem, with what it needs beyond the shared config below.
CHUNKED_RUNS = {
    "fednl": {"compressor": "topk:k=2d"},
    "fednl-bc": {"compressor": "topk:k=2d"},
    "fednl-pp": {"compressor": "topk:k=2d", "participation": 4},
    "fednl-cr": {"compressor": "topk:k=2d"},
    "fednl-ls": {"compressor": "topk:k=2d"},
    "newton": {},
    "newton-star": {},
    "nl1": {"compressor": "randk:k=2,p=0.5"},
    "nl2": {},
    "cnl": {"compressor": "randk:k=1,p=0.5"},
    "fedpm": {"local_steps": 2, "participation": 4},
    "localnewton": {"local_steps": 2, "local_line_search": True, "participation": 4},
}


@pytest.mark.parametrize("algorithm,dataset", [(a, "synthetic") for a in CHUNKED_RUNS] + [
    pytest.param(a, "a9a", marks=pytest.mark.data("a9a"))
    for a in ("fednl-pp", "newton", "newton-star", "nl1", "nl2", "cnl", "fedpm", "localnewton")])
def test_a_run_in_client_chunks_is_the_run_in_one(monkeypatch, tmp_path, algorithm, dataset):
    """The whole trace of every second-order method is the same, bit for bit, whether a rank's clients go through
    a round (and the set-up's Hessian uploads) in one piece or one client at a time with row-wise work a row at a
    time (dense and sparse data; the x* reference solve included: it is Newton's step). FedNL-PP, FedPM and
    LocalNewton run with 4 of 7 clients per round."""
    from mpifed.algorithms import base
    from mpifed.driver import run

    config = {"dataset": dataset, "clients": 7, "samples_per_client": 12, "algorithm": algorithm,
              "rounds": 8, "seed": 4, "quiet": True, **CHUNKED_RUNS[algorithm]}
    if dataset == "synthetic":
        config["features"] = 10
    results = []
    for client_bytes, row_bytes in ((1 << 26, 1 << 22), (1, 1)):
        monkeypatch.setattr(base, "CLIENT_CHUNK_BYTES", client_bytes)
        monkeypatch.setattr(tri, "ROW_CHUNK_BYTES", row_bytes)
        results.append(run({**config, "out": str(tmp_path / f"{client_bytes}.h5")}))
    one, chunked = results
    assert one.rounds == chunked.rounds > 0 and one.status == chunked.status != "failed"
    assert one.x.tobytes() == chunked.x.tobytes()
    for key in ("loss", "grad_norm", "bits_up", "bits_up_index", "bits_down", "participants", "f_gap"):
        assert one.metrics[key].tobytes() == chunked.metrics[key].tobytes(), key


def _exact_sums(rows):
    from fractions import Fraction

    return [float(sum(map(Fraction, column))) for column in rows.T]


@pytest.mark.parametrize("algorithm", ["newton-star", "nl1", "nl2"])
def test_setup_hessians_summed_in_chunks_are_the_exact_sums(monkeypatch, algorithm):
    """NEWTON-STAR's grad^2 f_i(x*), NL1's H_i^0 and NL2's A_i^0 and G_i, summed a few clients at a time, round
    to the exact (Fraction) sums of the packed matrices the whole block gives its clients."""
    from mpifed.algorithms import base
    from mpifed.algorithms.second_order import newton_star, nl1, nl2
    from mpifed.rng import ClientStreams

    (dense, sparse), rng = _blocks()
    for block in (dense, sparse):
        x0, x_star = rng.standard_normal(block.d), rng.standard_normal(block.d)
        h0 = block.derivatives_and_coefficients(x0)[2]
        module, p, expected = {
            "newton-star": (newton_star, newton_star.Params(x_star=x_star), {"hess_star": block.derivatives(x_star)[2]}),
            "nl1": (nl1, nl1.Params(), {"H0": block.hessians_from_coefficients(h0)}),
            "nl2": (nl2, nl2.Params(), {"A0": block.hessians_from_coefficients(h0 + 0.5), "gram": None}),
        }[algorithm]
        if algorithm == "nl2":
            gram = block.hessians_from_coefficients(np.ones_like(h0))
            gram[:, tri.diagonal(block.d)] -= block.lam
            expected["gram"] = gram
            np.testing.assert_allclose(tri.unpack(gram[2], block.d), _dense_gram(block, 2), rtol=1e-12, atol=1e-14)
        for step in (1, 3, 10):
            monkeypatch.setattr(base, "CLIENT_CHUNK_BYTES", 8 * block.T * step)
            state, up = module.client_init(p, block, x0, ClientStreams(5, np.arange(20, 30), -1))
            assert not up.fields and set(up.sums) == set(expected)
            for name, rows in expected.items():
                hi, lo = up.sums[name]
                assert (hi + lo).tolist() == _exact_sums(rows), name
            if algorithm != "newton-star":
                assert state.h.tobytes() == h0.tobytes()


def _dense_gram(block, i):
    """(1/m_i) A_i^T A_i of the block's client i, from its dense rows (an oracle for NL2's G_i)."""
    if block.dense:
        rows = block._A3[i, : block.sizes[i]]
    else:
        start = int(block.sizes[:i].sum())
        rows = block._A[start:start + block.sizes[i]].toarray()
    return rows.T @ rows / block.sizes[i]


@pytest.mark.parametrize("algorithm", ["fedpm", "localnewton"])
def test_local_newton_in_chunks_is_the_whole_block_run(monkeypatch, algorithm):
    """LocalNewton's and FedPM's client steps, a few clients at a time, send what the K local Newton steps of the
    whole block give (theta_i, or P_i (theta_i - x) with P_i summed exactly over the participants), bit for bit,
    and the whole-block run's first step solves each client's Newton system (a dense oracle)."""
    from mpifed.algorithms import base
    from mpifed.algorithms.second_order import fedpm, localnewton
    from mpifed.rng import ClientStreams

    (dense, sparse), rng = _blocks()
    for block in (dense, sparse):
        x = 0.3 * rng.standard_normal(block.d)
        streams = ClientStreams(5, np.arange(20, 30), 3, active=np.arange(10) % 3 != 1)
        active = np.asarray(streams.active, dtype=float)
        ls = localnewton.Params(eta=0.9, K=2, line_search=True)
        whole = localnewton.local_newton(block, x, 2, 0.9, streams.client_ids, ls if algorithm == "localnewton" else None)
        one = localnewton.local_newton(block, x, 1, 1.0, streams.client_ids)
        _, grad, hess = block.derivatives(x)
        oracle = x - np.linalg.solve(tri.unpack(hess, block.d), grad[:, :, None])[..., 0]
        np.testing.assert_allclose(one.theta, oracle, rtol=1e-10, atol=1e-12)
        for step in (1, 3, 10):
            monkeypatch.setattr(base, "CLIENT_CHUNK_BYTES", 8 * block.T * step)
            if algorithm == "localnewton":
                _, up = localnewton.client_step(ls, block, None, x, streams)
                assert up.fields["theta"].tobytes() == (whole.theta * active[:, None]).tobytes()
            else:
                _, up = fedpm.client_step(fedpm.Params(eta=0.9, K=2), block, None, x, streams)
                moved = (whole.P @ (whole.theta - x)[:, :, None])[..., 0] * active[:, None]
                assert up.fields["P_moved"].tobytes() == moved.tobytes() and set(up.sums) == {"P"}
                hi, lo = up.sums["P"]
                assert (hi + lo).tolist() == _exact_sums(whole.hess * active[:, None])
            assert up.loss.tobytes() == whole.loss.tobytes() and up.grad.tobytes() == whole.grad.tobytes()
