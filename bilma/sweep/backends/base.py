"""The one interface of the backends that run a sweep's trials (in the spirit of submitit's
`core.Executor`: peers behind one interface, each built from the options it needs).

The launcher (`bilma.sweep.cli`) plans the trials from their directories, then, whatever the
backend:

    backend.check(grid, trials)      # before anything is written: may raise a BilmaError
    parent = prepare(grid, planned)  # data, MLflow parent run, trial folders, launch.json
    code = backend.submit(grid, planned, parent)
    if backend.waits: finish_parent(...), the study's table

`status` and `reconcile` are asked of the backend that ran a trial (status.json's
"backend"), whichever backend the command names: SLURM's view of a SLURM sweep's jobs is
shown by any `--status`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from bilma.sweep.expand import Grid, Trial
from bilma.sweep.plan import Planned


@runtime_checkable
class Backend(Protocol):
    """Runs (or submits) a launch's trials. Subclass it to inherit the defaults."""

    name: str  # the --backend name, and status.json's "backend" of the trials it submits
    # Whether `submit` returns once the trials have ended (the launcher then closes the MLflow
    # parent run and prints the study's table), or once they are queued (SLURM).
    waits: bool = True
    # Whether its trials' jobs import the launch's code snapshot (`bilma.sweep.snapshot`);
    # False for one that runs them in the launcher's own process.
    snapshots: bool = True

    def check(self, grid: Grid, trials: list[Trial]) -> None:
        """Raise a `bilma.errors.BilmaError` for whatever would refuse the launch (no SLURM,
        a bad profile, a search the backend cannot run), before anything is written."""
        ...

    def submit(self, grid: Grid, planned: list[Planned], parent_run_id: str | None) -> int:
        """Run or submit the planned trials that are to run (`Action.runs()`), each under its
        claim (`bilma.sweep.plan.claimed`); the launch's exit code."""
        ...

    def status(self, planned: list[Planned]) -> dict[Path, str]:
        """The backend's own view of the job of each trial it ran, by trial directory (e.g.
        '12_3 COMPLETED' from SLURM's accounting); {} when it has none beyond the directory."""
        return {}

    def reconcile(self, planned: list[Planned]) -> None:
        """Correct the plan with what the backend knows of its trials' jobs (SLURM: a
        cancelled job resumes rather than counting as failed); writes nothing."""

    def dry_run(self, planned: list[Planned]) -> str:
        """What --dry-run shows beyond the plan (e.g. the sbatch script); "" for nothing."""
        return ""
