"""The device and network model: per-client bandwidth, latency and FLOP/s (:mod:`.profiles`), the methods' analytic
FLOP counts (:mod:`.flops`), and the simulated wall-clock of a run's rounds (:mod:`.simulate`)."""
from __future__ import annotations

import numpy as np

from ..errors import MpifedError
from .flops import Shape, Work
from .profiles import DEFAULT, NAMES, Profile, load  # noqa: F401  (the package's interface)
from .simulate import NET_COLUMNS, SIM_COLUMNS, Clock, replay  # noqa: F401


def shape_of(rows, d: int, tau: int, layers: tuple = (), batch: int = 0) -> Shape:
    """A :class:`Shape` from the (n, 3) per-client rows m_i, nnz_i, pairs_i of every client."""
    rows = np.asarray(rows, dtype=np.float64)
    return Shape(int(d), rows[:, 0], rows[:, 1], rows[:, 2], int(tau) or len(rows), tuple(layers), int(batch))


def work_of(method, params, shape: Shape) -> Work:
    """The method's FLOPs per round (its module's ``flops(p, shape)``), checked for shape and sign."""
    if not hasattr(method, "flops"):
        raise MpifedError(f"method module {method.__name__} has no flops(p, shape): every method states its FLOP "
                          f"count (see mpifed.algorithms.base)")
    work = method.flops(params, shape)
    vectors = np.concatenate([work.vectors(shape.n).ravel(), work.servers()])
    if not (np.all(np.isfinite(vectors)) and np.all(vectors >= 0)):
        raise MpifedError(f"{method.__name__}.flops gave negative or non-finite counts")
    return work
