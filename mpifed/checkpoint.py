"""Checkpoint and resume: a run's whole state at the start of a round, in one file beside its trace.

A checkpoint taken at the top of round k (before x^k is used) holds k, x^k, the server state,
every rank's client state (learned Hessians, shifts, control variates, ...), the bit ledger,
x* and f*, the run's config and a byte copy of the trace as it stood (rows 0..k-1).
The random streams are counter-based (:mod:`mpifed.rng`: keyed by seed, client and round), so the
round number is all the random state there is, participation included.

``<trace>.ckpt`` is a pickle written to ``<trace>.ckpt.tmp`` and renamed over the old one, so a
run killed mid-write (SIGKILL) leaves the previous checkpoint usable. Resuming puts the trace
back as the checkpoint saw it (rows written after it are recomputed, identically) and goes on.
A checkpoint is resumed on as many ranks as wrote it: each rank's client block is saved as is.

Signals: SIGTERM (what SLURM sends before the time limit, see ``--signal`` in jobs/) and SIGINT
only raise a flag; the run finishes its round, every rank learns of the request in the next
exchange, and the run checkpoints at the top of the next round, closes the trace as
``suspended`` and exits with :data:`EXIT_SUSPENDED`. A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .comm import collective
from .errors import ConfigError

MAGIC, VERSION = "mpifed-checkpoint", 1
EXIT_SUSPENDED = 75  # sysexits EX_TEMPFAIL: "try again later" (mpifed run --resume)
# config fields a resume may change: how long to run and what to print, not what is computed
RESUMABLE = ("rounds", "tol", "quiet", "checkpoint_every", "overwrite")


def path_for(trace: str | Path) -> Path:
    return Path(f"{trace}.ckpt")


class Signals:
    """SIGTERM / SIGINT handlers that only set ``requested`` (installed while a run is in its loop)."""

    def __init__(self):
        self.requested = 0
        self.previous = {}

    def install(self) -> None:
        self.requested = 0
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in a test runner's worker)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.requested = signum


SIGNALS = Signals()


@dataclass
class State:
    """What a rank resumes from: the round k, x^k, its states and the ledger (server on rank 0 only)."""

    k: int
    x: np.ndarray
    server: object
    client: object
    bits: dict


class Checkpointer:
    """Writes checkpoints for one run (collective: every rank calls :meth:`save` at the same round)."""

    def __init__(self, comm, config, writer, x_star, f_star, saved_at=None):
        self.comm, self.config, self.writer = comm, config, writer
        self.every = config.checkpoint_every
        self.x_star, self.f_star = x_star, f_star
        self.path = path_for(writer.path) if writer else None
        self.saved_at = saved_at  # a resumed run does not re-save the round it resumed at

    def due(self, k: int) -> bool:
        return bool(self.every) and k > 0 and k % self.every == 0 and k != self.saved_at

    def remove(self) -> None:
        """Rank 0, after the run finished: the checkpoint is no longer needed."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def save(self, k: int, x, server, client, bits: dict) -> None:
        """Gather every rank's client state to rank 0 and write the checkpoint there atomically."""
        blob = pickle.dumps(_to_host(client), protocol=pickle.HIGHEST_PROTOCOL)
        blobs = self.comm.gather_objects(blob)
        collective(self.comm, lambda: self._write(k, x, server, bits, blobs) if self.comm.is_root else None)
        self.saved_at = k

    def _write(self, k, x, server, bits, blobs) -> None:
        self.writer.flush()  # the buffered rows too: the copy below holds rows 0..k-1
        payload = {"magic": MAGIC, "version": VERSION, "round": k, "mpi_size": self.comm.size,
                   "config": self.config.to_json(), "x": np.asarray(x), "server": _to_host(server),
                   "bits": dict(bits), "clients": blobs, "x_star": self.x_star, "f_star": self.f_star,
                   "trace": self.writer.path.read_bytes()}
        tmp = Path(f"{self.path}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# Where the modules of mpifed 0.1's flat layout live now, so checkpoints written before the move still resume.
_MOVED = {f"mpifed.algorithms.{m}": f"mpifed.algorithms.second_order.{m}" for m in (
    "newton", "newton_star", "nl1", "nl2", "cnl", "lowrank", "fednl", "fednl_ls", "fednl_pp", "fednl_cr", "fednl_bc",
    "fedpm", "localnewton")}
_MOVED.update({f"mpifed.algorithms.{m}": f"mpifed.algorithms.first_order.{m}" for m in (
    "gd", "dcgd", "diana", "adiana", "fedavg", "fedavgm", "fedprox", "scaffold", "fedadam")})
_MOVED.update({f"mpifed.algorithms.nn_{m}": f"mpifed.algorithms.networks.{m}" for m in (
    "fedavg", "fedavgm", "fedprox", "scaffold", "fedadam", "localnewton", "fedpm", "local")})
_MOVED.update({"mpifed.algorithms.fedrco": "mpifed.algorithms.networks.fedrco",
               "mpifed.problems": "mpifed.problems.logistic", "mpifed.nn.federation": "mpifed.problems.nn.block",
               **{f"mpifed.nn.{m}": f"mpifed.problems.nn.{m}" for m in ("curvature", "factors", "layers", "models")}})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(_MOVED.get(module, module), name)


def _loads(data: bytes):
    return _Unpickler(io.BytesIO(data)).load()


def read(trace: str | Path) -> dict:
    """The checkpoint beside ``trace``, checked; one-line errors for a missing or foreign file."""
    path = path_for(trace)
    if not path.is_file():
        raise ConfigError(f"no checkpoint {path} to resume from (runs write one with --checkpoint-every N "
                          f"or when stopped by SIGTERM/SIGINT)")
    try:
        with open(path, "rb") as f:
            payload = _Unpickler(f).load()
    except Exception as err:  # truncated or not a pickle
        raise ConfigError(f"cannot read checkpoint {path} (corrupt or truncated?): {type(err).__name__}: {err}") from None
    if not isinstance(payload, dict) or payload.get("magic") != MAGIC:
        raise ConfigError(f"{path} is not an mpifed checkpoint")
    if payload["version"] > VERSION:
        raise ConfigError(f"{path} has checkpoint format {payload['version']}; this mpifed reads up to {VERSION}")
    return payload


def resumed_config(payload: dict, overrides: dict, trace: Path):
    """The checkpoint's config with the allowed overrides applied; a one-line error listing every
    other field where the given configuration differs from the checkpoint's."""
    from . import config as cfgmod

    saved = json.loads(payload["config"])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "out" in overrides and Path(overrides["out"]).resolve() != Path(trace).resolve():
        raise ConfigError(f"--out {overrides['out']} differs from the trace being resumed ({trace}); omit --out")
    overrides.pop("out", None)
    differ = [f"{k}: checkpoint {saved.get(k)!r}, given {v!r}" for k, v in sorted(overrides.items())
              if k not in RESUMABLE and cfgmod._coerce(k, v) != saved.get(k)]
    if differ:
        raise ConfigError(f"the configuration disagrees with the checkpoint of {trace} ({'; '.join(differ)}); "
                          f"only {', '.join(RESUMABLE)} may change on --resume")
    values = {**saved, **{k: v for k, v in overrides.items() if k in RESUMABLE}, "out": str(trace)}
    return cfgmod.build(values)


def restore_trace(payload: dict, trace: Path) -> None:
    """Put the trace back as the checkpoint saw it (atomically: temp file + rename)."""
    tmp = Path(f"{trace}.resume.tmp")
    tmp.write_bytes(payload["trace"])
    os.replace(tmp, trace)


def client_state(blob: bytes, backend):
    """A rank's saved client state, its arrays back on the run's backend (cupy for GPU runs)."""
    state = _loads(blob)
    if backend.name == "numpy":
        return state
    return _map_leaves(state, lambda v: backend.asarray(v) if isinstance(v, np.ndarray) else v)


def _to_host(obj):
    """States as saved: device (cupy) arrays become numpy arrays, anything else is pickled as is."""
    return _map_leaves(obj, lambda v: v.get() if type(v).__module__.startswith("cupy") else v)


def _map_leaves(obj, fn):
    """``fn`` applied to every leaf of a state built from dataclasses, dicts, lists and tuples."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map_leaves(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: _map_leaves(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(v, fn) for v in obj)
    return fn(obj)
