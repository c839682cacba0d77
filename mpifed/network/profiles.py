"""Network and device profiles: per-client bandwidth, latency and compute speed, drawn from (seed, client).

A profile is a TOML file (the named ones ship in ``profiles/``; ``--network PATH.toml`` reads another)::

    description = "4G LTE phones"
    source = "where the numbers come from"
    up_mbps = 8.0            # client -> server, megabits per second
    down_mbps = 30.0         # server -> client
    rtt_ms = 60.0            # one request-and-reply round trip, paid once per exchange
    device = "phone"         # the clients' compute class (DEVICES), or a number of GFLOP/s
    server = "server"        # the server's compute class
    spread = 0.0             # sigma of a log-normal factor (median 1) on each client's bandwidth and speed
    straggler_probability = 0.0   # per client and round: the device is slowed down this round ...
    straggler_slowdown = 1.0      # ... by this factor (compute and bandwidth)
    dropout = 0.0            # per participant and exchange: the reply is lost; the server waits
    dropout_timeout_s = 0.0  # this long, then asks again (the client redoes the exchange)

    [[mix]]                  # optional: each client is one of these profiles, drawn with these shares
    profile = "3g"
    share = 0.5

Every draw is a counter-based stream of :mod:`mpifed.rng` keyed by (seed, stream, client[, round]), so a client
has the same device at any number of ranks and in a re-simulation.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..rng import ClientStreams

HERE = Path(__file__).resolve().parent / "profiles"
NAMES = tuple(sorted(p.stem for p in HERE.glob("*.toml")))
DEFAULT = "lan"
FIXED = 2**62  # the "round" key of draws that hold for the whole run (a client's device): no run gets there
# Sustained FLOP/s of a compute class on this kind of arithmetic (sparse products, small dense solves) —
# assumptions, well below peak: a phone's big CPU cores in float64 (peak about 20-50 GFLOP/s), a laptop
# CPU (peak a few hundred), one server socket (peak a few TFLOP/s).
DEVICES = {"phone": 5e9, "laptop": 50e9, "server": 500e9}
_KEYS = {"description", "source", "up_mbps", "down_mbps", "rtt_ms", "device", "server", "spread",
         "straggler_probability", "straggler_slowdown", "dropout", "dropout_timeout_s", "mix"}


@dataclass(frozen=True)
class Profile:
    name: str
    up_mbps: float
    down_mbps: float
    rtt_ms: float
    device: str = "phone"
    server: str = "server"
    spread: float = 0.0
    straggler_probability: float = 0.0
    straggler_slowdown: float = 1.0
    dropout: float = 0.0
    dropout_timeout_s: float = 0.0
    mix: tuple = ()  # ((Profile, share), ...)
    description: str = ""
    source: str = ""

    def faster(self, factor: float) -> "Profile":
        """The same devices on a link ``factor`` times faster: bandwidths times, round trips and drop-out timeouts
        divided by ``factor`` (every communication cost divided; the crossover sweep)."""
        return dataclasses.replace(self, up_mbps=self.up_mbps * factor, down_mbps=self.down_mbps * factor,
                                   rtt_ms=self.rtt_ms / factor, dropout_timeout_s=self.dropout_timeout_s / factor,
                                   mix=tuple((p.faster(factor), s) for p, s in self.mix),
                                   name=f"{self.name}x{factor:g}")

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "mix"}
        out["mix"] = [{"share": s, **p.to_dict()} for p, s in self.mix]
        return out

    @property
    def server_flops(self) -> float:
        return speed(self.server, "server")

    def devices(self, seed: int, n: int) -> "Devices":
        """Every client's device, drawn from (seed, client)."""
        ids = np.arange(n)
        if self.mix:
            shares = np.cumsum([s for _, s in self.mix])
            u = ClientStreams(seed, ids, FIXED).uniform("netsim-mix", 1)[:, 0] * shares[-1]
            kind = np.minimum(np.searchsorted(shares, u, side="right"), len(self.mix) - 1)
            parts = [p.devices(seed, n) for p, _ in self.mix]
            base = Devices(*(np.choose(kind, [getattr(q, f) for q in parts]) for f in ("up", "down", "rtt", "speed")))
        else:
            base = Devices(np.full(n, self.up_mbps * 1e6), np.full(n, self.down_mbps * 1e6),
                           np.full(n, self.rtt_ms * 1e-3), np.full(n, speed(self.device, "device")))
        if not self.spread:
            return base
        from scipy.special import ndtri  # here, not at import: scipy.special costs every process some 4 MB

        z = ndtri(ClientStreams(seed, ids, FIXED).uniform("netsim-spread", 2) * (1 - 2**-53) + 2**-54)
        link, compute = np.exp(self.spread * z[:, 0]), np.exp(self.spread * z[:, 1])
        return Devices(base.up * link, base.down * link, base.rtt, base.speed * compute)


@dataclass(frozen=True)
class Devices:
    """Per client (n,): uplink and downlink bits/s, round-trip seconds, FLOP/s."""

    up: np.ndarray
    down: np.ndarray
    rtt: np.ndarray
    speed: np.ndarray


def speed(value, what: str) -> float:
    """FLOP/s of a compute class name or a number of GFLOP/s."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value) * 1e9
    if value in DEVICES:
        return DEVICES[value]
    raise ConfigError(f"{what} = {value!r} is out of range; valid: {', '.join(DEVICES)} or GFLOP/s > 0")


def load(spec: str, device: str | None = None) -> Profile:
    """The profile named ``spec`` (see :data:`NAMES`) or read from a TOML path; ``device`` overrides its
    clients' compute class. A one-line ConfigError for an unknown name or a bad value."""
    path = HERE / f"{spec}.toml" if spec in NAMES else Path(spec)
    if spec not in NAMES and not (path.suffix == ".toml" and path.is_file()):
        raise ConfigError(f"--network = {spec!r} is out of range; valid: {', '.join(NAMES)} or a profile .toml file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    profile = _build(path.stem, raw, path)
    if device is not None:
        speed(device, "--device")
        profile = dataclasses.replace(profile, device=device,
                                      mix=tuple((dataclasses.replace(p, device=device), s) for p, s in profile.mix))
    return profile


def _build(name: str, raw: dict, path: Path) -> Profile:
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_KEYS))}")
    mix = tuple((load(m["profile"]), float(m.get("share", 1.0))) for m in raw.get("mix", ()))
    if mix:
        fill = {k: 1.0 for k in ("up_mbps", "down_mbps", "rtt_ms")}  # the components carry the links
        raw = {**fill, **raw}
    missing = [k for k in ("up_mbps", "down_mbps", "rtt_ms") if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    p = Profile(name, **{k: v for k, v in raw.items() if k != "mix"}, mix=mix)
    checks = [(p.up_mbps > 0 and p.down_mbps > 0, "up_mbps, down_mbps", "> 0"), (p.rtt_ms >= 0, "rtt_ms", ">= 0"),
              (p.spread >= 0, "spread", ">= 0"), (0 <= p.straggler_probability <= 1, "straggler_probability", "[0, 1]"),
              (p.straggler_slowdown >= 1, "straggler_slowdown", ">= 1"), (0 <= p.dropout < 1, "dropout", "[0, 1)"),
              (p.dropout_timeout_s >= 0, "dropout_timeout_s", ">= 0"),
              (all(s > 0 for _, s in mix), "mix share", "> 0")]
    for ok, key, valid in checks:
        if not ok:
            raise ConfigError(f"{path}: {key} is out of range; valid: {valid}")
    speed(p.device, f"{path}: device")
    speed(p.server, f"{path}: server")
    return p
