"""The objectives clients optimise: :mod:`~mpifed.problems.logistic` (the GLM block of the convex methods) and
:mod:`~mpifed.problems.nn` (networks: models, layers, curvature factors, the image block)."""
