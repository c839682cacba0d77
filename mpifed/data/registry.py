"""Registry of the LIBSVM binary datasets used by the papers: URLs, checksums, local lookup and download.

Files come from the LIBSVM data collection (Chang & Lin, 2011,
https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html). Local copies are looked up in
``$MPIFED_DATA`` and then in the cache; every registered file is checked against its sha256 before use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mpifed.errors import DataError

from .libsvm import Dataset, read_libsvm

_BASE_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/"


@dataclass(frozen=True)
class DatasetInfo:
    """One registered file.

    Attributes
    ----------
    name : str
        Registry name, also the file name locally and on the LIBSVM site.
    url : str
        Official download address.
    sha256 : str
        Hex digest of the uncompressed file.
    n_features : int
        Dimension ``d`` as stated on the LIBSVM page (may exceed the largest index in the file).
    rows : int
        Number of samples.
    test : str or None
        Registry name of the matching test split, for training sets that have one here.
    """

    name: str
    url: str
    sha256: str
    n_features: int
    rows: int
    test: str | None = None


def _info(name, sha256, n_features, rows, test=None) -> DatasetInfo:
    return DatasetInfo(name, _BASE_URL + name, sha256, n_features, rows, test)


DATASETS: dict[str, DatasetInfo] = {i.name: i for i in [
    _info("a1a", "eb54c45f1bdb51286f803dd092eb8202b44637a858fc6c4e533a2d64a0d94b4e", 123, 1605, "a1a.t"),
    _info("a1a.t", "0212d0c4a3996fe6fb6a0ab54033d9f4fa4b60369b6e3bb141821d9ffc40c04d", 123, 30956),
    # a7a.t exists on the LIBSVM site but is not registered (no verified copy), hence no test split here.
    _info("a7a", "c7f1518e3876c4065588436cd46514dcbcea59bf92e139ac6b2a241f283db0e9", 123, 16100),
    _info("a9a", "f5d5ffd8d865ff41328e7ee043e4b020816914ff6843ff15b98905ddbedce906", 123, 32561, "a9a.t"),
    _info("a9a.t", "1f448a153f0320399a7e40836eb207655b0bde0f21fc941cc472193daa9f5de9", 123, 16281),
    _info("w7a", "bd02f445a1a2f4aaefd27d7dcc31f1f6a8521f904157f2ee7c96d1294cd26e36", 300, 24692, "w7a.t"),
    _info("w7a.t", "a52edcfe9871e3b0db5d864959bf32230491ddfeca3334cfec93c1d932ea32b9", 300, 25057),
    _info("w8a", "6a9fa8fd5f524303240a5db07d4b3d4a51e8b7b4b20a914105d8e3e8c81640f2", 300, 49749, "w8a.t"),
    _info("w8a.t", "618929ecb01bebb841daec4cae4aa07b97832d29b08652452775598929547fde", 300, 14951),
    _info("phishing", "0cf66ef36604c393da9359b2e5d894a2df8aee31fd184633cefa138add2ef08a", 68, 11055),
    _info("mushrooms", "f39a4eb628dc61a7d43760815b061c9e497aa728ce1ad8bde57a09ef6043b538", 112, 8124),
    _info("madelon.t", "ae60251b63a46c6ace348b77749e79e25d4098d629d1dead2852c3d4daf1f8ea", 500, 600),
]}


# The papers' federations (Newton-Learn, Islamov et al. 2021, Sec. 6; FedPM Test 1; FedNL): clients x samples per client, the first
# clients * samples rows of the file in file order (:func:`mpifed.data.partition.paper_split`).
PAPER_SPLITS = {"a9a": (80, 407), "w8a": (142, 350), "a7a": (100, 161), "phishing": (142, 77)}


def cache_dir() -> Path:
    """Download cache: ``$MPIFED_CACHE``, else ``$XDG_CACHE_HOME/mpifed/datasets``, else ``~/.cache/...``."""
    if os.environ.get("MPIFED_CACHE"):
        return Path(os.environ["MPIFED_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mpifed" / "datasets"


def data_dirs() -> list[Path]:
    """Folders searched for local copies, in order.

    Each entry of ``$MPIFED_DATA`` (``os.pathsep``-separated) contributes itself and its ``libsvm/``
    subfolder, so both ``.../datasets`` and ``.../datasets/libsvm`` work; the cache comes last.
    """
    dirs = []
    for entry in os.environ.get("MPIFED_DATA", "").split(os.pathsep):
        if entry:
            root = Path(entry).expanduser()
            dirs += [root, root / "libsvm"]
    return dirs + [cache_dir()]


def _names() -> str:
    return ", ".join(DATASETS)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Hash each (file, size, mtime) once per process: repeated loads in one run stay free.
_verified: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = _sha256(path)
    return _verified[key]


def _find(name: str) -> Path | None:
    for d in data_dirs():
        if (d / name).is_file():
            return d / name
    return None


def resolve(spec) -> tuple[Path, DatasetInfo | None]:
    """Turn a registry name or a file path into a local file.

    Parameters
    ----------
    spec : str or Path
        A registry name (looked up in :func:`data_dirs` and verified against its sha256) or a path.

    Returns
    -------
    (Path, DatasetInfo or None)
        The file, and its registry entry; for a path, the entry is given only when the file name is a
        registry name and the content matches its checksum (so e.g. the official width applies).
    """
    spec = str(spec)
    info = DATASETS.get(spec)
    if info is not None:
        path = _find(spec)
        if path is None:
            raise DataError(f"dataset '{spec}' is not available locally; run `mpifed datasets fetch {spec}` "
                            f"or set MPIFED_DATA to a folder that holds it")
        got = _file_sha256(path)
        if got != info.sha256:
            raise DataError(f"checksum mismatch for {path}: expected sha256 {info.sha256}, got {got} "
                            f"(delete the file and fetch it again)")
        return path, info
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"unknown dataset '{spec}': neither a registered name ({_names()}) nor an existing file")
    known = DATASETS.get(path.name)
    if known is not None and _file_sha256(path) != known.sha256:
        known = None  # a modified copy: read it as a plain file
    return path, known


def fetch(name: str, url: str | None = None, dest_dir=None, timeout: float = 60) -> Path:
    """Download a registered dataset into ``dest_dir`` (default :func:`cache_dir`) and verify it.

    Parameters
    ----------
    name : str
        Registry name.
    url : str, optional
        Override of the official URL (a mirror, or ``file://`` in tests).
    dest_dir : str or Path, optional
        Target folder, created if needed.
    timeout : float, optional
        Seconds to wait for the connection and for each read (default 60).

    Returns
    -------
    Path
        The verified file. An existing verified copy is reused without downloading.

    Raises
    ------
    DataError
        Unknown name, download failure, or checksum mismatch; nothing partial is left on disk.
    """
    info = DATASETS.get(name)
    if info is None:
        raise DataError(f"unknown dataset '{name}'; registered names: {_names()}")
    url = url or info.url
    dest = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    target = dest / name
    if target.is_file() and _file_sha256(target) == info.sha256:
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
    except OSError as err:
        raise DataError(f"cannot write to dataset folder {dest}: {err.strerror}") from None

    # Stream into a temp file in the same folder, hashing on the way; os.replace makes it appear whole.
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != info.sha256:
            raise DataError(f"checksum mismatch for {name} downloaded from {url}: expected sha256 "
                            f"{info.sha256}, got {h.hexdigest()}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as err:  # ValueError: a malformed URL
        reason = getattr(err, "reason", None) or err
        raise DataError(f"could not download {name} from {url}: {reason}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def describe() -> list[tuple]:
    """Rows ``(name, n_features, rows, local path or "-")`` for ``mpifed datasets list``.

    The path is where a copy was found; its checksum is verified when it is used.
    """
    return [(i.name, i.n_features, i.rows, str(p) if (p := _find(i.name)) else "-") for i in DATASETS.values()]


def load(spec, n_features: int | None = None) -> Dataset:
    """Resolve ``spec`` and read it; ``n_features=None`` takes the registry's dimension when known.

    Returns
    -------
    Dataset
        ``name`` is the registry name for registered files, else the file name.
    """
    path, info = resolve(spec)
    if n_features is None and info is not None:
        n_features = info.n_features
    return read_libsvm(path, n_features)
