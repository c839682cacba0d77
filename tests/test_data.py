"""Tests of mpifed.data against independent oracles: the row and feature counts in datasets/README.md,
the SHA256SUMS file, hand-parsed raw lines, and hand-written small files."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mpifed.data import (DATASETS, Partition, add_intercept, cache_dir, describe, fetch, load, paper_split,
                         read_libsvm, resolve, synthetic_clients)
from mpifed.data.registry import data_dirs
from mpifed.data.synthetic import ground_truth
from mpifed.errors import DataError

from conftest import real_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test sees the user's data folders or cache."""
    monkeypatch.delenv("MPIFED_DATA", raising=False)
    monkeypatch.setenv("MPIFED_CACHE", str(tmp_path / "cache"))


def write(tmp_path, text, name="data.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def hand_parse(line):
    """Oracle for one raw LIBSVM line: (label, {0-based column: value}) by plain string operations."""
    tokens = line.split()
    return int(float(tokens[0])), {int(t.split(":")[0]) - 1: float(t.split(":")[1]) for t in tokens[1:]}


def raw_lines(name):
    return real_data(name).read_text().splitlines()


@pytest.fixture(scope="module")
def a9a():
    return read_libsvm(real_data("a9a"))


# ---------------------------------------------------------------- real files (counts from datasets/README.md)

@pytest.mark.data("a9a")
def test_a9a_counts(a9a):
    assert a9a.A.shape == (32561, 123)
    assert (np.sum(a9a.b == -1), np.sum(a9a.b == 1)) == (24720, 7841)
    assert a9a.A.dtype == np.float64 and a9a.b.dtype == np.float64
    assert a9a.A.has_canonical_format
    assert a9a.name == "a9a" and a9a.source == str(real_data("a9a").resolve())


@pytest.mark.data("a9a")
def test_a9a_rows_match_hand_parse(a9a):
    lines = raw_lines("a9a")
    for k in (0, 999, 32560):
        label, entries = hand_parse(lines[k])
        expected = np.zeros(123)
        expected[list(entries)] = list(entries.values())
        np.testing.assert_array_equal(a9a.A[k].toarray().ravel(), expected)
        assert a9a.b[k] == label


@pytest.mark.data("w8a")
def test_w8a_shape():
    ds = read_libsvm(real_data("w8a"))
    assert ds.A.shape == (49749, 300)
    assert (np.sum(ds.b == -1), np.sum(ds.b == 1)) == (48270, 1479)


@pytest.mark.data("phishing")
def test_phishing_zero_one_labels_map_to_pm1():
    ds = read_libsvm(real_data("phishing"))
    assert set(np.unique(ds.b)) == {-1.0, 1.0}
    assert (np.sum(ds.b == -1), np.sum(ds.b == 1)) == (4898, 6157)
    label, entries = hand_parse(raw_lines("phishing")[0])  # label 0 -> -1; 30 entries of 0.18257
    assert label == 0 and ds.b[0] == -1.0
    np.testing.assert_array_equal(ds.A[0].indices, sorted(entries))
    np.testing.assert_array_equal(ds.A[0].data, [0.18257] * 30)


@pytest.mark.data("mushrooms")
def test_mushrooms_one_two_labels_map_to_pm1():
    ds = read_libsvm(real_data("mushrooms"))
    assert (np.sum(ds.b == -1), np.sum(ds.b == 1)) == (3916, 4208)


@pytest.mark.data("a7a")
def test_a7a_without_final_newline():
    assert not real_data("a7a").read_bytes().endswith(b"\n")
    ds = read_libsvm(real_data("a7a"), n_features=123)
    assert ds.A.shape == (16100, 123)
    label, entries = hand_parse(raw_lines("a7a")[-1])
    assert ds.b[-1] == label
    np.testing.assert_array_equal(ds.A[-1].indices, sorted(entries))


# ---------------------------------------------------------------- registry

@pytest.mark.skipif(not (SHARED / "SHA256SUMS").is_file(),
                    reason=f"needs the shared data folder's checksum list {SHARED / 'SHA256SUMS'} (not a registry dataset)")
def test_registry_hashes_equal_sha256sums():
    sums = {}
    for line in (SHARED / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        if rel.startswith("libsvm/"):
            sums[rel[len("libsvm/"):]] = digest
    assert sums == {name: info.sha256 for name, info in DATASETS.items()}
    for name, info in DATASETS.items():
        assert info.url == f"https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/{name}"
        assert info.test is None or info.test in DATASETS


def test_registry_dimensions_and_test_splits():
    assert {n: i.n_features for n, i in DATASETS.items()} == {
        "a1a": 123, "a1a.t": 123, "a7a": 123, "a9a": 123, "a9a.t": 123, "w7a": 300, "w7a.t": 300,
        "w8a": 300, "w8a.t": 300, "phishing": 68, "mushrooms": 112, "madelon.t": 500}
    assert DATASETS["a9a"].rows == 32561 and DATASETS["w8a"].rows == 49749
    assert DATASETS["a9a"].test == "a9a.t" and DATASETS["w8a"].test == "w8a.t"
    assert DATASETS["phishing"].test is None


@pytest.mark.data("a1a")
@pytest.mark.parametrize("folder", [".", "libsvm"])
def test_resolve_via_mpifed_data(monkeypatch, tmp_path, folder):
    (tmp_path / "libsvm").mkdir()
    (tmp_path / "libsvm" / "a1a").symlink_to(real_data("a1a"))  # a datasets folder with a libsvm/ subfolder
    monkeypatch.setenv("MPIFED_DATA", str(tmp_path / folder))
    path, info = resolve("a1a")
    assert path.resolve() == real_data("a1a").resolve()
    assert info is DATASETS["a1a"]
    assert dict((r[0], r[3]) for r in describe())["a1a"] == str(path)


@pytest.mark.data("a9a.t")
def test_load_uses_registry_width(monkeypatch):
    # a9a.t never uses feature 123 (its largest index is 122, datasets/README.md); the registry's width makes it match a9a.
    assert read_libsvm(real_data("a9a.t")).A.shape == (16281, 122)
    monkeypatch.setenv("MPIFED_DATA", str(real_data("a9a.t").parent))
    ds = load("a9a.t")
    assert ds.A.shape == (16281, 123) and ds.name == "a9a.t"
    assert (np.sum(ds.b == -1), np.sum(ds.b == 1)) == (12435, 3846)
    assert load(real_data("a9a.t")).A.shape == (16281, 123)  # a path to an unmodified registered file


def test_missing_name_says_how_to_fetch():
    with pytest.raises(DataError, match=r"dataset 'w8a' is not available locally; run `mpifed datasets "
                                        r"fetch w8a` or set MPIFED_DATA"):
        resolve("w8a")
    assert dict((r[0], r[3]) for r in describe())["w8a"] == "-"


def test_unknown_name_lists_registry(tmp_path):
    with pytest.raises(DataError) as err:
        resolve("no-such-set")
    msg = str(err.value)
    assert "no-such-set" in msg and "\n" not in msg
    assert all(name in msg for name in DATASETS)


def test_local_checksum_mismatch_names_file_and_hashes(monkeypatch, tmp_path):
    bad = write(tmp_path, "1 1:1\n-1 2:1\n", name="a1a")
    monkeypatch.setenv("MPIFED_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        resolve("a1a")
    msg = str(err.value)
    assert str(bad) in msg and DATASETS["a1a"].sha256 in msg
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in msg
    _, info = resolve(str(bad))  # as a plain path the modified copy is just a file
    assert info is None


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MPIFED_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MPIFED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mpifed" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mpifed" / "datasets"
    monkeypatch.setenv("MPIFED_DATA", str(tmp_path / "d"))
    assert data_dirs() == [tmp_path / "d", tmp_path / "d" / "libsvm", cache_dir()]


@pytest.mark.data("a1a")
def test_fetch_file_url_verifies_and_skips(monkeypatch, tmp_path):
    dest = tmp_path / "cache"
    path = fetch("a1a", url=real_data("a1a").as_uri(), dest_dir=dest)
    assert path == dest / "a1a"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DATASETS["a1a"].sha256
    assert os.listdir(dest) == ["a1a"]
    # A verified copy is reused: a dead URL is never opened.
    assert fetch("a1a", url=(tmp_path / "gone").as_uri(), dest_dir=dest) == path
    # The default destination is the cache, where resolve() then finds it.
    fetch("a1a", url=real_data("a1a").as_uri())
    assert resolve("a1a")[0] == cache_dir() / "a1a"


def test_fetch_wrong_checksum_leaves_nothing(tmp_path):
    dest = tmp_path / "cache"
    other = write(tmp_path, "1 1:1\n-1 2:1\n", name="not-a1a")
    with pytest.raises(DataError) as err:
        fetch("a1a", url=other.as_uri(), dest_dir=dest)
    msg = str(err.value)
    assert DATASETS["a1a"].sha256 in msg and hashlib.sha256(other.read_bytes()).hexdigest() in msg
    assert os.listdir(dest) == []
    with pytest.raises(DataError, match="could not download a1a"):
        fetch("a1a", url=(tmp_path / "gone").as_uri(), dest_dir=dest)
    assert os.listdir(dest) == []
    with pytest.raises(DataError, match="unknown dataset 'a2a'"):
        fetch("a2a")


# ---------------------------------------------------------------- parser on hand-written files

def test_tolerant_parsing(tmp_path):
    text = ("# header comment\n"
            "+1 1:0.5 3:2   \r\n"
            "\n"
            "-1 2:-1.5e1 # trailing comment\n"
            "   \n"
            "1 4:1 1:3")  # unsorted entries, no final newline
    ds = read_libsvm(write(tmp_path, text))
    expected = np.array([[0.5, 0, 2, 0], [0, -15, 0, 0], [3, 0, 0, 1]])
    np.testing.assert_array_equal(ds.A.toarray(), expected)
    np.testing.assert_array_equal(ds.b, [1, -1, 1])
    assert ds.A.has_canonical_format and ds.A.nnz == 5
    assert read_libsvm(write(tmp_path, text), n_features=6).A.shape == (3, 6)


@pytest.mark.parametrize("labels,expected", [("0 1 1 0", [-1, 1, 1, -1]), ("2 1 1 2", [1, -1, -1, 1]),
                                             ("-1 1 1 -1", [-1, 1, 1, -1])])
def test_label_mapping(tmp_path, labels, expected):
    text = "".join(f"{lab} 1:1\n" for lab in labels.split())
    np.testing.assert_array_equal(read_libsvm(write(tmp_path, text)).b, expected)


@pytest.mark.parametrize("line,token", [("-1 3:1 abc", "'abc'"), ("-1 0:1", "'0:1'"), ("-1 1:2:3 4:1", "'1:2:3'"),
                                        ("-1 x:1", "'x:1'"), ("-1 2:nan", "'2:nan'"), ("-1 2:", "'2:'")])
def test_malformed_entry_names_file_and_line(tmp_path, line, token):
    path = write(tmp_path, f"1 1:1\n\n{line}\n1 2:1\n", name="w8a")
    with pytest.raises(DataError) as err:
        read_libsvm(path)
    assert str(err.value) == (f"{path}:3: malformed entry {token} "
                              f"(expected index:value with an integer index >= 1)")


def test_malformed_label(tmp_path):
    path = write(tmp_path, "1 1:1\n1 2:1\nspam 1:1\n")
    with pytest.raises(DataError, match=rf"^{path}:3: malformed label 'spam'"):
        read_libsvm(path)


def test_index_beyond_n_features(tmp_path):
    path = write(tmp_path, "1 1:1\n-1 2:1\n-1 1:1\n1 3:1 124:1\n", name="a9a")
    with pytest.raises(DataError) as err:
        read_libsvm(path, n_features=123)
    assert str(err.value) == (f"{path}:4: feature index 124 exceeds the number of features 123 "
                              f"(use --features to set it)")
    assert read_libsvm(path).A.shape == (4, 124)


def test_non_binary_labels_are_listed(tmp_path):
    with pytest.raises(DataError, match=r"exactly 2 distinct values .*found 3: -1, 0, 1$"):
        read_libsvm(write(tmp_path, "-1 1:1\n0 1:1\n1 1:1\n"))
    with pytest.raises(DataError, match=r"found 1: 1$"):
        read_libsvm(write(tmp_path, "1 1:1\n1 2:1\n"))


def test_empty_missing_and_duplicate(tmp_path):
    for text in ("", "# only a comment\n\n  \n"):
        path = write(tmp_path, text)
        with pytest.raises(DataError, match=rf"^{path}: no data rows"):
            read_libsvm(path)
    with pytest.raises(DataError, match=r"^dataset file not found: .*nope$"):
        read_libsvm(tmp_path / "nope")
    path = write(tmp_path, "1 1:1\n-1 2:1 2:3\n")
    with pytest.raises(DataError, match=rf"^{path}:2: feature index 2 appears twice"):
        read_libsvm(path)
    # one index ending a row and starting the next (past an empty row) is no repeat; a repeat after them is
    path = write(tmp_path, "1 3:1\n-1\n1 3:2 4:1\n# note\n-1 1:1 5:2 5:1\n")
    with pytest.raises(DataError, match=rf"^{path}:5: feature index 5 appears twice"):
        read_libsvm(path)
    ds = read_libsvm(write(tmp_path, "1 3:1\n-1\n1 3:2 4:1\n"))
    np.testing.assert_array_equal(ds.A.toarray(), [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 2, 1]])


def test_add_intercept():
    A = sp.csr_matrix(np.array([[1.0, 0, 2], [0, 0, 0]]))
    B = add_intercept(A)
    np.testing.assert_array_equal(B.toarray(), [[1, 0, 2, 1], [0, 0, 0, 1]])
    assert sp.isspmatrix_csr(B) and B.has_canonical_format


# ---------------------------------------------------------------- partition

def test_paper_split_file_order():
    p = paper_split(10, clients=3, samples_per_client=3)
    np.testing.assert_array_equal(p.rows, [0, 1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(p.offsets, [0, 3, 6, 9])
    assert p.n_clients == 3 and p.sizes.tolist() == [3, 3, 3]
    assert p.rows.dtype == np.int64 and p.offsets.dtype == np.int64
    rows, offsets = p.block(1, 3)
    np.testing.assert_array_equal(rows, [3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(offsets, [0, 3, 6])
    with pytest.raises(ValueError):
        p.rows[0] = 5  # read-only


def test_paper_split_shuffle():
    p = paper_split(12, 4, 3, shuffle=7)
    np.testing.assert_array_equal(p.rows, paper_split(12, 4, 3, shuffle=7).rows)
    np.testing.assert_array_equal(np.sort(p.rows), np.arange(12))  # a permutation of all rows
    assert not np.array_equal(p.rows, np.arange(12))
    assert not np.array_equal(p.rows, paper_split(12, 4, 3, shuffle=8).rows)
    part = paper_split(12, 2, 3, shuffle=7)
    np.testing.assert_array_equal(part.rows, p.rows[:6])  # prefix of the same permutation
    assert len(set(part.rows.tolist())) == 6


def test_paper_split_errors():
    with pytest.raises(DataError, match=r"^80 clients x 500 samples = 40000 rows exceed the 32561 rows of a9a$"):
        paper_split(32561, 80, 500, name="a9a")
    with pytest.raises(DataError, match="clients must be an integer >= 1, got 0"):
        paper_split(10, 0, 1)
    with pytest.raises(DataError, match="samples_per_client must be an integer >= 1"):
        paper_split(10, 2, 0)
    with pytest.raises(DataError, match="invalid partition"):
        Partition(rows=np.arange(4), offsets=[0, 3])
    with pytest.raises(DataError, match=r"client block \[1, 5\)"):
        paper_split(10, 2, 2).block(1, 5)


# ---------------------------------------------------------------- synthetic

def test_synthetic_rank_independent():
    A, b = synthetic_clients(range(6), 20, 8, seed=3)
    assert A.shape == (120, 8) and sp.isspmatrix_csr(A)
    parts = [synthetic_clients(ids, 20, 8, seed=3) for ids in ([4, 5], [0], [1, 2, 3])]  # any order
    np.testing.assert_array_equal(sp.vstack([parts[1][0], parts[2][0], parts[0][0]]).toarray(), A.toarray())
    np.testing.assert_array_equal(np.concatenate([parts[1][1], parts[2][1], parts[0][1]]), b)
    A2, b2 = synthetic_clients([5, 2], 20, 8, seed=3)
    np.testing.assert_array_equal(A2.toarray(), A[np.r_[100:120, 40:60]].toarray())
    np.testing.assert_array_equal(b2, b[np.r_[100:120, 40:60]])


def test_synthetic_labels_and_scale():
    A, b = synthetic_clients(range(10), 400, 30, seed=0)
    assert set(np.unique(b)) == {-1.0, 1.0}
    X = A.toarray()
    assert 0.9 < np.mean(np.sum(X**2, axis=1)) < 1.1  # E||a||^2 = 1 by construction
    # Labels follow the logistic model: E[1{b=1}] = mean sigmoid(a . x_true).
    p = 1 / (1 + np.exp(-X @ ground_truth(30, 0)))
    assert abs(np.mean(b == 1) - np.mean(p)) < 0.03
    assert np.mean(b == np.sign(X @ ground_truth(30, 0))) > 0.6
    # Heterogeneous: the variance of client means across clients is ~ 1/(2d) = 0.0167 per coordinate,
    # while i.i.d. clients would give only the sampling noise 1/(2d)/400 ~ 4e-5.
    means = X.reshape(10, 400, 30).mean(axis=1)
    assert np.mean(np.var(means, axis=0)) > 0.01


def test_synthetic_seeds_differ_and_validate():
    A0, b0 = synthetic_clients([0, 1], 50, 5, seed=0)
    A1, b1 = synthetic_clients([0, 1], 50, 5, seed=1)
    assert not np.allclose(A0.toarray(), A1.toarray()) and not np.array_equal(b0, b1)
    assert synthetic_clients([], 5, 4, seed=0)[0].shape == (0, 4)
    with pytest.raises(DataError, match=r"client id must be an integer in \[0, 2147483646\]"):
        synthetic_clients([2**31 - 1], 5, 4, seed=0)
