"""Held-out evaluation (mpifed.federation.tabular.HeldOutSet, driver record) against a plain numpy computation on a
hand-parsed test file, and the setup errors for mismatched features and non-binary labels."""
import numpy as np
import pytest

from mpifed import trace
from mpifed.data import read_libsvm
from mpifed.driver import run
from mpifed.errors import MpifedError


def write_libsvm(path, X, y):
    """Rows as 'label idx:val ...' with 1-based indices, zeros omitted."""
    lines = [" ".join([f"{label:g}"] + [f"{j + 1}:{v:.6g}" for j, v in enumerate(row) if v != 0])
             for row, label in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse(path, d):
    """Oracle: a dense matrix and the raw labels by plain string operations."""
    rows, labels = [], []
    for line in path.read_text().split("\n"):
        if line.strip():
            tokens = line.split()
            labels.append(float(tokens[0]))
            row = np.zeros(d)
            for t in tokens[1:]:
                row[int(t.split(":")[0]) - 1] = float(t.split(":")[1])
            rows.append(row)
    return np.array(rows), np.array(labels)


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    d, w = 6, rng.standard_normal(6)

    def draw(n):
        X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.6)
        return X, np.where(X @ w + 0.5 * rng.standard_normal(n) > 0, 1, 0)  # labels 0 / 1 on disk

    train = write_libsvm(tmp_path / "train.svm", *draw(300))
    X, y = draw(200)
    X[:, -1] = 0  # the test file never mentions the last feature: it is narrower on disk
    test = write_libsvm(tmp_path / "test.svm", X, y)
    return tmp_path, train, test, d


@pytest.mark.parametrize("intercept", [False, True])
def test_test_accuracy_and_loss_equal_numpy_at_every_evaluated_iterate(files, intercept):
    tmp, train, test, d = files
    lam = 1e-2
    r = run({"dataset": str(train), "test_dataset": str(test), "clients": 5, "samples_per_client": 60,
             "algorithm": "newton", "rounds": 4, "lam": lam, "intercept": intercept, "eval_every": 2,
             "reference_iterations": 0, "quiet": True, "out": str(tmp / "run.h5")})
    X, raw = parse(test, d)
    if intercept:
        X = np.hstack([X, np.ones((len(X), 1))])
    b = np.where(raw == 1, 1.0, -1.0)
    acc, loss = r.metrics["test_accuracy"], r.metrics["test_loss"]
    assert np.isnan(acc[1::2]).all() and np.isnan(loss[1::2]).all()  # rows not evaluated
    assert acc[0] == 0.0 and loss[0] == pytest.approx(np.log(2), rel=1e-14)  # x^0 = 0: every margin is a tie
    z = X @ r.x  # the final row's iterate is the returned x (round 4 is evaluated)
    assert acc[-1] == np.mean(np.sign(z) == b) and acc[-1] > 0.7  # better than chance
    expected = np.mean([np.log1p(np.exp(-bi * zi)) for bi, zi in zip(b, z)]) + lam / 2 * r.x @ r.x
    assert loss[-1] == pytest.approx(expected, rel=1e-12)
    t = trace.load(r.path)
    np.testing.assert_array_equal(t.metrics["test_accuracy"], acc)
    assert "test.svm" in t.attrs["test_set"] and "lam/2" in t.attrs["test_set"]


@pytest.mark.data("a9a", "a9a.t")
def test_default_test_split_of_a9a_is_evaluated(tmp_path):
    r = run({"dataset": "a9a", "algorithm": "newton", "rounds": 3, "reference_iterations": 0, "quiet": True,
             "out": str(tmp_path / "a9a.h5")})
    test = read_libsvm(__import__("mpifed.data", fromlist=["resolve"]).resolve("a9a.t")[0], 123)
    z = test.A @ r.x
    assert r.metrics["test_accuracy"][-1] == np.mean(np.sign(z) == test.b)
    assert 0.84 < r.metrics["test_accuracy"][-1] < 0.86  # logistic regression on a9a: about 85 % (LIBSVM page)
    assert "a9a.t" in trace.load(r.path).attrs["test_set"]


def test_no_test_set_no_columns(files):
    tmp, train, _, _ = files
    r = run({"dataset": str(train), "clients": 5, "samples_per_client": 60, "algorithm": "gd", "rounds": 1,
             "reference_iterations": 0, "quiet": True, "out": str(tmp / "none.h5")})
    assert "test_accuracy" not in r.metrics
    assert "no test set" in trace.load(r.path).attrs["test_set"]


def test_a_wider_test_file_is_refused_before_the_first_round(files):
    tmp, train, _, d = files
    wide = write_libsvm(tmp / "wide.svm", np.eye(d + 2)[:4] + 1, [0, 1, 0, 1])
    out = tmp / "wide.h5"
    with pytest.raises(MpifedError) as err:
        run({"dataset": str(train), "test_dataset": str(wide), "clients": 5, "samples_per_client": 60,
             "algorithm": "gd", "rounds": 1, "quiet": True, "out": str(out)})
    assert f"{d + 2} features but the training set" in str(err.value) and f"has {d}" in str(err.value)
    assert not out.exists()


@pytest.mark.data("a9a", "w8a.t")
def test_a_registered_test_file_of_another_width_is_refused(tmp_path):
    with pytest.raises(MpifedError, match="300 features but the training set a9a has 123"):
        run({"dataset": "a9a", "test_dataset": "w8a.t", "rounds": 1, "quiet": True, "out": str(tmp_path / "x.h5")})


@pytest.mark.parametrize("which", ["train", "test"])
def test_labels_that_are_not_binary_are_refused_before_the_first_round(files, which):
    tmp, train, test, d = files
    X, y = parse(train if which == "train" else test, d)
    y[:3] = 2  # a third class
    bad = write_libsvm(tmp / "bad.svm", X, y)
    config = {"dataset": str(train), "test_dataset": str(test), "clients": 5, "samples_per_client": 40,
              "algorithm": "gd", "rounds": 1, "quiet": True, "out": str(tmp / "bad.h5")}
    config["dataset" if which == "train" else "test_dataset"] = str(bad)
    with pytest.raises(MpifedError, match="exactly 2 distinct values"):
        run(config)
    assert not (tmp / "bad.h5").exists()


def test_folder_report_gives_the_best_evaluated_test_accuracy(files):
    from mpifed.analysis.report import to_target

    tmp, train, test, _ = files
    common = {"dataset": str(train), "clients": 5, "samples_per_client": 60, "algorithm": "gd", "rounds": 6,
              "reference_iterations": 0, "quiet": True, "eval_every": 3}
    r = run({**common, "test_dataset": str(test), "out": str(tmp / "with.h5")})
    assert to_target(trace.load(r.path), 1e-10)["best_test_accuracy"] == max(r.metrics["test_accuracy"][[0, 3, 6]])
    r = run({**common, "out": str(tmp / "without.h5")})
    assert np.isnan(to_target(trace.load(r.path), 1e-10)["best_test_accuracy"])
