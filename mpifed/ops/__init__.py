"""Running many runs: comparison plans (:mod:`.compare`), SLURM sweeps (:mod:`.sweep`), benchmarks (:mod:`.bench`)."""
