"""A regularised bilinear saddle problem as a monotone inclusion, for a block of clients (``--problem saddle``).

Client i holds

    L_i(x, y) = (mu/2)||x||^2 + x^T B_i y + b_i^T x - c_i^T y - (mu/2)||y||^2,      x, y in R^p,

and the federation solves min_x max_y (1/n) sum_i L_i, i.e. 0 = A(z) = (1/n) sum_i A_i(z) with z = (x, y) and the
affine, mu-strongly monotone operators (Sadiev, Condat & Richtarik, arXiv:2405.14255, the regularised bilinear
instance of their experiments as the sheet reconstructs it)

    A_i(z) = (grad_x L_i, -grad_y L_i) = M_i z + q_i,   M_i = [[mu I, B_i], [-B_i^T, mu I]],   q_i = (b_i, c_i).

B_i = B + delta E_i: B (entries N(0, 1/p)) is shared, drawn from the seed; E_i (Gaussian, scaled to spectral norm 1),
b_i and c_i (N(0, 1)) are drawn from (seed, client), so a client's operator never depends on the rank layout.
Since ||E_i|| = 1, ||M_i - M_bar|| = delta ||E_i - E_bar|| <= 2 delta: delta sets the similarity constant of the
paper's expected-similarity assumption. The resolvent J_{gamma A_i}(z) = (I + gamma M_i)^{-1}(z - gamma q_i) is a
linear solve; z* = -M_bar^{-1} q_bar.
"""
from __future__ import annotations

import numpy as np

from ..backend import NUMPY, Backend

SADDLE_FEATURES = 10  # p, the size of x and of y, when --features is not given (d = 2p)
_STREAM = 0x5AD  # the saddle problem's draws: (seed, _STREAM) for B, (seed, _STREAM, client + 1) per client


def client_operators(seed: int, ids, p: int, delta: float, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """(M_i (k, 2p, 2p), q_i (k, 2p)) of the clients ``ids``, each drawn from (seed, client) alone."""
    B = np.random.default_rng([seed, _STREAM]).standard_normal((p, p)) / np.sqrt(p)
    ids = np.asarray(ids, dtype=np.int64)
    M, q = np.zeros((len(ids), 2 * p, 2 * p)), np.zeros((len(ids), 2 * p))
    for row, client in enumerate(ids):  # setup only: one small draw per client, in any order
        rng = np.random.default_rng([seed, _STREAM, int(client) + 1])
        E = rng.standard_normal((p, p))
        Bi = B + delta * E / np.linalg.norm(E, 2)
        M[row, :p, p:], M[row, p:, :p] = Bi, -Bi.T
        q[row] = rng.standard_normal(2 * p)
    M[:, np.arange(2 * p), np.arange(2 * p)] = mu
    return M, q


class SaddleBlock:
    """The clients a rank hosts: their operators M_i, q_i, batched over the block.

    Parameters
    ----------
    ids : the block's global client ids; n_clients : n, the whole federation's size
    p : the size of x and of y; delta : the similarity constant; mu : the strong monotonicity (``--lam``)
    """

    def __init__(self, ids, n_clients: int, p: int, delta: float, mu: float, seed: int, backend: Backend = NUMPY):
        self.bk, self.ids, self.n_clients = backend, np.asarray(ids), int(n_clients)
        self.p, self.delta, self.mu, self.lam, self.seed = int(p), float(delta), float(mu), float(mu), int(seed)
        self.n, self.d = len(self.ids), 2 * self.p
        M, q = client_operators(seed, self.ids, self.p, self.delta, self.mu)
        self.M, self.q = backend.xp.asarray(M), backend.xp.asarray(q)

    def operator(self, z):
        """A_i(z) = M_i z + q_i for every client of the block, (n, d); z is (d,) or per client (n, d)."""
        Z = z if z.ndim == 2 else self.bk.xp.broadcast_to(z, (self.n, self.d))
        return (self.M @ Z[:, :, None])[..., 0] + self.q

    def values(self, z):
        """L_i(x, y) for every client of the block, (n,): (1/2) z^T M_i^sym z + b_i^T x - c_i^T y, where the
        symmetric part of M_i is diag(mu I, -mu I) (the bilinear term enters once: x^T B_i y)."""
        x, y = z[..., :self.p], z[..., self.p:]
        bilinear = (x * (self.M[:, :self.p, self.p:] @ y[..., None])[..., 0]).sum(axis=-1)
        return (0.5 * self.mu * ((x * x).sum(axis=-1) - (y * y).sum(axis=-1)) + bilinear
                + (self.q[:, :self.p] * x).sum(axis=-1) - (self.q[:, self.p:] * y).sum(axis=-1))

    def resolvent(self, rows, z, gamma: float):
        """J_{gamma A_i}(z_i) = (I + gamma M_i)^{-1}(z_i - gamma q_i) for the block's clients ``rows`` (k,),
        z (k, d): one batched linear solve."""
        xp = self.bk.xp
        I = xp.eye(self.d)
        return xp.linalg.solve(I + gamma * self.M[rows], (z - gamma * self.q[rows])[:, :, None])[..., 0]

    def solution(self) -> tuple[np.ndarray, float]:
        """(z*, L(z*)) of the whole federation: M_bar z* = -q_bar, from every client's operator regenerated here
        (the same draws on every rank, so every rank gets the same z*)."""
        M_bar, q_bar = self._means()
        z = np.linalg.solve(M_bar, -q_bar)
        full = SaddleBlock(np.arange(self.n_clients), self.n_clients, self.p, self.delta, self.mu, self.seed)
        return z, float(full.values(z).mean())

    def similarity(self) -> float:
        """max_i ||M_i - M_bar||_2 over all n clients (<= 2 delta)."""
        M_bar, _ = self._means()
        M, _ = client_operators(self.seed, np.arange(self.n_clients), self.p, self.delta, self.mu)
        return float(np.linalg.norm(M - M_bar, 2, axis=(1, 2)).max()) if self.n_clients else 0.0

    def lipschitz(self) -> float:
        """L = ||M_bar||_2, the Lipschitz constant of A."""
        return float(np.linalg.norm(self._means()[0], 2))

    def _means(self):
        M, q = client_operators(self.seed, np.arange(self.n_clients), self.p, self.delta, self.mu)
        return M.mean(axis=0), q.mean(axis=0)
