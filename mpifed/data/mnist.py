"""MNIST (LeCun, Cortes & Burges) in the original IDX format, and a synthetic stand-in image set.

IDX: a big-endian header ``0x00 0x00 <type> <ndim>`` (so the magic number is 2051 for the uint8 image
files, 3 dims, and 2049 for the label files, 1 dim), ``ndim`` big-endian uint32 sizes, then the data.
Files may be gzip-compressed or raw. Local copies are looked up like the LIBSVM registry's
(``mpifed.data.registry``): each ``$MPIFED_DATA`` entry, as ``<entry>/mnist/`` then ``<entry>/``, then the
cache's ``mnist/`` folder; ``<name>.gz`` before ``<name>``. The checksum is the sha256 of the *decompressed*
IDX content (the registry's convention: hash of the uncompressed file), so a re-gzipped copy still verifies.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from mpifed.errors import DataError

from .registry import cache_dir

BASE_URL = "http://yann.lecun.com/exdb/mnist/"            # the original distribution
MIRROR_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses

# name -> (magic, shape, sha256 of the decompressed IDX file)
FILES = {
    "train-images-idx3-ubyte": (2051, (60000, 28, 28),
                                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (2049, (60000,),
                                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28),
                               "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (2049, (10000,),
                               "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEAN, STD = 0.1307, 0.3081  # pixel mean/std of the training images (on [0, 1]); over all 60,000: 0.13066/0.30811
_KIND = {2051: "images", 2049: "labels"}
IMAGE_SETS = ("mnist", "mnist-synthetic")  # the image datasets of --model runs


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({err})") from None


def parse_idx(data: bytes, source: str = "<bytes>", magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes into a uint8 array, checking magic number, dimensions and length.

    Parameters
    ----------
    data : bytes
        Decompressed IDX content.
    source : str
        File name for the error messages.
    magic : int, optional
        Expected magic number (2051 images, 2049 labels); any uint8 IDX file when None.
    """
    if len(data) < 4:
        raise DataError(f"{source}: truncated IDX file: expected a 4-byte header, found {len(data)} bytes")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise DataError(f"{source}: wrong IDX magic number: expected {magic} ({_KIND.get(magic, 'uint8')}), "
                        f"found {found}")
    if data[:3] != b"\x00\x00\x08" or data[3] < 1:
        raise DataError(f"{source}: not a uint8 IDX file: magic number {found} (expected 2051 or 2049)")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"{source}: truncated IDX file: expected a {head}-byte header, found {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    want = head + int(np.prod(shape))
    if len(data) != want:
        what = "truncated" if len(data) < want else "overlong"
        raise DataError(f"{source}: {what} IDX file: expected {want} bytes for shape "
                        f"{'x'.join(map(str, shape))}, found {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a uint8 array; see :func:`parse_idx` for the checks."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist")
    return parse_idx(_read_bytes(path), str(path), magic)


def data_dirs() -> list[Path]:
    """Folders searched for MNIST, in order: ``<entry>/mnist`` and ``<entry>`` per ``$MPIFED_DATA`` entry, cache."""
    dirs = []
    for entry in os.environ.get("MPIFED_DATA", "").split(os.pathsep):
        if entry:
            root = Path(entry).expanduser()
            dirs += [root / "mnist", root]
    return dirs + [cache_dir() / "mnist"]


def find(name: str) -> Path | None:
    """Local copy of MNIST file ``name`` (``.gz`` preferred), or None."""
    for d in data_dirs():
        for cand in (d / f"{name}.gz", d / name):
            if cand.is_file():
                return cand
    return None


_verified: set = set()


def _load_file(name: str, path: Path) -> np.ndarray:
    magic, shape, sha = FILES[name]
    data = _read_bytes(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise DataError(f"checksum mismatch for {path}: expected sha256 {sha} of the decompressed IDX file, "
                            f"got {got} (delete the file and fetch it again)")
        _verified.add(key)
    return parse_idx(data, str(path), magic)


def available() -> bool:
    """Whether all four MNIST files are found locally (checksums are verified when loading)."""
    return all(find(n) is not None for n in FILES)


def load_mnist(split: str = "train", normalize: str = "standard"):
    """MNIST images ``(n, 28, 28)`` float64 and labels ``(n,)`` int64.

    Parameters
    ----------
    split : {"train", "test"}
    normalize : {"standard", "unit", "none"}
        ``(x/255 - 0.1307)/0.3081``, ``x/255`` (float64), or the stored uint8 values (read-only, no copy).
    """
    if split not in SPLITS:
        raise DataError(f"unknown MNIST split {split!r}; valid: {', '.join(SPLITS)}")
    arrays = []
    for name in SPLITS[split]:
        path = find(name)
        if path is None:
            raise DataError(f"MNIST file {name}(.gz) is not available locally; run fetch_mnist() "
                            f"or set MPIFED_DATA to a folder that holds mnist/{name}.gz")
        arrays.append(_load_file(name, path))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return _normalize(images, normalize), labels.astype(np.int64)


def _normalize(images, how):
    if how == "none":
        return images
    if how == "unit":
        return images / 255.0
    if how == "standard":
        return (images / 255.0 - MEAN) / STD
    raise DataError(f"unknown normalisation {how!r}; valid: standard, unit, none")


def fetch_mnist(dest_dir=None, base_url: str | None = None, timeout: float = 60) -> Path:
    """Download the four files (``<base_url><name>.gz``; official URL, then the mirror) and verify them.

    Returns the folder. Verified copies already there are kept; nothing partial is left on disk.
    ``timeout`` is the seconds to wait for each connection and read (default 60).
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir() / "mnist"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot write to dataset folder {dest}: {err.strerror}") from None
    for name in FILES:
        target = dest / f"{name}.gz"
        if target.is_file():
            try:
                _load_file(name, target)
                continue
            except DataError:
                pass
        errors = []
        for base in ([base_url] if base_url else [BASE_URL, MIRROR_URL]):
            url = base + f"{name}.gz"
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    out.write(resp.read())
                _load_file(name, Path(tmp))  # checksum of the decompressed content + IDX checks
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                break
            except (urllib.error.URLError, OSError, ValueError, DataError) as err:
                errors.append(f"{url}: {getattr(err, 'reason', None) or err}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError(f"could not download MNIST file {name}: {'; '.join(errors)}")
    return dest


def synthetic_images(n: int, seed: int, n_classes: int = 10, size: int = 28, noise: float = 0.3,
                     stream: int = 0):
    """A small MNIST-like set: ``n_classes`` prototype images, each sample a shifted, noisy copy.

    Prototype ``c`` is a sum of 3 Gaussian strokes at places drawn from ``default_rng([seed, c])``; a sample of
    class ``c`` is its prototype shifted by up to 2 pixels each way, plus ``N(0, noise^2)`` pixel noise, clipped
    to ``[0, 1]``. Labels are balanced (``i mod n_classes``, shuffled). Samples come from
    ``default_rng([seed, 2**31 - 1, stream])``: another ``stream`` (e.g. a test split) draws new samples of the
    same prototypes.

    Returns
    -------
    (images (n, size, size) float64 in [0, 1], labels (n,) int64)
    """
    if int(n) < 1 or int(n_classes) < 2 or int(size) < 8 or not noise >= 0:
        raise DataError(f"synthetic_images needs n >= 1, n_classes >= 2, size >= 8, noise >= 0; got "
                        f"n={n}, n_classes={n_classes}, size={size}, noise={noise}")
    yy, xx = np.mgrid[0:size, 0:size] / size
    protos = np.zeros((n_classes, size, size))
    for c in range(n_classes):
        r = np.random.default_rng([seed, c])
        for cy, cx, sy, sx in zip(*r.uniform([0.25, 0.25, 0.03, 0.03], [0.75, 0.75, 0.2, 0.2], (3, 4)).T):
            protos[c] += np.exp(-((yy - cy) ** 2 / (2 * sy ** 2) + (xx - cx) ** 2 / (2 * sx ** 2)))
        protos[c] /= protos[c].max()
    r = np.random.default_rng([seed, 2**31 - 1, stream])
    labels = r.permutation(np.arange(n) % n_classes)
    shifts = r.integers(-2, 3, size=(n, 2))
    images = np.empty((n, size, size))
    for s in {tuple(v) for v in shifts}:  # a loop over the 25 shifts, not over samples
        rows = (shifts == s).all(axis=1)
        images[rows] = np.roll(protos[labels[rows]], s, axis=(1, 2))
    images += noise * r.standard_normal(images.shape)
    return np.clip(images, 0.0, 1.0), labels.astype(np.int64)


def load_images(name: str = "mnist", split: str = "train", n: int | None = None, seed: int = 0,
                normalize: str = "standard"):
    """The image set the suite uses: ``mnist`` (the first ``n`` samples of MNIST), or ``synthetic``; ``auto``
    takes MNIST when its files are found and the synthetic set (``n`` or 2000 samples) otherwise."""
    if name == "auto":
        name = "mnist" if available() else "synthetic"
    if name == "mnist":
        X, y = load_mnist(split, "none")  # normalise only the samples asked for
        return _normalize(X[:n], normalize), y[:n]
    if name == "synthetic":
        X, y = synthetic_images(2000 if n is None else n, seed, stream=int(split == "test"))
        return (_normalize(X * 255.0, normalize), y)
    raise DataError(f"unknown image set {name!r}; valid: mnist, synthetic, auto")
