"""Launch a grid of trials: plan from the trial directories, prepare, submit, follow.

The trial directory is the truth. Before anything is submitted, each trial is classified from
its directory: done (result.json), running (its process or SLURM job is alive), interrupted or
half-trained (resumes from ckpt/last.pt), failed (re-run only with --retry-failed) or new.
Relaunching the same command therefore submits only what is missing, and a trial never runs
twice at once: a launcher re-reads a trial's state under the trial's claim before submitting it
(`claimed`), so two launchers started together submit each trial once, and the trainer itself
holds the trial's lock while it trains (bilma/lock.py). A trial whose status.json cannot be
read is reported as such and left alone; the other trials go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilma.config import canonical
from bilma.runs.launch import write_launch
from bilma.runs.lock import claim, holder, is_locked
from bilma.runs.reading import read_result, read_status
from bilma.runs.reuse import moved_data_root
from bilma.runs.trial_dir import TrialConflictError, TrialDir
from bilma.sweep.expand import Grid, Trial
from bilma.sweep.job import TrialJob

log = logging.getLogger(__name__)

# Actions of a launch, per trial.
SUBMIT, RESUME, RETRY, SKIP_DONE, SKIP_RUNNING, SKIP_FAILED, SKIP_UNREADABLE = (
    "submit",
    "resume",
    "retry",
    "done",
    "running",
    "failed",
    "unreadable",
)
TO_RUN = (SUBMIT, RESUME, RETRY)


@dataclass
class Planned:
    trial: Trial
    dir: TrialDir
    action: str
    note: str = ""


def trial_dir(trial: Trial) -> TrialDir:
    return TrialDir.for_config(trial.config)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _slurm_alive(job_id: str) -> bool:
    if not shutil.which("squeue"):
        return False
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def is_running(d: TrialDir) -> bool:
    """Whether the trial's trainer (or its job, before the trainer starts) is alive."""
    return is_locked(d.path) or is_alive(read_status(d))


def is_alive(status: dict[str, Any]) -> bool:
    """Whether the process or job recorded in a trial's status still runs."""
    job = status.get("job_id")
    if status.get("backend") == "slurm" and job:
        return _slurm_alive(str(job))
    if status.get("host") not in (None, socket.gethostname()):
        return False  # another machine's process: unknown, treated as gone
    pids = [status.get("pid"), status.get("job_pid")]
    return any(isinstance(p, int) and _pid_alive(p) for p in pids)


def classify(d: TrialDir, retry_failed: bool) -> tuple[str, str]:
    """(action, note) for one trial directory."""
    result, problem = read_result(d)
    if problem:
        return SKIP_UNREADABLE, problem
    if result is not None:
        return SKIP_DONE, ""
    status = read_status(d)
    state = status.get("state")
    if state == SKIP_UNREADABLE:
        return SKIP_UNREADABLE, status["error"]
    if state == "stopped":  # stopped early (ASHA): finished, never rerun
        return SKIP_DONE, f"stopped early at epoch {status.get('stopped_epoch', '?')}"
    if is_locked(d.path):  # its trainer runs now, on this machine or (NFS) another one
        return SKIP_RUNNING, holder(d.path)
    if state in ("running", "pending") and is_alive(status):
        return SKIP_RUNNING, f"pid {status.get('pid') or status.get('job_pid')}"
    if state == "failed":
        if retry_failed:
            return RETRY, status.get("error", "")
        return SKIP_FAILED, status.get("error", "")
    if d.last_ckpt.exists():
        return RESUME, f"from epoch {_ckpt_epoch(d)}"
    return SUBMIT, ""


def _ckpt_epoch(d: TrialDir) -> str:
    recs = [r for r in d.read_metrics() if r.get("split") == "train"]
    return str(recs[-1]["epoch"]) if recs else "?"


def plan(trials: list[Trial], retry_failed: bool = False) -> list[Planned]:
    out = []
    for t in trials:
        d = trial_dir(t)
        action, note = classify(d, retry_failed)
        out.append(Planned(t, d, action, note))
    return out


