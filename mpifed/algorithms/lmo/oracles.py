"""The clients' first- and second-order oracles for the LMO methods: gradients and Hessian-vector products,
batched over a block of clients.

Logistic GLM (exact): H_i(x) v = (1/m_i) sum_j phi''(a_ij^T x) a_ij (a_ij^T v) + lam v, from the margins of v and
the rows' curvature coefficients phi''(a_ij^T x) (:meth:`LogisticBlock.derivatives_and_coefficients`): O(nnz)
per client, no d x d matrix.

Networks (a finite difference): the numpy networks have no double back-propagation, so
H_i(x) v ~ (grad f_i(x + eps v; xi) - grad f_i(x; xi)) / eps on the same mini-batch xi as the gradient, with
eps ||v|| = sqrt(machine epsilon) max(1, ||x||) (the usual forward-difference step, error O(eps ||v||^2)).
"""
from __future__ import annotations

import numpy as np


def glm_hvp(block, curvature, v):
    """H_i(x) v (n, d) for every client, from the rows' curvature ``curvature`` = phi''(a_ij^T x) at x
    (:meth:`LogisticBlock.hvp_from_coefficients`, the same v for every client)."""
    return block.hvp_from_coefficients(curvature, v)


def network_gradients(block, x, streams):
    """(loss (n,), mini-batch gradient (n, P), the batch) at x for every client: mini-batch 0 of the round."""
    X, y = block.batch(streams, 0)
    loss, grad, _ = block.loss_grad(block.bk.xp.broadcast_to(x, (block.n, block.d)), X, y)
    return loss, grad, (X, y)


def network_hvp(block, x, grad, batch, v):
    """H_i(x; xi) v (n, P) by a forward difference of gradients on the same mini-batch xi."""
    xp = block.bk.xp
    size = float(xp.linalg.norm(v))
    if size == 0.0:
        return xp.zeros_like(grad)
    eps = float(np.sqrt(np.finfo(x.dtype).eps)) * max(1.0, float(xp.linalg.norm(x))) / size
    _, moved, _ = block.loss_grad(xp.broadcast_to(x + eps * v, (block.n, block.d)), *batch)
    return (moved - grad) / eps
