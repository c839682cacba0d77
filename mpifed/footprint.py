"""Whether a method's d x d state fits in this machine's memory: checked on every rank before round 0.

The Hessian-based methods keep packed d(d+1)/2 matrices (T = d(d+1)/2 floats of 8 bytes) per client, per rank
(block sums, a chunk of client Hessians) or full d x d ones on the server (the unpacked matrix and its factor);
at d = 10^5 one packed matrix is 40 GB. A run whose state cannot fit stops here with one line naming the state
and the machine's memory, instead of failing hours later in an allocation (or swapping). The Hessian-free
methods (newton-cg, disco, lbfgs) keep O(d) state and are never refused; neither is GD above its GRAM_MAX_D,
whose L is then computed without the Gram matrices. Methods that keep a few d-vectors per client (the (clients x d)
arrays of VECTORS) are refused the same way when those cannot fit.
"""
from __future__ import annotations

import os

from . import tri
from .algorithms.first_order.gd import GRAM_MAX_D
from .errors import ConfigError

# --algorithm -> (packed matrices per client, packed per rank, d x d on the server, what they are)
_NEWTON_LIKE = (0, 3, 2, "a chunk of packed d(d+1)/2 Hessians and their sums per rank and 2 d x d matrices on the server")
_LEARNED = (1, 3, 2, "a packed d(d+1)/2 learned Hessian per client, chunk sums per rank and 2 d x d matrices on the server")
_GRAM = (1, 1, 1, "a packed d(d+1)/2 Gram matrix per client at setup (for the smoothness constant L)")
STATE = {
    "newton": _NEWTON_LIKE, "newton-star": _NEWTON_LIKE, "nl1": _NEWTON_LIKE, "nl2": _NEWTON_LIKE,
    "cnl": _NEWTON_LIKE, "fedpm": _NEWTON_LIKE,
    "localnewton": (2, 1, 2, "a packed d(d+1)/2 and a full d x d local Hessian per client"),
    "fednl": _LEARNED, "fednl-ls": _LEARNED, "fednl-pp": _LEARNED, "fednl-cr": _LEARNED, "fednl-bc": _LEARNED,
    "gd": _GRAM, "dcgd": _GRAM, "diana": _GRAM, "adiana": _GRAM, "fedavg": _GRAM, "fedavgm": _GRAM,
    "fedprox": _GRAM, "scaffold": _GRAM, "fedadam": _GRAM,
}
# --algorithm -> (d-vectors per client held at once, at least; what they are)
VECTORS = {
    "fedsophia": (4, "(clients x d) arrays of gradients, diagonal estimates, probes and local iterates"),
    "fedcurv": (4, "(clients x d) Fisher diagonals, their products with the iterate, gradients and local iterates"),
    "lmo-momentum": (3, "(clients x d) gradients, momenta and Hessian-vector products"),
    "lmo-hcm": (3, "(clients x d) gradients, momenta and Hessian-vector products"),
}
MATRIX_FREE_ABOVE = {"gd": GRAM_MAX_D}  # above it GD keeps no Gram matrices (L is computed matrix-free)
REFERENCE = "newton"  # the reference solve for x* (--reference-iterations > 0)


def machine_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def state_bytes(algorithm: str, d: int, clients: int, root: bool) -> int:
    """Bytes of ``algorithm``'s matrix state on a rank hosting ``clients`` clients (the server's on the root)."""
    if d > MATRIX_FREE_ABOVE.get(algorithm, d):
        return 0
    per_client, per_rank, square, _ = STATE.get(algorithm, (0, 0, 0, ""))
    vectors = VECTORS.get(algorithm, (0, ""))[0]
    return 8 * (tri.size(d) * (per_client * clients + per_rank) + (square * d * d if root else 0) + vectors * d * clients)


def check(algorithm: str, d: int, clients: int, root: bool, reference: bool, available: int | None = None) -> None:
    """A one-line ConfigError when the method's (or the reference solve's) d x d state exceeds the memory."""
    available = machine_bytes() if available is None else available
    for name, what in ((algorithm, algorithm), *(((REFERENCE, "the reference solve for x* (Newton)"),) if reference else ())):
        need = state_bytes(name, d, clients, root)
        if need > available:
            hint = "; give --reference-iterations 0" if name is REFERENCE and what != algorithm else (
                "; the Hessian-free methods (newton-cg, disco, lbfgs) keep O(d)")
            state = STATE[name][3] if name in STATE else f"{VECTORS[name][0]} {VECTORS[name][1]}"
            raise ConfigError(f"{what} keeps {state}: {need / 1e9:.0f} GB for d = {d} and {clients} "
                              f"clients on this rank; this machine has {available / 1e9:.0f} GB{hint}")
