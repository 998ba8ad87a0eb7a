"""What a launch does with each trial, decided from its directory alone.

The trial directory is the truth. Before anything is submitted, each trial is classified from
its directory: done (result.json) or stopped early, running (its process or SLURM job is
alive), interrupted or half-trained (resumes from ckpt/last.pt), failed (re-run only with
--retry-failed) or new. Relaunching the same command therefore submits only what is missing,
and a trial never runs twice at once: a launcher re-reads a trial's state under the trial's
claim before submitting it (`claimed`), so two launchers started together submit each trial
once, and the trainer itself holds the trial's lock while it trains (`bilma.runs.lock`). A
trial whose status.json cannot be read is reported as such and left alone; the others go on.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from bilma.config import canonical, differences, flatten
from bilma.config.yamlfile import safe_load_unique
from bilma.errors import ChangedTrials
from bilma.fileio import pid_alive  # noqa: F401  (the local backend's too)
from bilma.runs.causes import wants_retry
from bilma.runs.launch import read_launch
from bilma.runs.lock import claim, holder, is_locked, lock_path
from bilma.runs.reading import UNREADABLE, read_result, read_status
from bilma.runs.reuse import moved_data_root
from bilma.runs.schema import STATUS_AFTER_JOB, TrialState
from bilma.runs.trial_dir import TrialConflictError, TrialDir
from bilma.sweep.expand import Trial


class Action(str, Enum):
    """What a launch does with one trial (a str: `Action.SUBMIT == "submit"`)."""

    SUBMIT = "submit"  # new: start it
    RESUME = "resume"  # interrupted or half-trained: start it, it resumes from ckpt/last.pt
    RETRY = "retry"  # failed, and --retry-failed
    SKIP_DONE = "done"  # result.json, or stopped early on purpose: never run again
    SKIP_RUNNING = "running"  # its trainer or job is alive: follow it
    SKIP_FAILED = "failed"  # failed: left alone without --retry-failed
    SKIP_UNREADABLE = UNREADABLE  # its status.json or result.json cannot be read
    # Another study holds the same trial id (bilma.sweep.reuse): done there, so recorded here
    # without training; or running there now, so not started a second time.
    REUSE = "reuse"
    SKIP_ELSEWHERE = "running in another study"

    def __str__(self) -> str:
        return self.value

    def runs(self) -> bool:
        """Whether the launch starts the trial (submit, resume, retry)."""
        return self in (Action.SUBMIT, Action.RESUME, Action.RETRY)


@dataclass
class Planned:
    """One trial of a launch, its directory and what the launch does with it."""

    trial: Trial
    dir: TrialDir
    action: Action
    note: str = ""
    backend: str | None = None  # the backend that submitted it last (status.json), if any
    source: TrialDir | None = None  # REUSE, SKIP_ELSEWHERE: the other study's directory

    def __post_init__(self) -> None:
        self.action = Action(self.action)

    @property
    def name(self) -> str:
        """How progress lines name the trial: 'VARIANT seed=N'."""
        return f"{self.trial.variant} seed={self.trial.seed}"


def trial_dir(trial: Trial) -> TrialDir:
    """`TrialDir.for_config` with the id the expansion computed (hashing every config
    again cost a 1,000-trial `--status` half a second)."""
    cfg = trial.config
    return TrialDir(Path(cfg.paths.runs) / cfg.tracking.study / trial.trial_id)


# ----------------------------------------------------------------------------- liveness


def _slurm_alive(job_id: str) -> bool:
    if not shutil.which("squeue"):
        return False
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def is_alive(status: dict[str, Any]) -> bool:
    """Whether the process or job recorded in a trial's status still runs."""
    job = status.get("job_id")
    if status.get("backend") == "slurm" and job:
        return _slurm_alive(str(job))
    if status.get("host") not in (None, socket.gethostname()):
        return False  # another machine's process: unknown, treated as gone
    pids = [status.get("pid"), status.get("job_pid")]
    return any(isinstance(p, int) and pid_alive(p) for p in pids)


def is_running(d: TrialDir, status: dict[str, Any]) -> bool:
    """Whether the trial's trainer (or its job, before the trainer starts) is alive, given its
    status.json as the caller last read it."""
    # The recorded process first, and the lock probed only if the lock file is there: a probe
    # opens a file, a pid check and a stat do not (the follow loop asks this of many trials).
    return is_alive(status) or (lock_path(d.path).exists() and is_locked(d.path))


# ----------------------------------------------------------------------------- planning


