"""The SLURM backend: submit the trials as job arrays and exit; SLURM's view for --status.

One launch submits its trials as one job array, or several when there are more trials than
the cluster's MaxArraySize (read from `scontrol show config`). Each array task runs one
TrialJob (`bilma.sweep.job`) under `srun` with the profile's nodes and tasks; on SLURM's
time-limit signal the trainer saves and submitit requeues the task, which resumes from
`ckpt/last.pt`. The parse shards (`bilma.sweep.parse_shards`) go out through `submit_array`
too.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

import submitit

from bilma.fileio import in_threads
from bilma.runs.reading import read_status
from bilma.sweep.backends.base import Backend
from bilma.sweep.backends.profiles import Profile, ProfileError, load_profile, render_sbatch
from bilma.sweep.expand import Grid, Trial
from bilma.sweep.job import TrialJob
from bilma.sweep.pack import TrialPack, pack
from bilma.sweep.plan import Action, Planned, claimed, mark_submitted
from bilma.sweep.retry import RetryPolicy, by_delay, settle_slurm
from bilma.sweep.snapshot import setup_lines

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
    to_run = [p for p in planned if p.action.runs()]
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
        len(pack(arrays[0], profile.trials_per_job)),  # array tasks
    )
    if profile.trials_per_job > 1:
        script += f"\n# {profile.trials_per_job} trials per array task, one after another\n"
    if len(arrays) > 1:
        script += (
            f"\n# ... and {len(arrays) - 1} more array(s): {len(to_run)} trials, "
            f"MaxArraySize {size}\n"
        )
    return script


class SlurmBackend(Backend):
    """`--backend slurm --profile NAME`: job arrays on SLURM; the launch exits once they are
    queued (`status_command` is how it says to follow them)."""

    name = "slurm"
    waits = False  # submits and exits

    def __init__(
        self,
        profile: str = "default",
        submits: bool = True,
        status_command: str | None = None,
        retry_failed: bool | Collection[str] = False,
    ):
        self.profile = profile  # a name in cluster/profiles/, or a file
        self.submits = submits  # False for --status and --dry-run: no sbatch needed
        self.status_command = status_command
        # trial directory -> the job array its job waits on (afterok): `bilma.sweep.chain`
        self.after: dict[Path, str] = {}
        self.retry_failed = retry_failed  # --retry-failed: True, or the causes to rerun

    def check(self, grid: Grid, trials: list[Trial]) -> None:
        """The profile loads (ProfileError names the file and the profiles there are), and
        sbatch is here when the command submits."""
        load_profile(self.profile)
        if self.submits and shutil.which("sbatch") is None:
            raise ProfileError(
                "--backend slurm: sbatch is not on this machine (SLURM is not installed or not "
                "on PATH); run on the cluster's login node, or use --backend local"
            )

    def _mark(self, submitted: tuple[Planned, Any], after: str | None) -> None:
        p, job = submitted
        mark_submitted(p.dir, self.name, str(job.job_id), after=after)

    def submit(self, grid: Grid, planned: list[Planned], parent_run_id: str | None) -> int:
        """Submit the trials to run as job arrays; print the job ids and how to follow them."""
        profile = load_profile(self.profile)
        # Claimed from the state check until marked submitted: a second launch skips them.
        with claimed(planned) as to_run:
            if not to_run:
                print(
                    "nothing new to submit: the other trials are queued or running (see --status)"
                )
                return 0
            ids = []
            # one array per job waited on (bilma.sweep.chain) and per retry backoff (--begin)
            groups: dict[tuple[str | None, int], list[Planned]] = {}
            for delay, group in by_delay(to_run):
                for p in group:
                    groups.setdefault((self.after.get(p.dir.path), delay), []).append(p)
            for (after, delay), group in groups.items():
                for piece in split(group, max_array_size()):
                    jobs = _submit_trials(piece, profile, after, delay)
                    ids.append(str(jobs[0].job_id).split("_")[0])
                    marks = list(zip(piece, jobs, strict=True))
                    # the log path follows from the id; each mark is two fsyncs: in threads
                    # (1,000 trials: ~10 s one after another)
                    in_threads(partial(self._mark, after=after), marks)
                    for p, job in marks:
                        print(f"  {job.job_id}  {p.name}  ({p.dir.trial_id})")
        what = f"{len(ids)} job arrays {', '.join(ids)}"
        if len(ids) == 1:
            what = f"job {ids[0]}" if len(to_run) == 1 else f"job array {ids[0]}"
        print(
            f"submitted {len(to_run)} trials as {what} (profile {profile.name}: "
            f"{profile.tasks} task(s) per trial, at most {profile.array_parallelism} at once "
            "per array"
            + (f", {profile.trials_per_job} trials per job" if profile.trials_per_job > 1 else "")
            + ")"
        )
        status_command = self.status_command or (
            f"python sweeps/launch.py --grid {grid.path} --status"
        )
        print(f"follow: squeue -j {','.join(ids)}   |   {status_command}")
        print(f"logs:   {_folder(to_run).parent}/<job id>/<job id>_0_log.err")
        print(f"cancel: scancel {' '.join(ids)}   (the same launch command later resumes them)")
        return 0

    def status(self, planned: list[Planned]) -> dict[Path, str]:
        """'JOB STATE' of each trial last submitted to SLURM (sacct, squeue)."""
        jobs = _slurm_jobs(planned)
        states = job_states(sorted(set(jobs.values())))
        return {path: f"{job} {states.get(job, 'unknown')}" for path, job in jobs.items()}

    def reconcile(self, planned: list[Planned]) -> None:
        """The cause of each trial whose SLURM job ended (bilma.sweep.retry.settle_slurm): a
        node failure or preemption is retried automatically (the profile's
        max_transient_retries), a time limit or scancel resumes (its trainer may have died of
        the cancellation: SIGTERM reaches every process of the job), an out-of-memory kill or
        a bug fails. A launch records the causes in status.json; --status and --dry-run write
        nothing."""
        ended = [p for p in planned if p.action not in (Action.SKIP_DONE, Action.SKIP_RUNNING)]
        jobs = _slurm_jobs(ended)
        if not jobs:
            return
        states = job_states(sorted(set(jobs.values())))
        policy = RetryPolicy.of(load_profile(self.profile))
        settle_slurm(planned, jobs, states, policy, self.retry_failed, write=self.submits)

    def dry_run(self, planned: list[Planned]) -> str:
        return "\nsbatch script of the array:\n\n" + sbatch_script(planned, self.profile)


def _submit_trials(
    piece: list[Planned], profile: Profile, after: str | None = None, delay_s: int = 0
) -> list[submitit.Job]:
    """One job per trial, or per group of `trials_per_job` (bilma.sweep.pack): the job of
    each trial of `piece`, in its order; `after`: a job they wait on (afterok); `delay_s`: an
    automatic retry's backoff (sbatch --begin)."""
    params = profile.submitit_parameters()
    if after:  # start once every task of `after` succeeded; cancelled at once if one fails
        params["dependency"] = f"afterok:{after}"
        params["additional_parameters"] = {
            **params.get("additional_parameters", {}),
            "kill_on_invalid_dep": "yes",  # else pending forever: DependencyNeverSatisfied
        }
    if delay_s:
        extra = params.setdefault("additional_parameters", {})
        extra["begin"] = f"now+{delay_s}"
    # One thread per CPU the job was given: torch would otherwise use every core of the node.
    params["setup"] = ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}", *params.get("setup", [])]
    # The launch's code snapshot first on the path: every task and requeue imports it.
    params["setup"] += setup_lines(piece[0].dir.path)
    groups = pack(piece, profile.trials_per_job)
    fns = [
        TrialJob(g[0].dir.path) if len(g) == 1 else TrialPack([p.dir.path for p in g])
        for g in groups
    ]
    jobs = submit_array(
        _folder(piece),
        profile,
        _job_name(piece[0].trial.study),
        params,
        fns,
        "the trials are prepared and the same command submits them",
    )
    return [job for job, g in zip(jobs, groups, strict=True) for _ in g]