def summary(planned: list[Planned]) -> str:
    c = Counter(p.action for p in planned)
    parts = [
        f"{c[SKIP_DONE]} done (skipped)",
        f"{c[SKIP_RUNNING]} already running",
        f"{c[RESUME]} to resume",
        f"{c[SUBMIT] + c[RETRY]} to start" + (f" ({c[RETRY]} retried)" if c[RETRY] else ""),
    ]
    if c[SKIP_FAILED]:
        parts.append(f"{c[SKIP_FAILED]} failed (use --retry-failed)")
    if c[SKIP_UNREADABLE]:
        parts.append(f"{c[SKIP_UNREADABLE]} unreadable (left alone)")
    return ", ".join(parts)


def data_root_warnings(planned: list[Planned]) -> list[str]:
    """One line per (recorded, current) pair of data roots that differ: data.root is not part
    of the trial id, so such a trial's result and checkpoint come from the recorded root."""
    moved: dict[tuple[str, str], list[Planned]] = {}
    for p in planned:
        old = moved_data_root(p.dir.config_path, p.trial.config)
        if old is not None:
            moved.setdefault((old, p.trial.config.data.root), []).append(p)
    return [
        f"{len(ps)} trial(s) were run on data.root={old}, not {new} (e.g. {ps[0].dir.path}): "
        f"their results and checkpoints come from {old}; data.root is not part of the trial "
        "id, so use another paths.runs or study to train on the new root"
        for (old, new), ps in moved.items()
    ]