def classify(
    d: TrialDir, retry_failed: bool | Collection[str], status: dict[str, Any] | None = None
) -> tuple[Action, str]:
    """(action, note) for one trial directory; `status`: its status.json as the caller has
    just read it (read here if not given)."""
    result, problem = read_result(d)
    if problem:
        return Action.SKIP_UNREADABLE, problem
    if result is not None:
        return Action.SKIP_DONE, ""
    status = read_status(d) if status is None else status
    if status.get("state") == UNREADABLE:
        return Action.SKIP_UNREADABLE, status["error"]
    state = TrialState.parse(status.get("state"))
    if state is TrialState.STOPPED:  # stopped early (ASHA): finished, never rerun
        return Action.SKIP_DONE, f"stopped early at epoch {status.get('stopped_epoch', '?')}"
    if is_locked(d.path):  # its trainer runs now, on this machine or (NFS) another one
        return Action.SKIP_RUNNING, holder(d.path)
    if state in (TrialState.RUNNING, TrialState.PENDING) and is_alive(status):
        return Action.SKIP_RUNNING, f"pid {status.get('pid') or status.get('job_pid')}"
    if state is TrialState.FAILED:
        if wants_retry(status, retry_failed):  # --retry-failed, all or of the causes named
            return Action.RETRY, status.get("error", "")
        return Action.SKIP_FAILED, status.get("error", "")
    if d.last_ckpt.exists():
        return Action.RESUME, f"from epoch {_ckpt_epoch(d)}"
    return Action.SUBMIT, ""


def _ckpt_epoch(d: TrialDir) -> str:
    recs = [r for r in d.read_metrics() if r.get("split") == "train"]
    return str(recs[-1]["epoch"]) if recs else "?"


def plan(trials: list[Trial], retry_failed: bool | Collection[str] = False) -> list[Planned]:
    out = []
    for t in trials:
        d = trial_dir(t)
        status = read_status(d)  # once: for the action and for the backend that ran it
        action, note = classify(d, retry_failed, status)
        out.append(Planned(t, d, action, note, status.get("backend")))
    return out


def summary(planned: list[Planned]) -> str:
    c = Counter(p.action for p in planned)
    started = c[Action.SUBMIT] + c[Action.RETRY]
    parts = [
        f"{c[Action.SKIP_DONE]} done (skipped)",
        f"{c[Action.SKIP_RUNNING]} already running",
        f"{c[Action.RESUME]} to resume",
        f"{started} to start" + (f" ({c[Action.RETRY]} retried)" if c[Action.RETRY] else ""),
    ]
    if c[Action.SKIP_FAILED]:
        parts.append(f"{c[Action.SKIP_FAILED]} failed (use --retry-failed)")
    if c[Action.SKIP_UNREADABLE]:
        parts.append(f"{c[Action.SKIP_UNREADABLE]} unreadable (left alone)")
    return ", ".join(parts + reuse_summary(planned))


def data_root_warnings(planned: list[Planned]) -> list[str]:
    """One line per (recorded, current) pair of data roots that differ: data.root is not part
    of the trial id, so such a trial's result and checkpoint come from the recorded root."""
    moved: dict[tuple[str, str], list[Planned]] = {}
    for p in planned:
        if not (p.dir.result_path.exists() or p.dir.last_ckpt.exists()):
            continue  # nothing computed on the old root: the trial simply runs on the new one
        old = moved_data_root(p.dir.config_path, p.trial.config)
        if old is not None:
            moved.setdefault((old, p.trial.config.data.root), []).append(p)
    return [
        f"{len(ps)} trial(s) were run on data.root={old}, not {new} (e.g. {ps[0].dir.path}): "
        f"their results and checkpoints come from {old}; data.root is not part of the trial "
        "id, so use another paths.runs or study to train on the new root"
        for (old, new), ps in moved.items()
    ]


@dataclass
class Changed:
    """A trial of the plan not started yet, and a finished trial of the same study, variant
    and seed that was trained with other values (`keys`: (key, then, now))."""

    planned: Planned
    old: TrialDir
    keys: list[tuple[str, Any, Any]]


def changed_trials(planned: list[Planned]) -> list[Changed]:
    """The plan's new trials that a finished trial already answers with other values.

    Trial ids hash every key, so a default changed in the code (or a value edited in the grid)
    gives every trial a new folder: relaunching would rerun the study, and the tables would
    then hold two results per (variant, seed). The launch names the differences instead and
    lets the user choose (`resolve_changed`)."""
    new = [p for p in planned if p.action is Action.SUBMIT]
    if not new:
        return []
    planned_paths = {p.dir.path for p in planned}
    finished: dict[tuple[Any, str, Any], list[TrialDir]] = {}
    for study in sorted({p.dir.path.parent for p in new}):
        if not study.is_dir():
            continue
        for path in sorted(study.iterdir()):
            d = TrialDir(path)
            if path in planned_paths or not d.result_path.is_file():
                continue
            launch = read_launch(path)
            finished.setdefault((study, launch.variant, launch.seed), []).append(d)
    out = []
    for p in new:
        for old in finished.get((p.dir.path.parent, p.trial.variant, p.trial.seed), []):
            try:
                tree = safe_load_unique(old.config_path.read_text())
            except (OSError, ValueError, yaml.YAMLError):
                continue  # a config.yaml this code cannot read: nothing to compare
            if not isinstance(tree, dict):
                continue
            if keys := differences(flatten(tree), p.trial.config):
                out.append(Changed(p, old, keys))
    return out


