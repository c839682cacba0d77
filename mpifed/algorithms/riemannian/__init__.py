"""Riemannian methods on the unit sphere (``--problem pca``): ``rgd``, ``r-lsvrg``, ``r-page``, ``r-marina``.

They share the sphere's projection, retraction and vector transport and the setup's smoothness constants
(:mod:`.sphere`); each round every client's uplink carries its Riemannian gradient at x^k for the metrics.
"""