def check_trial_configs(planned: list[Planned]) -> None:
    """Raise now what `prepare` would meet after making the dataset and the MLflow runs: a
    trial directory whose config.yaml does not load, or holds another experiment."""
    for p in planned:
        if p.action in TO_RUN and p.dir.config_path.exists():
            old = p.dir.read_config()  # a ConfigError names the file and the key
            if canonical(old) != canonical(p.trial.config):
                raise TrialConflictError(
                    f"{p.dir.config_path} holds another experiment than {p.trial.variant} "
                    f"seed={p.trial.seed} (edited by hand?); restore it or remove {p.dir.path}"
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
        for p in sorted((p for p in planned if p.action in TO_RUN), key=lambda p: str(p.dir.path)):
            stack.enter_context(claim(p.dir.path))
            p.action, p.note = classify(p.dir, retry_failed=p.action == RETRY)
        yield [p for p in planned if p.action in TO_RUN]


# ----------------------------------------------------------------------------- preparing


def prepare(grid: Grid, planned: list[Planned], tracking: bool = True) -> str | None:
    """Shared data, the MLflow experiment and parent run, each trial's directory. Returns the
    parent run id (None without MLflow)."""
    from bilma.data.synth_cache import ensure_synthetic

    to_run = [p for p in planned if p.action in TO_RUN]
    parent = None
    if not planned:
        return parent
    # The study's claim: two launchers of one grid make one dataset and one parent run.
    with claim(planned[0].dir.path.parent):
        # Several trials reading one missing synthetic dataset would all generate it: here.
        seen = set()
        for p in to_run:
            data = p.trial.config.data
            if data.dataset == "synth" and data.root not in seen:
                seen.add(data.root)
                ensure_synthetic(data)
        cfg0 = planned[0].trial.config
        if tracking and cfg0.tracking.enabled:
            parent = _parent_run(grid, cfg0)
    for p in to_run:
        p.dir.init(p.trial.config)
        # this command's tracking settings win over the ones frozen in config.yaml
        settings = {
            "enabled": p.trial.config.tracking.enabled and tracking,
            "uri": p.trial.config.tracking.uri,
        }
        write_launch(p.dir.path, p.trial.launch(str(grid.path), parent, settings))
    return parent


def _parent_run(grid: Grid, cfg) -> str | None:
    from bilma.tracking.store import ensure_experiment, ensure_parent_run

    try:
        # The experiment exists before any trial starts: concurrent creation of a fresh
        # SQLite store or experiment corrupts it or files runs under "Default" (STACK.md).
        ensure_experiment(cfg.tracking.uri, grid.study)
        return ensure_parent_run(
            cfg.tracking.uri, grid.study, grid.path.stem, {"grid": str(grid.path)}
        )
    except Exception as e:  # MLflow down: trials still run; `python -m bilma sync` later
        log.warning(
            "MLflow at %s unavailable (%s): trials run without a parent run; run "
            "`python -m bilma sync --runs %s` to mirror them later",
            cfg.tracking.uri,
            (str(e).splitlines() or [type(e).__name__])[0],
            cfg.paths.runs,
        )
        return None


def finish_parent(cfg, parent: str | None, failed: bool) -> None:
    if not parent:
        return
    from bilma.tracking.store import mlflow_client, resolve_uri

    # A server gone since the start: fail fast (mlflow_client), never stop the launcher.
    with contextlib.suppress(Exception):
        mlflow_client(resolve_uri(cfg.tracking.uri)).set_terminated(
            parent, "FAILED" if failed else "FINISHED"
        )


# ----------------------------------------------------------------------------- following


@dataclass
class Snapshot:
    counts: Counter
    best: tuple[float, str] | None


def snapshot(planned: list[Planned]) -> Snapshot:
    counts: Counter = Counter()
    best = None
    for p in planned:
        result, problem = read_result(p.dir)
        if problem:
            counts["unreadable"] += 1
            continue
        if result is not None:
            counts["done"] += 1
            r1 = result["metrics"]["R1"]
            if best is None or r1 > best[0]:
                best = (r1, f"{p.trial.variant} seed={p.trial.seed}")
            continue
        state = read_status(p.dir).get("state", "pending")
        counts[
            {
                "running": "running",
                "failed": "failed",
                "interrupted": "interrupted",
                "stopped": "stopped",
                SKIP_UNREADABLE: "unreadable",
            }.get(state, "pending")
        ] += 1
    return Snapshot(counts, best)


def progress_line(study: str, snap: Snapshot) -> str:
    c = snap.counts
    line = (
        f"{time.strftime('%H:%M:%S')} {study}: {c['done']} done, {c['running']} running, "
        f"{c['failed']} failed, {c['pending'] + c['interrupted']} pending"
    )
    if c["stopped"]:
        line += f", {c['stopped']} stopped early"
    if c["unreadable"]:
        line += f", {c['unreadable']} unreadable"
    if snap.best:
        line += f" | best test R1 {snap.best[0]:.2f} ({snap.best[1]})"
    return line


# ----------------------------------------------------------------------------- local backend


def mark_submitted(d: TrialDir, backend: str, job_id: str, job_pid: int | None = None) -> None:
    d.set_status(
        "pending", backend=backend, job_id=job_id, job_pid=job_pid, host=socket.gethostname()
    )


def run_local(
    planned: list[Planned],
    max_parallel: int,
    timeout_min: float,
    follow_every: float = 10.0,
    signal_delay_s: int = 60,
) -> int:
    """Run the trials as local submitit jobs, at most `max_parallel` at once; wait for all.

    Ctrl-C: the jobs ignore the terminal's SIGINT (so a trial is never killed mid-save); the
    launcher sends each running trial SIGTERM, which it answers by saving and stopping.
    """
    import submitit

    queue = [p for p in planned if p.action in TO_RUN]
    watch = [p for p in planned if p.action == SKIP_RUNNING]  # started by an earlier launch
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    running: dict[str, tuple[Planned, Any]] = {}
    last_line, last_time = "", 0.0
    study = planned[0].trial.study if planned else ""
    try:
        while queue or running or any(is_running(p.dir) for p in watch):
            while queue and len(running) + _alive_count(watch) < max_parallel:
                p = queue.pop(0)
                with claimed([p]) as still_to_run:
                    if not still_to_run:  # another launcher started it, or it ended meanwhile
                        watch += [p] if p.action == SKIP_RUNNING else []
                        continue
                    # Each timeout requeues and resumes; only a trial that makes no progress
                    # at all would need more than 30 slots.
                    ex = submitit.LocalExecutor(folder=p.dir.path / "logs", max_num_timeout=30)
                    # `trap '' INT`: the job and the trainer inherit an ignored SIGINT.
                    ex.update_parameters(
                        timeout_min=timeout_min,
                        signal_delay_s=min(signal_delay_s, int(timeout_min * 30)),
                        setup=["trap '' INT"],
                    )
                    # The job's environment is the launcher's, less what marks a process as a
                    # task of a SLURM job or torchrun (the launcher may run inside one; a local
                    # trial seeing SLURM_NTASKS=4 would wait for ranks that never come).
                    with (
                        submitit.helpers.clean_env(),
                        submitit.helpers.environment_variables(OMP_NUM_THREADS=threads),
                    ):
                        job = ex.submit(TrialJob(p.dir.path))
                    mark_submitted(p.dir, "local", job.job_id, int(job.job_id))
                running[str(p.dir.path)] = (p, job)
                log.info(
                    "started %s seed=%s (%s), log %s",
                    p.trial.variant,
                    p.trial.seed,
                    p.dir.trial_id,
                    job.paths.stderr,
                )
            for key, (p, job) in list(running.items()):
                if job.done():
                    running.pop(key)
                    if _report_end(p, job):
                        watch.append(p)
            snap = snapshot(planned)
            line = progress_line(study, snap)
            if line[9:] != last_line[9:] or time.time() - last_time > follow_every:
                print(line, flush=True)
                last_line, last_time = line, time.time()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping: asking running trials to save and stop (SIGTERM) ...", flush=True)
        for p, job in running.values():
            _terminate(p, job)
        deadline = time.time() + 120
        while any(not job.done() for _, job in running.values()) and time.time() < deadline:
            time.sleep(0.5)
        print("stopped; run the same command to resume", flush=True)
        return 130
    snap = snapshot(planned)
    print(progress_line(study, snap), flush=True)
    c = snap.counts
    return 1 if c["failed"] or c["interrupted"] or c["unreadable"] else 0


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _terminate(p: Planned, job) -> None:
    """SIGTERM to the trainer (it saves and stops), or to the job's controller if the trainer
    has not started yet. The job's pid is a shell (`trap '' INT && controller`), which would
    die alone, so its children are signalled."""
    status = read_status(p.dir)
    pid = status.get("pid")
    targets = (
        [pid]
        if status.get("state") == "running" and isinstance(pid, int) and _pid_alive(pid)
        else []
    )
    targets = targets or _children(int(job.job_id)) or [int(job.job_id)]
    for target in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)


