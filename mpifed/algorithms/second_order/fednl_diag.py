"""FedNL's clients with ``hessian = "diagonal"``: Algorithm 1 of Safaryan et al. (ICML 2022) on the space
of diagonal matrices, so each client learns and sends only d numbers. The FedNL paper has no diagonal
variant; this is Algorithm 1 with the matrix space restricted (the option a blog's ``hessian_approx =
diagonal`` names), every other rule unchanged.

Client i keeps the d-vector H_i (O(d) state, no packed matrix is ever built) and computes only

    D_i(x) = diag grad^2 f_i(x) = (1/m_i) sum_j phi''(a_ij^T x) a_ij^2 + lam      (entrywise squares, O(nnz)),

then, as in the full method with the matrix replaced by its diagonal:

    S_i^k = C(D_i(x^k) - H_i^k),   l_i^k = ||H_i^k - D_i(x^k)||_2 (Option 2),   H_i^{k+1} = H_i^k + alpha S_i^k.

C is a compressor of d-vectors (:func:`mpifed.compressors.make` with ``vector=True``: identity, Top-K,
Rand-K, natural, RandSeqK): K counts diagonal entries, 1 <= K <= d, and ``k=0.25d`` is a quarter of the
diagonal. l_i measures how far the learned diagonal is from the true one, not from the full Hessian (that
would need the off-diagonal entries), so H + l I need not dominate grad^2 f: with the identity compressor
and alpha = 1 the method is the diagonal-Newton (Jacobi-preconditioned gradient) iteration with a one-round
-old diagonal, which converges linearly where the preconditioned Hessian's eigenvalues stay below 2. On
a9a and w8a they do not, so under Option 2 ``adaptive_regularization`` (which damps it) is on by default. Bits: what the compressed d-vector costs
(values, and indices of ceil(log2 d) bits for the sparse ones), plus d floats of gradient and l_i.
"""
from __future__ import annotations

import numpy as np

from ..base import Uplink, bits_for


def client_init(p, block, x0, streams):
    """H_i^0 = D_i(x^0), d floats uploaded once (the setup bits)."""
    loss, grad, h = block.derivatives_and_coefficients(x0)
    D = block.hessian_diagonals(h)
    values, index = bits_for(block.n, block.d, p.float_bits)
    return D, Uplink(loss, grad, values, index, {"hess": D})


def client_step(p, block, H, x, streams):
    """(H^{k+1} (n, d), the uplink: f_i, grad f_i, S_i summed as field "S", and l_i under Option 2)."""
    xp = block.bk.xp
    loss, grad, h = block.derivatives_and_coefficients(x)
    diff = block.hessian_diagonals(h) - H
    fields = {"l": xp.sqrt((diff * diff).sum(axis=1))} if p.option == 2 else {}
    message = p.compressor.compress(diff, streams)
    H = H + (message.values if p.alpha == 1.0 else p.alpha * message.values)
    fields["S"] = message.values
    values, _ = bits_for(block.n, block.d + (p.option == 2), p.float_bits)
    return H, Uplink(loss, grad, values + message.value_bits, np.asarray(message.index_bits, dtype=np.float64),
                     fields)
