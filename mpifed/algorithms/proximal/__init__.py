"""Methods for the composite problem P(x) = (1/n) sum_i f_i(x) + lam1 ||x||_1 (``--l1``): proximal GD, ProxSkip
(Scaffnew), SPPM with arbitrary cohort sampling, their cohort samplings, and the proximal-Newton reference solve."""
