"""FedNL's ``adaptive_regularization``: a Levenberg-Marquardt rule for an extra shift sigma^k of Option 2.

The server steps with M = H + (l^k + sigma^k) I (H: the learned Hessian of the step, full or diagonal;
l^k: Option 2's mean of the clients' l_i). The quadratic model's predicted decrease and the actual
decrease of P, which needs P at the trial point (one extra exchange: x^k + s down, f_i(x^k + s) up),

    s = -M^{-1} grad P(x^k),   pred = -(<grad P(x^k), s> + s^T H s / 2) > 0,   rho = (P(x^k) - P(x^k + s)) / pred,

set the next shift by the trust-region update of Nocedal and Wright (Numerical Optimization, 2nd ed.,
Alg. 4.1) read for the Levenberg-Marquardt parameter, which acts as an inverse radius (Sec. 10.3; Moré,
"The Levenberg-Marquardt algorithm: implementation and theory", 1978):

    rho <  1/4:  reject the step (x^{k+1} = x^k), sigma <- min(max(2 sigma, sigma_min), SIGMA_MAX)
    rho >  3/4:  accept, sigma <- sigma/2, or 0 once that falls below sigma_min
    otherwise:   accept, sigma unchanged.

sigma^0 = 0, so while every step earns rho > 3/4 the run is FedNL's Option 2. sigma_min = lam (the
curvature scale the paper's Option 1 projects onto; 1e-8 when lam = 0) is where a doubling from 0 starts.
The model omits the shift, as LM's does (Moré, eq. 2.3). A NaN trial value is a rejection. The learned
Hessians are updated in every round, rejected or not (the clients already have), and a rejected round
starts the next at the same x^k.

Safeguard (FedNL-LS's, :data:`mpifed.algorithms.second_order.fednl_ls.RESOLUTION`): when pred <=
2^-40 |P(x^k)| the computed P cannot resolve rho, so the step is taken untested with sigma unchanged and
no extra exchange (the trace's ``lm_tested`` column is 0 there).

Bits per tested round: the trial point, d floats down, and one float f_i(x^k + s) up; the next round's
x^{k+1} costs nothing down, the clients holding both candidates (as FedNL-LS counts its accepted trial).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..base import Aggregate, Query, Uplink, bits_for

SIGMA_MAX = 1e10  # the step is then a gradient step of length ~ ||g|| / 1e10: far below anything useful
RESOLUTION = 2.0**-40  # as FedNL-LS: below this relative decrease, rounding of P decides rho


def sigma_min(lam: float) -> float:
    return lam if lam > 0 else 1e-8


@dataclass(frozen=True)
class Trial:
    """A proposed step s from x^k awaiting P(x^k + s)."""

    server: object  # the next server state, with sigma still to be set
    step: np.ndarray
    f0: float
    pred: float
    sigma: float


def model_decrease(H, g, s) -> float:
    """pred = -(<g, s> + s^T H s / 2), H dense (d, d) or diagonal (d,)."""
    Hs = H * s if H.ndim == 1 else H @ s
    return -float(g @ s + 0.5 * (s @ Hs))


def propose(server, x, s, H, g, f0: float, sigma: float, float_bits: int):
    """Query P(x + s), or (server, x + s, down bits) when pred is below P's resolution (untested)."""
    pred = model_decrease(H, g, s)
    if pred <= RESOLUTION * abs(f0):
        server = dataclasses.replace(server, sigma=sigma, report={**server.report, "lm_sigma": sigma,
                                                                  "lm_rho": float("nan"), "lm_tested": 0.0,
                                                                  "lm_accepted": 1.0})
        return server, x + s, len(x) * float_bits
    return Query(x + s, Trial(server, s, f0, pred, sigma), len(x) * float_bits)


def client_query(p, block, state, point, streams):
    """f_i(x^k + s): one float per client."""
    values, index = bits_for(block.n, 1, p.float_bits)
    return state, Uplink(block.loss(point), None, values, index)


def resume(trial: Trial, x, agg: Aggregate, floor: float):
    """The ratio test with sigma_min = ``floor``: (server with the next sigma, x^{k+1}, no further down bits)."""
    rho = (trial.f0 - agg.loss / agg.n) / trial.pred
    sigma = trial.sigma
    accepted = bool(rho >= 0.25)  # NaN: rejected
    if not accepted:
        sigma = min(max(2.0 * sigma, floor), SIGMA_MAX)
    elif rho > 0.75:
        sigma = sigma / 2 if sigma / 2 >= floor else 0.0
    report = {**trial.server.report, "lm_sigma": trial.sigma, "lm_rho": float(rho), "lm_tested": 1.0,
              "lm_accepted": float(accepted)}
    server = dataclasses.replace(trial.server, sigma=sigma, report=report)
    return server, (x + trial.step if accepted else x), 0.0
