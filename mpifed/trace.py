"""The HDF5 trace: one file per run, written by rank 0, one row per round.

Layout (schema version 1)::

    /                 attrs: schema_version, mpifed_version, config (JSON), mpi_size,
                             environment (JSON: hosts, MPI library, backend per rank),
                             status (running | converged | completed | failed | suspended), message,
                             resumes (JSON: [{round, mpi_size, environment}] per --resume),
                             f_star, method (JSON of the method's hyper-parameters)
    /metrics/<name>   float64, one value per recorded round, extendible
    /x/star, /x/final the reference solution and the last iterate
    /partition/sizes  int64 (n,): rows per client m_i
    /partition/labels int64 (n, 2): rows labelled -1 and +1 per client
                      (root attr ``partition``: JSON of the spec, seed, redraws, moved rows;
                       root attr ``test_set``: the held-out set and how test_* are defined)

Rows are appended and the file is flushed after each, so a run that dies keeps every
completed round; a reader accepts a file whose status is still ``running``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .version import __version__
from .errors import MpifedError

SCHEMA_VERSION = 1


def _h5py():
    """h5py, imported on first use: only the rank that writes or reads a trace pays for it (about 11 MB)."""
    import h5py

    return h5py


class TraceWriter:
    """Append-only writer: ``write(fields)`` adds one row to every metric."""

    def __init__(self, path: str | Path, attrs: dict, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise MpifedError(f"output {self.path} exists; pass --overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = _h5py().File(self.path, "w")
        self.file.attrs.update({"schema_version": SCHEMA_VERSION, "mpifed_version": __version__,
                                "status": "running", "message": ""})
        self.set_attrs(**attrs)
        self.metrics = self.file.create_group("metrics")
        self.rows = 0
        self._columns = None  # name -> open dataset, from the first write on

    @classmethod
    def reopen(cls, path: str | Path, resume: dict) -> "TraceWriter":
        """Append to an existing trace (a resumed run): status back to running, ``resume`` (the round,
        the rank count and the environment of the resuming job) appended to the root attr ``resumes``."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.file = _h5py().File(self.path, "r+")
        self.metrics = self.file["metrics"]
        self.rows = len(self.metrics["round"]) if "round" in self.metrics else 0
        self._columns = None
        if any(len(ds) != self.rows for ds in self.metrics.values()):
            raise MpifedError(f"{self.path}: metric columns of unequal length; the trace is damaged")
        resumes = json.loads(self.file.attrs.get("resumes", "[]"))
        self.set_attrs(status="running", message="", resumes=resumes + [resume])
        self.file.flush()
        return self

    def metrics_so_far(self) -> dict:
        """The rows written so far, one array per metric."""
        return {name: ds[()] for name, ds in self.metrics.items()}

    def set_attrs(self, **attrs) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value

    def write(self, fields: dict) -> None:
        """Append one row; a field missing in this row is NaN.

        The columns are kept open between rows and each value goes through h5py's low-level calls (extend the
        dataset, select its last element, write one float64): the high-level lookup and indexing cost more
        than the writes themselves, once per column and round.
        """
        if self._columns is None:  # first row of this writer: the columns already in the file (a resumed trace)
            self._columns = dict(self.metrics.items())
        columns = self._columns
        for name in fields:
            if name not in columns:
                ds = self.metrics.create_dataset(name, shape=(self.rows,), maxshape=(None,), dtype="f8",
                                                 chunks=(1024,), fillvalue=np.nan)
                ds[:] = np.nan
                columns[name] = ds
        row, h5s = self.rows, _h5py().h5s
        one = h5s.create_simple((1,))
        for name, ds in columns.items():
            ds.id.set_extent((row + 1,))
            space = ds.id.get_space()
            space.select_hyperslab((row,), (1,))
            ds.id.write(one, space, np.array([fields.get(name, np.nan)], dtype=np.float64))
        self.rows += 1
        self.file.flush()

    def save_array(self, name: str, value) -> None:
        if name in self.file:
            del self.file[name]
        self.file.create_dataset(name, data=np.asarray(value))

    def close(self, status: str, message: str = "") -> None:
        if self.file:
            self.file.attrs["status"] = status
            self.file.attrs["message"] = message
            self.file.close()
            self.file = None


