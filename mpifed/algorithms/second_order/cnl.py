"""CNL, CUBIC-NEWTON-LEARN (Islamov, Qian, Richtarik, ICML 2021, Sec. 1.4 and Appendix F, Algorithm 3).

NL2's learned Hessian globalized by the cubic regularization of Nesterov & Polyak (2006)::

    x^{k+1} = argmin_y  <grad P(x^k), y - x^k> + (1/2) <(H^k + lam I)(y - x^k), y - x^k>
                        + (H_* / 6) ||y - x^k||^3,
    H^k = beta^k A^k - 2 gamma G                                        (NL2, Algorithm 2)

where H_* is a Lipschitz constant of grad^2 P. Everything else (clients' learning step (20),
beta_i^k, A^k's rank-one updates, bits) is NL2's (:mod:`.nl2`). The rules are not taken
from Appendix F: this module follows Sec. 1.4 (cubic regularization of the
NEWTON-LEARN step), Sec. 4 (CNL uses the compressor C_p: random-r sparsification sent with
probability p, p = 1/20 and r = 1 in the experiments, mpifed's default) and the authors'
public numpy code for the paper (class ``CNL_Bernoulli``: NL2's beta/A learning, eta = r p / m,
a model term M/6 ||s||^3 with M = nu R^3), which fixes the details the text leaves open;
where that code departs from Algorithm 2 (see :mod:`.nl2`), mpifed follows Algorithm 2.

H_* (``hessian_lipschitz``) defaults to nu R^3 with nu = sup ``|phi'''|`` = 1/(6 sqrt 3) for
the logistic loss and R = max_ij ||a_ij||: by (6), ||grad^2 P(x) - grad^2 P(y)|| <=
nu R^3 ||x - y||. Computing R costs each client one float at setup (counted).

The cubic model is minimised by FedNL-CR's solver (:func:`mpifed.algorithms.second_order.fednl_cr.cubic_step`:
the secular equation of Nesterov & Polyak 2006, hard case included).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import ConfigError
from ...problems.logistic import PHI_THIRD_MAX
from . import nl1, nl2
from ..base import Aggregate
from .fednl_cr import cubic_step



@dataclass(frozen=True)
class Params:
    """r, p: the compressor C_p; eta: learning rate (None: r p / m_i); gamma: NL2's bound on
    ``|h_ij^k|``; H_star: Lipschitz constant of grad^2 P (None: nu R^3, computed at setup)."""

    r: int = 1
    p: float = 0.05
    eta: float | None = None
    gamma: float = 0.25
    lam: float = 1e-3
    H_star: float | None = None
    float_bits: int = 32
    nu: float = PHI_THIRD_MAX  # sup |l^(3)| of the row loss
    uses = ("compressor", "eta", "gamma", "hessian_lipschitz")

    @classmethod
    def from_options(cls, opts, fed) -> "Params":
        r, p = nl1.parse_compressor(opts.compressor, fed, default="randk:k=1,p=0.05")
        gamma = opts.gamma if opts.gamma is not None else fed.block.curvature_bound
        if opts.hessian_lipschitz is None and fed.block.third_derivative_bound == 0:
            raise ConfigError(f"cnl on --problem {fed.block.name}: the Hessian is constant, so nu R^3 = 0 and the cubic "
                              f"term vanishes; give --hessian-lipschitz > 0")
        return cls(r, p, opts.eta, gamma, opts.lam, opts.hessian_lipschitz, opts.float_bits,
                   fed.block.third_derivative_bound)


@dataclass(frozen=True)
class ServerState:
    learned: nl2.ServerState
    H_star: float


def client_init(p: Params, block, x0, streams):
    """NL2's setup, plus max_j ||a_ij|| (one float) when H_* is to be computed."""
    if p.H_star is not None:
        return nl2.client_init(p, block, x0, streams)
    state, up = nl2.client_init(p, block, x0, streams, extra={"R": nl1.client_max(block, block.row_norms())})
    return state, dataclasses.replace(up, value_bits=up.value_bits + p.float_bits)


def server_init(p: Params, agg: Aggregate, x0):
    H_star = p.H_star if p.H_star is not None else p.nu * float(agg.gathered["R"].max()) ** 3
    if H_star <= 0:
        raise ConfigError("the data are all zero, so nu R^3 = 0; give --hessian-lipschitz > 0")
    return ServerState(nl2.server_init(p, agg, x0), H_star)


client_step = nl2.client_step


def server_step(p: Params, state: ServerState, x, agg: Aggregate):
    d = len(x)
    s = cubic_step(nl2.step_matrix(p, state.learned, agg), agg.grad / agg.n, state.H_star)
    return ServerState(nl2.learned(state.learned, agg, d), state.H_star), x + s, d * p.float_bits
