"""One module per method; each exposes Params (frozen, paper symbols), client_init,
server_init, client_step and server_step (see :mod:`mpifed.algorithms.base`)."""
from . import fednl, gd, newton

METHODS = {"newton": newton, "fednl": fednl, "gd": gd}
