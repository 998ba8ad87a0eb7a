"""The SLURM backend: one job array per launch, bounded by the profile's array parallelism."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from cluster.profiles import load_profile
from sweeps.grid import Grid
from sweeps.job import TrialJob
from sweeps.launcher import TO_RUN, Planned, claimed, mark_submitted


def _folder(planned: list[Planned]) -> Path:
    # Array jobs share one submitit folder: runs/<study>/slurm/<array job id>/
    return planned[0].dir.path.parent / "slurm" / "%j"


def sbatch_script(planned: list[Planned], profile_name: str) -> str:
    """The sbatch file submitit would submit for this launch (for --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    to_run = [p for p in planned if p.action in TO_RUN]
    if not to_run:
        return "(nothing to submit)"
    params = load_profile(profile_name).submitit_parameters()
    command = " ".join(
        [
            shlex.quote(sys.executable),
            "-u -m submitit.core._submit",
            shlex.quote(str(_folder(to_run))),
        ]
    )
    return _make_sbatch_string(
        command=command,
        folder=_folder(to_run),
        job_name=f"bilma-{to_run[0].trial.study}",
        map_count=len(to_run) if len(to_run) > 1 else None,
        **params,
    )


def submit(planned: list[Planned], profile_name: str, grid: Grid, parent: str | None) -> int:
    """Submit the trials to run as one array; print the job ids and how to follow them."""
    import submitit

    profile = load_profile(profile_name)
    # Claimed from the state check until marked submitted: a second launch skips them.
    with claimed(planned) as to_run:
        if not to_run:
            print("nothing to submit: another launch started these trials meanwhile")
            return 0
        ex = submitit.SlurmExecutor(folder=_folder(to_run), max_num_timeout=30)
        ex.update_parameters(job_name=f"bilma-{grid.study}", **profile.submitit_parameters())
        with ex.batch():
            jobs = [ex.submit(TrialJob(p.dir.path)) for p in to_run]
        for p, job in zip(to_run, jobs, strict=True):
            mark_submitted(p.dir, "slurm", str(job.job_id))
            p.dir.set_status("pending", log=str(job.paths.stderr))
            print(f"  {job.job_id}  {p.trial.variant} seed={p.trial.seed}  ({p.dir.trial_id})")
    array = str(jobs[0].job_id).split("_")[0]
    print(f"submitted {len(jobs)} trials as job array {array} (profile {profile.name})")
    print(f"follow: squeue -j {array}   |   python sweeps/launch.py --grid {grid.path} --status")
    print(f"logs:   {jobs[0].paths.stderr.parent}")
    return 0
