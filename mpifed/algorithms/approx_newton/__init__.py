"""Approximate-Newton methods whose clients solve local Newton systems by conjugate gradients on Hessian-vector
products (DANE, GIANT) and the diagonal-Newton variant of Fed-Sophia; :mod:`.cg` is their batched local solver and
:mod:`.linesearch` GIANT's one-exchange Armijo search."""
