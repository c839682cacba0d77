"""One module per method; each exposes Params (frozen, paper symbols, ``from_config(config, fed)``),
client_init, server_init, client_step and server_step (see :mod:`mpifed.algorithms.base`).

Modules are imported on first use, so a method's import cost is paid only by runs that use it.
"""
import importlib
from collections.abc import Mapping

_MODULES = {
    "newton": "newton", "newton-star": "newton_star", "nl1": "nl1", "nl2": "nl2", "cnl": "cnl",
    "fednl": "fednl", "fednl-ls": "fednl_ls", "fednl-pp": "fednl_pp", "fednl-cr": "fednl_cr", "fednl-bc": "fednl_bc",
    "fedpm": "fedpm", "localnewton": "localnewton",
    "gd": "gd", "dcgd": "dcgd", "diana": "diana", "adiana": "adiana",
    "fedavg": "fedavg", "fedavgm": "fedavgm", "fedprox": "fedprox", "scaffold": "scaffold", "fedadam": "fedadam",
}


class _Methods(Mapping):
    """name -> method module, imported lazily; only methods whose module exists are listed."""

    def _available(self):
        from importlib.util import find_spec

        return [k for k, mod in _MODULES.items() if find_spec(f"{__name__}.{mod}") is not None]

    def __getitem__(self, name):
        if name not in _MODULES:
            raise KeyError(name)
        return importlib.import_module(f"{__name__}.{_MODULES[name]}")

    def __iter__(self):
        return iter(self._available())

    def __len__(self):
        return len(self._available())

    def __contains__(self, name):
        return name in self._available()


METHODS = _Methods()


# Neural-network versions (``--model``): mini-batch clients on :mod:`mpifed.nn`.
_NN_MODULES = {"fedavg": "nn_fedavg", "fedavgm": "nn_fedavgm", "fedprox": "nn_fedprox", "scaffold": "nn_scaffold",
               "fedadam": "nn_fedadam", "localnewton": "nn_localnewton", "fedpm": "nn_fedpm",
               "fedrco": "fedrco", "fedrco-ori": "fedrco"}
NN_METHODS = tuple(_NN_MODULES)


def method_for(config):
    """The method module of a run: the neural-network version when ``config.model`` is set."""
    from ..errors import ConfigError

    if config.model is not None:
        if config.algorithm not in _NN_MODULES:
            raise ConfigError(f"--algorithm = {config.algorithm!r} has no neural-network version; valid with "
                              f"--model: {', '.join(NN_METHODS)}")
        return importlib.import_module(f"{__name__}.{_NN_MODULES[config.algorithm]}")
    if config.algorithm not in _MODULES:
        raise ConfigError(f"--algorithm = {config.algorithm!r} trains a neural network; give --model "
                          f"(e.g. --model cnn --dataset mnist)")
    return METHODS[config.algorithm]
