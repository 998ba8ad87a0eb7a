"""The backends that run a sweep's trials: local, debug, slurm (with its profiles) and ray."""
