"""Sweeps: grid files, expansion into trials, planning, following, and the backends that run
them (local, debug, SLURM, Ray Tune) behind one protocol (`bilma.sweep.backends.base`)."""
