"""LMO methods: the server keeps a momentum m and steps x+ = x + t LMO(m) over a norm ball (``lmo-momentum``,
``lmo-hcm`` with a Hessian-corrected momentum), on the logistic problem and on the ``--model`` networks."""
