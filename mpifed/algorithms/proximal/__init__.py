"""Ball-proximal methods on the tabular problems: the broximal point method BPM (l2, linf and l1 balls) and its
linearisation bpm-lin; :mod:`.balls` holds the balls' norms, projections, LMOs and the server's ball subproblem."""
