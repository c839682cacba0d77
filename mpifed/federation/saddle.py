"""The synthetic saddle federation (``--problem saddle``): a rank generates its own clients' operators
(:class:`~mpifed.problems.saddle.SaddleBlock`, drawn from (seed, client)); there is no data file and no test set."""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..comm import client_range
from ..problems.saddle import SADDLE_FEATURES, SaddleBlock
from .base import Federation


def build_saddle(spec, comm) -> Federation:
    """This rank's share of the saddle federation (``spec``: a :class:`~mpifed.plan.DataSpec`; the configuration
    has checked that the dataset is ``synthetic``, which names no file here)."""
    lo, hi = client_range(spec.clients, comm.size, comm.rank)
    ids = np.arange(lo, hi)
    p = spec.features or SADDLE_FEATURES
    block = SaddleBlock(ids, spec.clients, p, spec.similarity, spec.lam, spec.seed, get_backend(spec.backend))
    # the FLOP models' shape: one dense operator per client, nnz = d^2 (the stored M_i the code multiplies), m = 1;
    # no rows to pair (pairs = 0)
    shape = np.tile([1.0, float(block.d) ** 2, 0.0], (len(ids), 1))
    source = f"saddle(p={p}, delta={spec.similarity:g}, mu={spec.lam:g}, seed={spec.seed})"
    return Federation(spec.seed, comm, block.bk, block, ids, spec.clients, block.d, source, tau=spec.tau,
                      m_min=1, m_max=1, label_counts=np.zeros((len(ids), 2)),
                      partition={"spec": "saddle", "seed": spec.seed},
                      test_note="no test set (synthetic saddle problem)", client_shape=shape)