def submit_array(
    folder: Path,
    profile: Profile,
    job_name: str,
    params: dict[str, Any],
    fns: list[Callable[[], Any]],
    again: str,
) -> list[submitit.Job]:
    """`fns` as one SLURM job array with the submitit `params` (from `profile`), each task
    requeued up to the profile's max_requeues times (time limits, preemptions). An array
    that sbatch refuses is a ProfileError of one line (`again`: what running again does)."""
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues)
    ex.update_parameters(job_name=job_name, **params)
    try:
        with ex.batch():
            jobs = [ex.submit(fn) for fn in fns]
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        # sbatch refused the array (unknown partition or account, limits): one line saying so
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "sbatch: error" in line), lines[0] if lines else ""
        )
        raise ProfileError(
            f"sbatch refused the array with profile {profile.name}: {reason}; fix the profile "
            f"({again})"
        ) from None
    return jobs


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


def array_states(array: str) -> dict[str, str]:
    """SLURM's state of each task of job array `array` ('12_0' -> 'FAILED', ...)."""
    if shutil.which("sacct") is None:
        return {}
    return _query(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", array])


def _slurm_jobs(planned: list[Planned]) -> dict[Path, str]:
    """trial directory -> SLURM job id, for the trials last submitted to SLURM."""
    jobs = {}
    for p in planned:
        status = read_status(p.dir)
        if status.get("backend") == SlurmBackend.name and status.get("job_id"):
            jobs[p.dir.path] = str(status["job_id"])
    return jobs