@dataclass(frozen=True)
class Trace:
    """A trace read back: metrics as arrays, attributes decoded."""

    path: Path
    attrs: dict
    metrics: dict
    arrays: dict

    @property
    def config(self) -> dict:
        return self.attrs.get("config", {})

    @property
    def rounds(self) -> int:
        return len(self.metrics.get("round", []))

    @property
    def columns(self) -> list[str]:
        """Metric names: ``round`` first, the others sorted."""
        return sorted(self.metrics, key=lambda name: (name != "round", name))

    def dataframe(self):
        """The metrics as a pandas DataFrame (pandas must be installed), ``round`` first."""
        import pandas

        return pandas.DataFrame({name: self.metrics[name] for name in self.columns})

    def to_csv(self, file=None) -> str | None:
        """The metrics as CSV: a header row, then one row per round, ``round`` first.

        Values are written exactly (the shortest text that reads back to the same float64; whole
        numbers without a decimal point), NaN as ``nan``. ``file``: None returns the text; a path
        is written atomically (a temporary file beside it, then renamed); else a text stream.
        """
        import csv
        import io
        import tempfile

        if isinstance(file, (str, os.PathLike)):
            target = Path(file)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", newline="") as stream:
                    self.to_csv(stream)
                umask = os.umask(0o22)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the CSV private
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return None
        stream = io.StringIO() if file is None else file
        cols = self.columns
        rows = max((len(self.metrics[c]) for c in cols), default=0)
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(cols)
        for i in range(rows):
            writer.writerow([self._exact(self.metrics[c][i]) if i < len(self.metrics[c]) else "nan" for c in cols])
        return stream.getvalue() if file is None else None

    @staticmethod
    def _exact(value) -> str:
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 2.0**53 else repr(value)


def load(path: str | Path) -> Trace:
    """Read a trace; a clear error for a missing, corrupt or newer-schema file."""
    path = Path(path)
    if not path.is_file():
        raise MpifedError(f"trace not found: {path}")
    try:
        # No file lock: a trace may be read while its run is still writing it (or was killed).
        with _h5py().File(path, "r", locking=False) as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            version = attrs.get("schema_version")
            if version is None or "metrics" not in f:
                raise MpifedError(f"{path} is an HDF5 file but not an mpifed trace")
            if int(version) > SCHEMA_VERSION:
                raise MpifedError(f"{path} has trace schema {version}; this mpifed ({__version__}) reads up to "
                                  f"{SCHEMA_VERSION}: upgrade mpifed")
            metrics = {name: ds[()] for name, ds in f["metrics"].items()}
            arrays = {f"{group}/{name}": ds[()] for group in ("x", "partition", "netsim") if group in f
                      for name, ds in f[group].items()}
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as err:
        # h5py reports a truncated or damaged file as OSError at open, or KeyError/RuntimeError on a read
        reason = " ".join(str(err).split()) or type(err).__name__
        raise MpifedError(f"cannot read {path} as an mpifed trace (corrupt or truncated?): {reason}") from None
    return Trace(path, attrs, metrics, arrays)


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def default_path(algorithm: str, dataset: str) -> Path:
    """runs/<algorithm>-<dataset>-<n>.h5 with the first free n (used when --out is not given)."""
    stem = f"{algorithm}-{Path(dataset).name}"
    n = 1
    while Path("runs", f"{stem}-{n}.h5").exists():
        n += 1
    return Path("runs", f"{stem}-{n}.h5")


def environment(comm, backend) -> dict:
    """Where each rank ran, gathered at setup: host, pid, backend, GPU, SLURM ids; plus the MPI library.

    Per rank: ``gpu`` is the CUDA device's name under the cupy backend, ``cuda_visible_devices``
    the variable as the launcher set it, ``slurm`` the SLURM variables present (job, array job
    and task, task rank, node-local rank, node list; empty outside SLURM). ``slurm_job`` repeats
    the job id (read by older tools).
    """
    import platform

    gpu = ""
    if backend.name == "cupy":
        try:
            gpu = backend.xp.cuda.runtime.getDeviceProperties(backend.device)["name"].decode()
        except Exception:  # the name is informative only
            gpu = "unknown"
    names = ("JOB_ID", "ARRAY_JOB_ID", "ARRAY_TASK_ID", "PROCID", "LOCALID", "NODELIST")
    slurm = {n.lower(): os.environ["SLURM_" + n] for n in names if "SLURM_" + n in os.environ}
    mine = {"host": platform.node(), "pid": os.getpid(), "backend": backend.describe(), "gpu": gpu,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "slurm": slurm,
            "slurm_job": os.environ.get("SLURM_JOB_ID", "")}
    ranks = comm.allgather(mine)
    import scipy

    # only rank 0, the trace's writer, loads h5py to record its version
    return {"ranks": ranks, "mpi_library": comm.library(),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "h5py": _h5py().__version__ if comm.rank == 0 else "", "platform": platform.platform()}
