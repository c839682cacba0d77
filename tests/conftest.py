"""Test setup: real data (local, fetched once, or a skip with the reason), MPI hygiene, a JSON report.

Real data
---------
A test that reads a registry dataset (LIBSVM files such as ``a9a``, or ``mnist``: the four IDX files)
says so with a marker, on the test, on a ``pytest.param`` or in a module's ``pytestmark``::

    @pytest.mark.data("a9a", "a9a.t")

The setup hook :func:`pytest_runtest_setup` (before any fixture) then finds each named dataset:

1. a local copy: ``mpifed.data.resolve(name)`` succeeds (``$MPIFED_DATA``, else the cache) or, for
   ``mnist``, ``mpifed.data.mnist.available()``; ``../shared/datasets`` beside the checkout is put in
   ``$MPIFED_DATA`` when that is unset;
2. else a download with checksum into the cache (``mpifed.data.fetch`` / ``fetch_mnist``) with a
   ``FETCH_TIMEOUT`` s timeout, tried at most once per dataset per pytest process, and not at all once a
   failure showed there is no network (DNS, unreachable, timeout), nor when ``MPIFED_TEST_FETCH=0``;
3. else the test is skipped with a reason that starts with ``needs dataset <names>:`` (``DATA_SKIP``) and
   names the command that gets the data.

Under MPI (``mpiexec ... pytest --with-mpi``) rank 0 decides, without fetching (the serial stage of
``tests/run.py`` runs first and fills the cache), and broadcasts the decision, so every rank skips or runs
the same tests. :func:`real_data` is the same check for code that needs a path.

MPI hygiene
-----------
A test that fails on one rank would leave the others waiting in a collective: the report hook aborts
the whole world instead, after printing the failure, so the launch fails fast with a non-zero code.

Report
------
When ``$MPIFED_TEST_REPORT`` names a file, rank 0 (or the serial run) writes there at the end a JSON
object: ``passed``, ``failed``, ``skipped``, ``data_skipped`` (tests skipped for want of data) and
``data_skips`` (such tests per missing dataset). ``tests/run.py`` reads it back per stage.
"""
import errno
import json
import os
import re
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if not os.environ.get("MPIFED_DATA") and SHARED_DATA.is_dir():  # unset or empty
    os.environ["MPIFED_DATA"] = str(SHARED_DATA)

DATA_SKIP = "needs dataset "  # prefix of every skip reason for want of data (tests/run.py counts them)
FETCH_TIMEOUT = 20  # seconds per download attempt
MNIST = "mnist"


def _world():
    if not os.environ.get("PMI_SIZE") and not os.environ.get("OMPI_COMM_WORLD_SIZE"):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _rank():
    world = _world()
    return 0 if world is None else world.Get_rank()


