"""Reading traces back: ``mpifed info`` (:mod:`.report`), figures and CSV (:mod:`.plots`)."""
