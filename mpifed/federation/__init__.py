"""A rank's share of the federation: its block of clients, their data and streams, and the facts all ranks share.

Every rank reads the same file, computes the same full partition (:mod:`mpifed.data.partition`, drawn from the
run's seed only) and keeps the rows of its own contiguous block of clients (:func:`mpifed.comm.client_range`).
Nothing here depends on the number of ranks except which clients a rank holds. Rank 0 alone holds the test set.
:func:`build_federation` takes a :class:`~mpifed.plan.DataSpec`: LIBSVM and synthetic data become a
:class:`~mpifed.problems.logistic.LogisticBlock` (:mod:`.tabular`), image sets an
:class:`~mpifed.problems.nn.block.ImageBlock` (:mod:`.images`), and ``--problem saddle`` generates its
:class:`~mpifed.problems.saddle.SaddleBlock` (:mod:`.saddle`).
"""
from __future__ import annotations

from .base import LABELS, Federation, map_large_vectors, release_memory  # noqa: F401


def build_federation(spec, comm) -> Federation:
    """This rank's share of the federation described by ``spec`` (a :class:`~mpifed.plan.DataSpec`)."""
    if spec.images:
        from .images import build_images

        return build_images(spec, comm)
    if spec.problem == "saddle":
        from .saddle import build_saddle

        return build_saddle(spec, comm)
    from .tabular import build_tabular

    return build_tabular(spec, comm)