def pytest_configure(config):
    if _rank() > 0:  # one report, from rank 0
        sys.stdout = open(os.devnull, "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    world = _world()
    if report.failed and world is not None and world.Get_size() > 1 and item.get_closest_marker("mpi"):
        sys.stderr.write(f"\n[rank {world.Get_rank()}] {item.nodeid} FAILED:\n{report.longreprtext}\n")
        sys.stderr.flush()
        world.Abort(1)


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    """A run without --out writes runs/<name>.h5 under the working directory: each test works in its own
    temporary folder, so the suite leaves nothing in the checkout."""
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------------------------- real data

_found: dict[str, str | None] = {}  # name -> None when present, else why not (this process)
_paths: dict[str, Path] = {}        # name -> the local copy found (LIBSVM datasets; the MNIST folder)
_tried: set[str] = set()            # datasets whose download was attempted in this process
_offline: list[str] = []            # why downloads stopped, after a failure that shows there is no network

_NO_NETWORK = re.compile(r"name resolution|name or service not known|nodename nor servname|getaddrinfo|"
                         r"no address associated|network is unreachable|no route to host|timed out|"
                         r"connection refused|errno -[235]\b", re.I)


def _local(name: str) -> str | None:
    """None when a usable local copy exists, else the reason."""
    from mpifed.data import mnist, resolve
    from mpifed.errors import DataError

    if name == MNIST:
        if not mnist.available():
            return "the four IDX files are not all in MPIFED_DATA or the cache"
        _paths[name] = mnist.find("train-images-idx3-ubyte").parent
        return None
    try:
        _paths[name] = resolve(name)[0]
    except DataError as err:
        return "not in MPIFED_DATA or the cache" if "not available locally" in str(err) else str(err)
    return None


def _is_network_failure(err: BaseException) -> bool:
    """Whether a download failed for want of a network (DNS, unreachable, refused, timeout), not e.g. a
    checksum mismatch or an HTTP error: then no other download is tried in this process."""
    unreachable = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
    seen, hops = err, 0
    while seen is not None and hops < 10:  # the urllib error is kept as the DataError's __context__
        for e in (seen, getattr(seen, "reason", None)):
            if isinstance(e, (socket.gaierror, TimeoutError, ConnectionError)):
                return True
            if isinstance(e, OSError) and e.errno in unreachable:
                return True
        seen, hops = seen.__cause__ or seen.__context__, hops + 1
    return bool(_NO_NETWORK.search(str(err)))  # fetch_mnist joins the errors of its mirrors into one message


def _fetch(name: str) -> str | None:
    """Download ``name`` into the cache, once per process; None on success, else the reason."""
    from mpifed.data import fetch, mnist
    from mpifed.errors import DataError

    if os.environ.get("MPIFED_TEST_FETCH", "1").strip().lower() in ("0", "no", "false", "off"):
        return "downloads are off (MPIFED_TEST_FETCH=0)"
    if _offline:
        return f"no download tried: no network ({_offline[0]})"
    if name in _tried:
        return "its download already failed in this run"
    _tried.add(name)
    try:
        if name == MNIST:
            mnist.fetch_mnist(timeout=FETCH_TIMEOUT)
        else:
            fetch(name, timeout=FETCH_TIMEOUT)
    except (DataError, OSError) as err:
        if _is_network_failure(err):
            _offline.append(str(err))
        return f"download failed: {err}"
    return None


def _missing(names, may_fetch: bool) -> dict[str, str]:
    """The datasets of ``names`` that cannot be had, with the reason (cached per process)."""
    missing = {}
    for name in names:
        if _found.get(name, "?") is None:
            continue
        why = _local(name)
        if why is not None and may_fetch:
            fetched = _fetch(name)
            why = None if fetched is None else f"{why}, and {fetched}"
        _found[name] = why
        if why is not None:
            missing[name] = why
    return missing


def _hint(names) -> str:
    return (f"get {'them' if len(names) > 1 else 'it'} with `mpifed datasets fetch {' '.join(names)}` (needs "
            f"network access) or set MPIFED_DATA to a folder that holds {'them' if len(names) > 1 else 'it'}")


def require_data(*names: str) -> None:
    """Skip the calling test unless every named dataset is available (see the module docstring).

    Under MPI every rank must call this for the same names: rank 0 decides and broadcasts.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return
    world = _world()
    if world is None:
        missing = _missing(names, may_fetch=True)
    else:
        missing = _missing(names, may_fetch=False) if world.Get_rank() == 0 else None
        if world.Get_size() > 1:
            missing = world.bcast(missing, root=0)
    if missing:
        first = next(iter(missing.values()))
        pytest.skip(f"{DATA_SKIP}{', '.join(missing)}: {first}; {_hint(list(missing))}")


def data_names(node) -> list[str]:
    """Datasets named by all ``data`` markers of a test (its own, its param's, its class's, its module's)."""
    return [n for mark in node.iter_markers("data") for n in mark.args]


def pytest_runtest_setup(item):
    """Apply ``@pytest.mark.data(...)``: the data is there (found or fetched) or the test is skipped.

    A setup hook rather than an autouse fixture: it runs after the skip markers (``skipif``, pytest-mpi's)
    but before any fixture, so a module- or session-scoped fixture that loads the data is never reached.
    """
    require_data(*data_names(item))


def real_data(name: str) -> Path:
    """Local path of registry dataset ``name`` (found or fetched), or skip the test.

    The path is the one found when the dataset was first checked (e.g. by the ``data`` marker), so it
    stays valid in a test that then changes ``MPIFED_DATA`` or the cache; for ``mnist``, the folder.
    """
    require_data(name)
    if name not in _paths:
        _local(name)
    return _paths[name]


def data_marks(config: dict) -> list:
    """``[pytest.mark.data(...)]`` for a run config's ``dataset``/``test_dataset`` keys, or ``[]`` when it
    needs no registry data (synthetic sets, or no dataset key)."""
    from mpifed.data import DATASETS

    names = [config.get(k) for k in ("dataset", "test_dataset")]
    names = [n for n in names if isinstance(n, str) and (n in DATASETS or n == MNIST)]
    return [pytest.mark.data(*names)] if names else []


def data_params(values, configs=None) -> list:
    """Parameters for ``parametrize``, each marked with the data its run config needs (:func:`data_marks`).

    ``values`` are the configs themselves, or keys of the ``configs`` table (e.g. method names of
    ``EVERY_METHOD``: ``data_params(sorted(EVERY_METHOD), EVERY_METHOD)``); a string value is also its id.
    """
    return [pytest.param(v, marks=data_marks(v if configs is None else configs[v]),
                         id=v if isinstance(v, str) else None) for v in values]


# ------------------------------------------------------------------------------------------------ report

_outcomes: dict[str, str] = {}  # nodeid -> passed | failed | skipped | xfailed | xpassed
_data_skips: dict[str, list[str]] = {}  # nodeid -> the missing datasets named in its skip reason
_REASON = re.compile(re.escape(DATA_SKIP) + r"([^:]+):")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def pytest_runtest_logreport(report):
    node = report.nodeid
    if report.failed:
        _outcomes[node] = "failed"
    elif _outcomes.get(node) == "failed":
        return
    elif hasattr(report, "wasxfail"):
        _outcomes[node] = "xfailed" if report.skipped else "xpassed"
    elif report.skipped:
        _outcomes[node] = "skipped"
        found = _REASON.search(_skip_reason(report))
        if found:
            _data_skips[node] = [n.strip() for n in found.group(1).split(",")]
    elif report.when == "call" and report.passed:
        _outcomes[node] = "passed"


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("MPIFED_TEST_REPORT")
    if not path or _rank() > 0:
        return
    counts = Counter(_outcomes.values())
    by_dataset = Counter(n for names in _data_skips.values() for n in names)
    report = {"passed": counts["passed"], "failed": counts["failed"], "skipped": counts["skipped"],
              "data_skipped": len(_data_skips), "data_skips": dict(sorted(by_dataset.items())),
              "exitstatus": int(exitstatus)}
    try:
        Path(path).write_text(json.dumps(report) + "\n")
    except OSError as err:
        sys.stderr.write(f"conftest: cannot write the test report {path}: {err}\n")
