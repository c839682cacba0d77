"""The objectives clients optimise: :mod:`~mpifed.problems.logistic` (the GLM block of the convex methods),
:mod:`~mpifed.problems.least_squares` (ridge regression on the same block) and :mod:`~mpifed.problems.nn`
(networks: models, layers, curvature factors, the image block).

:data:`BLOCKS` maps ``--problem`` to the block class of a tabular federation; each is built as
``Block(A, b, offsets, lam, backend, m_max=...)`` from a rank's rows (CSR), labels and client offsets.
"""
from .least_squares import LeastSquaresBlock
from .logistic import LogisticBlock

BLOCKS = {"logistic": LogisticBlock, "least-squares": LeastSquaresBlock}
