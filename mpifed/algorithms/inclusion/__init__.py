"""Methods for monotone inclusions 0 in A(z) = (1/n) sum_i A_i(z) (``--problem saddle``): the stochastic proximal
point method with one client's resolvent per round (``sppm-vi``), its loopless variance-reduced variant
(``sppm-vi-vr``), and the federated extragradient baseline (``extragradient``)."""
