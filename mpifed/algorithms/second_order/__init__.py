"""Second-order methods on the logistic problem: Newton, NEWTON-STAR, Newton-Learn (NL1, NL2, CNL), FedNL and
its LS / PP / CR / BC variants, FedPM and LocalNewton."""
