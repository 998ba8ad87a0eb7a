"""The SLURM backend: submit the trials as job arrays and exit; SLURM's view for --status.

One launch submits its trials as one job array, or several when there are more trials than
the cluster's MaxArraySize (read from `scontrol show config`). Each array task runs one
TrialJob (sweeps/job.py) under `srun` with the profile's nodes and tasks; on SLURM's time-limit
signal the trainer saves and submitit requeues the task, which resumes from `ckpt/last.pt`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bilma.runs.reading import read_status
from bilma.sweep.backends.profiles import Profile, ProfileError, load_profile, render_sbatch
from bilma.sweep.expand import Grid
from bilma.sweep.job import TrialJob
from bilma.sweep.launcher import (
    RESUME,
    SKIP_FAILED,
    SUBMIT,
    TO_RUN,
    Planned,
    claimed,
    mark_submitted,
)

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default


def _folder(planned: list[Planned]) -> Path:
    # Every array of a study shares one submitit folder: runs/<study>/slurm/<job id>_<task>...
    return planned[0].dir.path.parent / "slurm" / "%j"


def _job_name(study: str) -> str:
    return f"bilma-{study}"


def max_array_size() -> int:
    """The cluster's MaxArraySize (an array holds at most this many tasks)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def split(items: list[Planned], size: int) -> list[list[Planned]]:
    """Consecutive pieces of at most `size` (one job array each)."""
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def sbatch_script(planned: list[Planned], profile_name: str) -> str:
    """The sbatch file of the first array this launch would submit (for --dry-run)."""
    to_run = [p for p in planned if p.action in TO_RUN]
    if not to_run:
        return "(nothing to submit)"
    profile = load_profile(profile_name)
    command = " ".join(
        [
            shlex.quote(sys.executable),
            "-u -m submitit.core._submit",
            shlex.quote(str(_folder(to_run))),
        ]
    )
    size = max_array_size() if shutil.which("scontrol") else DEFAULT_MAX_ARRAY_SIZE
    arrays = split(to_run, size)
    script = render_sbatch(
        profile.submitit_parameters(),
        command,
        _folder(to_run),
        _job_name(to_run[0].trial.study),
        len(arrays[0]),
    )
    if len(arrays) > 1:
        script += (
            f"\n# ... and {len(arrays) - 1} more array(s): {len(to_run)} trials, "
            f"MaxArraySize {size}\n"
        )
    return script


def _check_cluster() -> None:
    if shutil.which("sbatch") is None:
        raise ProfileError(
            "no SLURM on this machine (sbatch not found); run on a login node, or start a local "
            "cluster with `cluster/dev-slurm.sh start` and use --profile local-slurm"
        )


def submit(
    planned: list[Planned],
    profile_name: str,
    grid: Grid,
    parent: str | None,
    status_command: str | None = None,
) -> int:
    """Submit the trials to run as job arrays; print the job ids and how to follow them."""
    import submitit

    profile = load_profile(profile_name)
    _check_cluster()
    # Claimed from the state check until marked submitted: a second launch skips them.
    with claimed(planned) as to_run:
        if not to_run:
            print("nothing new to submit: the other trials are queued or running (see --status)")
            return 0
        ids = []
        for piece in split(to_run, max_array_size()):
            jobs = _submit_array(piece, profile, grid.study, submitit)
            ids.append(str(jobs[0].job_id).split("_")[0])
            for p, job in zip(piece, jobs, strict=True):
                mark_submitted(p.dir, "slurm", str(job.job_id))  # the log path follows from the id
                print(f"  {job.job_id}  {p.trial.variant} seed={p.trial.seed}  ({p.dir.trial_id})")
    what = f"{len(ids)} job arrays {', '.join(ids)}"
    if len(ids) == 1:
        what = f"job {ids[0]}" if len(to_run) == 1 else f"job array {ids[0]}"
    print(
        f"submitted {len(to_run)} trials as {what} (profile {profile.name}: "
        f"{profile.tasks} task(s) per trial, at most {profile.array_parallelism} at once per array)"
    )
    status_command = status_command or f"python sweeps/launch.py --grid {grid.path} --status"
    print(f"follow: squeue -j {','.join(ids)}   |   {status_command}")
    print(f"logs:   {_folder(to_run).parent}/<job id>/<job id>_0_log.err")
    print(f"cancel: scancel {' '.join(ids)}   (the same launch command later resumes them)")
    return 0