def _alive_count(watch: list[Planned]) -> int:
    return sum(1 for p in watch if is_running(p.dir))


def _report_end(p: Planned, job) -> bool:
    """Say how a job ended; True when another process trains the trial (follow it)."""
    result, problem = read_result(p.dir)
    name = f"{p.trial.variant} seed={p.trial.seed}"
    if result is not None:
        m = result["metrics"]
        print(f"  finished {name}: R1 {m['R1']:.2f} mAP {m['mAP']:.2f}", flush=True)
        return False
    if is_locked(p.dir.path):
        # Its trainer refused to start: another process trains this trial (bilma/lock.py).
        print(f"  {name}: trained by another process ({holder(p.dir.path)}); following it")
        return True
    status = read_status(p.dir)
    if problem or status.get("state") == SKIP_UNREADABLE:
        print(f"  {name}: {problem or status['error']}", flush=True)
        return False
    if status.get("state") in ("running", "pending"):
        # Died without the trainer recording why (killed, out of memory): say so.
        p.dir.set_status("failed", error=f"job {job.job_id} ended without a result ({job.state})")
        status = p.dir.status()
    log_path = job.paths.stderr
    print(
        f"  {status.get('state', 'failed').upper()} {name}: {status.get('error', '')}\n    log: {log_path}",
        flush=True,
    )
    return False


# ----------------------------------------------------------------------------- debug backend


def run_debug(planned: list[Planned]) -> int:
    """In this process, one trial after another (breakpoints and pdb work)."""
    failed = 0
    for p in planned:
        if p.action not in TO_RUN:
            continue
        with claimed([p]) as still_to_run:
            if still_to_run:
                mark_submitted(p.dir, "debug", str(os.getpid()), os.getpid())
        if not still_to_run:
            print(f"== {p.trial.variant} seed={p.trial.seed}: {p.action} meanwhile, skipped")
            continue
        print(f"== {p.trial.variant} seed={p.trial.seed} ({p.dir.trial_id})", flush=True)
        try:
            TrialJob(p.dir.path)()
        except Exception as e:  # report and go on with the other trials
            failed += 1
            print(f"  FAILED: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
    return 1 if failed or any(p.action == SKIP_UNREADABLE for p in planned) else 0
