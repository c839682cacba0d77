"""ADIANA: accelerated DIANA (Li, Kovalev, Qian, Richtarik, "Acceleration for compressed
gradient descent in distributed and federated optimization", ICML 2020, Algorithm 1).

Server sequences y, z, w (all x^0 at the start) and shifts h_i (h_i^0 = 0), h = mean h_i.
Round k::

    x^k = theta1 z^k + theta2 w^k + (1 - theta1 - theta2) y^k               (broadcast)
    client i: Delta_i = C_i(grad f_i(x^k) - h_i),  delta_i = C_i'(grad f_i(w^k) - h_i),
              h_i <- h_i + alpha delta_i
    g^k = h^k + (1/n) sum_i Delta_i,   h^{k+1} = h^k + (alpha/n) sum_i delta_i
    y^{k+1} = x^k - eta g^k
    z^{k+1} = beta z^k + (1 - beta) x^k + (gamma/eta)(y^{k+1} - x^k)
    w^{k+1} = y^k with probability p, else w^k.

Delta_i and delta_i use independent draws (the second from the client's streams renamed
"<name>/w"). The coin for w is the server's, drawn from (seed, "adiana-coin", round).

Theoretical parameters (Li et al. 2020, Theorem 3 / Corollary; checked against FedNL-Public's
``adiana``), with alpha = 1/(omega+1), mu = lam, L = L_max = max_i L_i (each f_i L-smooth):

    p      = min(1, max(alpha/2, (alpha/2)(sqrt(n/(32 omega)) - 1)))      (p = 1 if omega = 0)
    eta    = min(1/(2L), n / (64 omega L (2 p (omega+1) + 1)^2))          (1/(2L) if omega = 0)
    theta1 = min(1/4, sqrt(eta mu / p)),  theta2 = 1/2,
    gamma  = eta / (2 (theta1 + eta mu)),  beta = 1 - gamma mu.

``step_size`` overrides eta (the rest follow from it), ``alpha`` overrides alpha; lam > 0 is
needed (the method is for strongly convex P).

Wire and metrics: the driver broadcasts x^k (d floats) and the uplink carries both
compressed vectors, so each client's bits are the sum of the two messages as the compressor
reports them (FedNL-Public counts one message per round, an undercount). When w changes the
server sends w^{k+1} = y^k to every client in an extra exchange within the round (a
:class:`~mpifed.algorithms.base.Query`: d floats down, nothing up), so clients can evaluate
grad f_i(w). The trace's loss and gradient norm are at the broadcast x^k (FedNL-Public
reports the loss at y^k; both converge to x*).

Partial participation (an extension, no theory in the paper): the tau participants send
Delta_i and delta_i; g^k = h^k + (1/tau) sum_{S^k} Delta_i (unbiased, as in :mod:`diana`),
h^{k+1} = h^k + (alpha/n) sum_{S^k} delta_i; the others keep h_i and send nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ...rng import ClientStreams
from ..base import Query, Uplink, participation, to_participants
from .dcgd import make_compressor, message_bits, smoothness, smoothness_init


@dataclass(frozen=True)
class Params:
    """C: unbiased compressor; alpha; eta (None: theory, at setup); lam = mu; tau of n per round; seed (coin)."""

    C: object
    alpha: float
    eta: float | None
    lam: float
    tau: int
    n: int
    seed: int = 0
    float_bits: int = 32
    curvature: float = 0.25  # sup l'', for L_max
    uses = ("compressor", "alpha", "step_size", "participation")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        C = make_compressor(opts, fed, "adiana", biased_ok=False)
        alpha = opts.alpha if opts.alpha is not None else 1.0 / (C.omega + 1.0)
        if not 0 < alpha <= 1:
            raise ConfigError(f"--alpha = {alpha!r} is out of range; valid: 0 < alpha <= 1 "
                              f"(theory: alpha = 1/(omega+1) = {1 / (C.omega + 1):.4g})")
        if opts.lam <= 0:
            raise ConfigError(f"--lam = {opts.lam!r} is out of range for adiana; valid: lam > 0 "
                              f"(its parameters need strong convexity mu = lam)")
        return cls(C, alpha, opts.step_size, opts.lam, fed.tau or fed.n_clients, fed.n_clients,
                   opts.seed, opts.float_bits, fed.block.curvature_bound)


def theoretical(alpha: float, omega: float, mu: float, L: float, n: int, eta: float | None = None):
    """(p, eta, theta1, theta2, gamma, beta) of Li et al. 2020 (see the module docstring)."""
    if omega == 0:
        prob, eta_max = 1.0, 0.5 / L
    else:
        prob = min(1.0, max(0.5 * alpha, 0.5 * alpha * (math.sqrt(n / (32.0 * omega)) - 1.0)))
        eta_max = min(0.5 / L, n / (64.0 * omega * L * (2.0 * prob * (omega + 1.0) + 1.0) ** 2))
    eta = eta or eta_max
    theta1 = min(0.25, math.sqrt(eta * mu / prob))
    gamma = 0.5 * eta / (theta1 + eta * mu)
    return prob, eta, theta1, 0.5, gamma, 1.0 - gamma * mu


@dataclass(frozen=True)
class ClientState:
    h: object       # (n, d) shifts h_i
    grad_w: object  # (n, d) grad f_i(w^k), recomputed only when the server sends a new w


@dataclass(frozen=True)
class ServerState:
    coef: tuple  # (p, eta, theta1, theta2, gamma, beta)
    h: np.ndarray
    y: np.ndarray
    z: np.ndarray
    w: np.ndarray
    k: int  # round, for the coin
    x_next: np.ndarray | None = None  # held while w^{k+1} is being sent


class _Renamed:
    """The same client streams under other names: an independent draw for the second message."""

    def __init__(self, streams, suffix: str):
        self.streams, self.suffix = streams, suffix
        self.active = streams.active

    def bits(self, name, k):
        return self.streams.bits(name + self.suffix, k)

    def uniform(self, name, k):
        return self.streams.uniform(name + self.suffix, k)


def client_init(p: Params, block, x0, streams):
    xp = block.bk.xp
    grad_w = block.derivatives(xp.asarray(x0), hessian=False)[1]
    return ClientState(xp.zeros((block.n, block.d)), grad_w), smoothness_init(block)


def server_init(p: Params, agg, x0):
    _, L_max = smoothness(agg, len(x0), p.lam, p.curvature)
    coef = theoretical(p.alpha, p.C.omega, p.lam, L_max, p.n, p.eta)
    x0 = np.array(x0, dtype=np.float64)
    return ServerState(coef, np.zeros(len(x0)), x0, x0.copy(), x0.copy(), 0)


def client_step(p: Params, block, state: ClientState, x, streams):
    xp = block.bk.xp
    loss, grad, _ = block.derivatives(x, hessian=False)
    active, on = participation(xp, streams)
    at_x = p.C.compress(grad - state.h, streams)
    at_w = p.C.compress(state.grad_w - state.h, _Renamed(streams, "/w"))
    Delta = xp.where(on[:, None], at_x.values, 0.0)
    delta = xp.where(on[:, None], at_w.values, 0.0)
    vx, ix = message_bits(at_x, active)
    vw, iw = message_bits(at_w, active)
    uplink = Uplink(loss, grad, vx + vw, ix + iw, {"Delta": Delta, "delta": delta})
    return ClientState(state.h + p.alpha * delta, state.grad_w), uplink


def client_query(p: Params, block, state: ClientState, point, streams):
    """The server's new w: take grad f_i(w) once, send nothing back."""
    xp, zero = block.bk.xp, np.zeros(block.n)
    grad_w = block.derivatives(xp.asarray(point), hessian=False)[1]
    return ClientState(state.h, grad_w), Uplink(xp.zeros(block.n), None, zero, zero)


def server_step(p: Params, s: ServerState, x, agg):
    prob, eta, theta1, theta2, gamma, beta = s.coef
    g = s.h + agg.fields["Delta"] / agg.participants
    h = s.h + p.alpha * agg.fields["delta"] / agg.n
    y = x - eta * g
    z = beta * s.z + (1.0 - beta) * x + (gamma / eta) * (y - x)
    coin = ClientStreams(p.seed, [0], s.k).uniform("adiana-coin", 1)[0, 0] < prob
    w = s.y if coin else s.w
    x_next = theta1 * z + theta2 * w + (1.0 - theta1 - theta2) * y
    if coin and not np.array_equal(w, s.w):  # w^{k+1} = y^k to every client, then x^{k+1}
        return Query(w, ServerState(s.coef, h, y, z, w, s.k + 1, x_next), len(x) * p.float_bits)
    return ServerState(s.coef, h, y, z, w, s.k + 1), x_next, to_participants(agg, len(x), p.float_bits)


def server_resume(p: Params, s: ServerState, x, agg):
    down = to_participants(agg, len(x), p.float_bits)
    return ServerState(s.coef, s.h, s.y, s.z, s.w, s.k), s.x_next, down