def changed_lines(changed: list[Changed], most: int = 6) -> list[str]:
    """One line per set of differences: how many trials, which, and each key then and now."""
    groups: dict[str, list[Changed]] = {}
    for c in changed:
        what = "; ".join(f"{k} was {then!r}, now {now!r}" for k, then, now in c.keys[:most])
        if len(c.keys) > most:
            what += f"; and {len(c.keys) - most} more keys"
        groups.setdefault(what, []).append(c)
    lines = []
    for what, cs in groups.items():
        names = ", ".join(f"{c.planned.name} ({c.old.path.name})" for c in cs[:3])
        more = f" and {len(cs) - 3} more" if len(cs) > 3 else ""
        n = f"{len(cs)} finished trial{'s' if len(cs) != 1 else ''}"
        lines.append(f"{n}: {names}{more}: {what}")
    return lines


def resolve_changed(changed: list[Changed], choice: str | None) -> None:
    """Apply the user's choice for `changed`: 'keep' skips the plan's trials (the finished
    ones stand in the tables), 'rerun' trains them (both stay, the tables name the keys that
    differ); no choice raises ChangedTrials listing them."""
    if not changed:
        return
    if choice == "keep":
        for c in changed:
            c.planned.action = Action.SKIP_DONE
            c.planned.note = f"kept {c.old.path} (--keep-changed)"
        return
    if choice == "rerun":
        return
    study = changed[0].planned.dir.path.parent
    raise ChangedTrials(
        f"{len(changed)} finished trial(s) in {study} were trained with other values than "
        "this plan (a default changed in the code, or a value edited in the grid):\n  "
        + "\n  ".join(changed_lines(changed))
        + "\nrun again with --rerun-changed to train the plan (the finished trials stay; "
        "tables show both, naming the keys that differ) or --keep-changed to keep the "
        "finished results and train only the other trials"
    )


def check_trial_configs(planned: list[Planned]) -> None:
    """Raise now what `prepare` would meet after making the dataset and the MLflow runs: a
    trial directory whose config.yaml does not load, or holds another experiment."""
    for p in planned:
        if p.action.runs() and p.dir.config_path.exists():
            old = p.dir.read_config()  # a ConfigError names the file and the key
            if canonical(old) != canonical(p.trial.config):
                raise TrialConflictError(
                    f"{p.dir.config_path} holds another experiment than {p.name} (edited by "
                    f"hand?); restore it or remove {p.dir.path}"
                )


# ----------------------------------------------------------------------------- claiming


@contextlib.contextmanager
def claimed(planned: list[Planned]) -> Iterator[list[Planned]]:
    """Claim the trials to run, re-read each one's state under its claim and yield those that
    still need running; the others get their new action (another launcher started them, or
    they finished meanwhile). Submit and `mark_submitted` inside the block: a second launcher
    waits for the claim and then sees them pending or running. Every backend goes through it.
    """
    with contextlib.ExitStack() as stack:
        # In path order: two launchers claiming many trials never wait on each other in a cycle.
        for p in sorted((p for p in planned if p.action.runs()), key=lambda p: str(p.dir.path)):
            stack.enter_context(claim(p.dir.path))
            p.action, p.note = classify(p.dir, retry_failed=p.action is Action.RETRY)
        yield [p for p in planned if p.action.runs()]


def mark_submitted(
    d: TrialDir, backend: str, job_id: str, job_pid: int | None = None, after: str | None = None
) -> None:
    """Record the trial's job (pending until its trainer starts): inside `claimed`. `after`:
    the job it waits on (`bilma.sweep.chain`); None clears an earlier launch's."""
    d.set_status(
        TrialState.PENDING,
        backend=backend,
        job_id=job_id,
        job_pid=job_pid,
        host=socket.gethostname(),
        **{STATUS_AFTER_JOB: after},
    )


def reuse_summary(planned: list[Planned]) -> list[str]:
    """The plan summary's parts: 'N trials reused from study X', 'N running in study X'."""
    parts = []
    for action, what in ((Action.REUSE, "reused from"), (Action.SKIP_ELSEWHERE, "running in")):
        by_study = Counter(p.source.path.parent.name for p in planned if p.action is action)
        parts += [
            f"{n} trial{'s' if n != 1 else ''} {what} study {study}"
            for study, n in sorted(by_study.items())
        ]
    return parts
