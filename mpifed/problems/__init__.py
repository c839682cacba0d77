"""The objectives clients optimise: :mod:`~mpifed.problems.logistic` (the GLM block of the convex methods),
:mod:`~mpifed.problems.least_squares` (ridge regression on the same block), :mod:`~mpifed.problems.pca` (PCA on the
unit sphere, for the Riemannian methods) and :mod:`~mpifed.problems.nn`
(networks: models, layers, curvature factors, the image block).

:data:`BLOCKS` maps ``--problem`` to the block class of a tabular federation; each is built as
``Block(A, b, offsets, lam, backend, m_max=...)`` from a rank's rows (CSR), labels and client offsets;
``--problem saddle`` is synthetic and has its own builder (:mod:`mpifed.federation.saddle`): its entry is the
:class:`~mpifed.problems.saddle.SaddleBlock`, built per client from the seed instead of from rows.
"""
from .least_squares import LeastSquaresBlock
from .logistic import LogisticBlock
from .pca import PCABlock
from .saddle import SaddleBlock

BLOCKS = {"logistic": LogisticBlock, "least-squares": LeastSquaresBlock, "pca": PCABlock, "saddle": SaddleBlock}
