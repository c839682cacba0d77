"""Hessian-free second-order methods: the server never holds a d x d matrix and the clients never form one.

Curvature reaches the server only as Hessian-vector products grad^2 f_i(x) v (Newton-CG, DiSCO) or as pairs of
iterate and gradient differences (L-BFGS), each one d-vector per client and exchange; see
:mod:`~mpifed.algorithms.hessian_free.common`.
"""
