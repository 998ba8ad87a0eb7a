"""The sweep scripts of a checkout (`launch.py`, `parse.py`) and the grids (`grids/`).

The code is `bilma.sweep`. `job.py` and `ray_trial.py` here are shims at the old import paths:
SLURM jobs queued before the package was layered hold pickles that name `sweeps.job.TrialJob`,
and a job started from the checkout finds them here (SLURM runs it in the launch's directory).
"""