def _submit_array(piece: list[Planned], profile: Profile, study: str, submitit) -> list:
    ex = submitit.SlurmExecutor(folder=_folder(piece), max_num_timeout=profile.max_requeues)
    params = profile.submitit_parameters()
    # One thread per CPU the job was given: torch would otherwise use every core of the node.
    params["setup"] = ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}", *params.get("setup", [])]
    ex.update_parameters(job_name=_job_name(study), **params)
    try:
        with ex.batch():
            jobs = [ex.submit(TrialJob(p.dir.path)) for p in piece]
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        # sbatch refused the array (unknown partition or account, limits): one line saying so
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "sbatch: error" in line), lines[0] if lines else ""
        )
        raise ProfileError(
            f"sbatch refused the array with profile {profile.name}: {reason}; fix the profile "
            "(the trials are prepared and the same command submits them)"
        ) from None
    return jobs


def preflight(profile_name: str) -> Profile:
    """Before anything is prepared: the profile is valid and SLURM answers."""
    profile = load_profile(profile_name)
    _check_cluster()
    return profile


# ----------------------------------------------------------------------------- SLURM's view


def _expand(job_id: str) -> list[str]:
    """'12_[0-2,5%2]' -> ['12_0', '12_1', '12_2', '12_5']; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _query(cmd: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        for one in _expand(job.strip()):
            states[one] = state.strip()
    return states


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job id ('12_3' -> 'RUNNING', 'CANCELLED by 0', 'TIMEOUT', ...):
    accounting (sacct) for every job, the queue (squeue) for the live ones on top of it."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states = {}
    if shutil.which("sacct"):
        states.update(
            _query(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)])
        )
    states.update(_query(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)]))
    return {j: states.get(j, "unknown") for j in job_ids}


def slurm_states(planned: list[Planned]) -> dict[str, str]:
    """trial_id -> SLURM state, for the trials last submitted to SLURM (empty if none)."""
    jobs = {}
    for p in planned:
        status = read_status(p.dir)
        if status.get("backend") == "slurm" and status.get("job_id"):
            jobs[p.dir.trial_id] = str(status["job_id"])
    states = job_states(sorted(set(jobs.values())))
    return {trial: f"{job} {states.get(job, 'unknown')}" for trial, job in jobs.items()}


def reconcile(planned: list[Planned]) -> list[Planned]:
    """A trial whose SLURM job was cancelled (scancel) is interrupted, not failed: its
    trainer may have died of the cancellation (SIGTERM reaches every process of the job), but
    a relaunch should resume it without --retry-failed. Changes the plan only, writes nothing."""
    # One read of each failed trial's status.json: its SLURM job, if it ran on SLURM.
    slurm_jobs: dict[int, str] = {}
    for i, p in enumerate(planned):
        if p.action != SKIP_FAILED:
            continue
        status = read_status(p.dir)
        if status.get("backend") == "slurm" and status.get("job_id"):
            slurm_jobs[i] = str(status["job_id"])
    if not slurm_jobs:
        return planned
    states = job_states(sorted(set(slurm_jobs.values())))
    for i, job in slurm_jobs.items():
        if states.get(job, "").startswith("CANCELLED"):
            p = planned[i]
            p.action = RESUME if p.dir.last_ckpt.exists() else SUBMIT
            p.note = f"SLURM job {job} was cancelled"
    return planned
