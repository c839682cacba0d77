"""The methods, grouped by family: ``second_order/``, ``hessian_free/``, ``approx_newton/``, ``first_order/``,
``proximal/``, ``riemannian/`` (``--problem pca``), ``networks/`` (``--model``), ``lmo/`` (LMO steps with momentum,
on both) and ``inclusion/`` (monotone inclusions, ``--problem saddle``).

Each method is one module exposing ``Params`` (frozen, paper symbols, ``from_options(opts, fed)``), ``client_init``,
``server_init``, ``client_step`` and ``server_step`` (see :mod:`mpifed.algorithms.base`). Modules are imported on
first use, so a method's import cost is paid only by runs that use it.
"""
import importlib
from collections.abc import Mapping

# --algorithm -> module, on the tabular problems (--problem logistic or least-squares)
_MODULES = {
    "newton": "second_order.newton", "newton-star": "second_order.newton_star", "nl1": "second_order.nl1",
    "nl2": "second_order.nl2", "cnl": "second_order.cnl", "fednl": "second_order.fednl",
    "fednl-ls": "second_order.fednl_ls", "fednl-pp": "second_order.fednl_pp", "fednl-cr": "second_order.fednl_cr",
    "fednl-bc": "second_order.fednl_bc", "fedpm": "second_order.fedpm", "localnewton": "second_order.localnewton",
    "gd": "first_order.gd", "dcgd": "first_order.dcgd", "diana": "first_order.diana", "adiana": "first_order.adiana",
    "fedavg": "first_order.fedavg", "fedavgm": "first_order.fedavgm", "fedprox": "first_order.fedprox",
    "scaffold": "first_order.scaffold", "fedadam": "first_order.fedadam",
    "proxgd": "proximal.proxgd", "proxskip": "proximal.proxskip", "sppm": "proximal.sppm",
    "lcd1": "first_order.lcd", "lcd2": "first_order.lcd", "lcd3": "first_order.lcd",
    "bpm": "proximal.bpm", "bpm-lin": "proximal.bpm_lin",
    "rgd": "riemannian.rgd", "r-lsvrg": "riemannian.r_lsvrg", "r-page": "riemannian.r_page",
    "r-marina": "riemannian.r_marina",
    "newton-cg": "hessian_free.newton_cg", "disco": "hessian_free.disco", "lbfgs": "hessian_free.lbfgs",
    "lmo-momentum": "lmo.momentum", "lmo-hcm": "lmo.hcm",
    "sppm-vi": "inclusion.sppm_vi", "sppm-vi-vr": "inclusion.sppm_vi_vr", "extragradient": "inclusion.extragradient",
    "dane": "approx_newton.dane", "giant": "approx_newton.giant", "fedsophia": "approx_newton.fedsophia",
    "fedcurv": "first_order.fedcurv",
}
# the methods on the unit sphere (--problem pca), and the only ones it takes
RIEMANNIAN_METHODS = tuple(name for name, module in _MODULES.items() if module.startswith("riemannian."))
# the methods that take the composite term lam1 ||x||_1 (--l1 > 0): a prox step at the server
L1_METHODS = ("proxgd", "proxskip", "sppm", "fedavg", "dcgd", "diana")
# --algorithm -> module, with --model (mini-batch clients on mpifed.problems.nn)
_NN_MODULES = {
    "fedavg": "networks.fedavg", "fedavgm": "networks.fedavgm", "fedprox": "networks.fedprox",
    "scaffold": "networks.scaffold", "fedadam": "networks.fedadam", "localnewton": "networks.localnewton",
    "fedpm": "networks.fedpm", "fedrco": "networks.fedrco", "fedrco-ori": "networks.fedrco",
    "lmo-momentum": "lmo.momentum", "lmo-hcm": "lmo.hcm",
    "fedcurv": "networks.fedcurv", "fedsophia": "networks.fedsophia",
}
NN_METHODS = tuple(_NN_MODULES)


class _Methods(Mapping):
    """name -> method module, imported lazily."""

    def __init__(self, modules: dict):
        self._modules = modules

    def __getitem__(self, name):
        return importlib.import_module(f"{__name__}.{self._modules[name]}")

    def __iter__(self):
        return iter(self._modules)

    def __len__(self):
        return len(self._modules)


METHODS = _Methods(_MODULES)        # logistic regression
NN_MODULES = _Methods(_NN_MODULES)  # neural networks


def method_for(algorithm: str, network: bool):
    """The module of ``algorithm``: its neural-network version when ``network`` (a run with ``--model``)."""
    from ..errors import ConfigError

    if network:
        if algorithm not in _NN_MODULES:
            raise ConfigError(f"--algorithm = {algorithm!r} has no neural-network version; valid with "
                              f"--model: {', '.join(NN_METHODS)}")
        return NN_MODULES[algorithm]
    if algorithm not in _MODULES:
        raise ConfigError(f"--algorithm = {algorithm!r} trains a neural network; give --model "
                          f"(e.g. --model cnn --dataset mnist)")
    return METHODS[algorithm]
