"""Proximal methods on the tabular problems: for the composite problem P(x) = (1/n) sum_i f_i(x) + lam1 ||x||_1
(``--l1``) proximal GD, ProxSkip (Scaffnew), SPPM with arbitrary cohort sampling (:mod:`.sampling`) and the
proximal-Newton reference solve; the ball-proximal methods, the broximal point method BPM (l2, linf and l1 balls) and
its linearisation bpm-lin, with :mod:`.balls` holding the balls' norms, projections, LMOs and the server's ball
subproblem."""
