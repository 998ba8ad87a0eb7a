"""The local backend: each trial a submitit local job on this machine, at most --max-parallel
at once, with the progress view (`bilma.sweep.follow.Follower`) until every trial has ended.

Ctrl-C, SIGTERM and SIGHUP (the terminal closed): every running trial saves and stops, the
launcher exits 128 + the signal; a second one stops the wait (`bilma.sweep.signals`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from bilma.runs.lock import holder, is_locked
from bilma.runs.reading import UNREADABLE, read_result, read_status
from bilma.runs.schema import TrialState
from bilma.sweep.backends.base import Backend
from bilma.sweep.expand import Grid, Trial
from bilma.sweep.follow import Follower
from bilma.sweep.job import TrialJob
from bilma.sweep.plan import Action, Planned, claimed, mark_submitted
from bilma.sweep.retry import RetryPolicy, next_ready, retry_local
from bilma.sweep.signals import JOB_SETUP, LauncherSignals, stop_jobs
from bilma.sweep.snapshot import job_environment
from bilma.sweep.view import ProgressView

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often the loop asks its own jobs whether they ended (no file is read)


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        max_parallel: int | None = None,
        timeout_min: float = 7 * 24 * 60,
        retry: RetryPolicy | None = None,
    ):
        self.max_parallel = max_parallel or max(1, (os.cpu_count() or 1) // 2)
        self.timeout_min = timeout_min
        self.retry = retry or RetryPolicy()  # transient causes: rerun in this launcher

    def check(self, grid: Grid, trials: list[Trial]) -> None:
        """Nothing refuses a local launch up front."""

    def submit(self, grid: Grid, planned: list[Planned], parent_run_id: str | None) -> int:
        return run_local(planned, self.max_parallel, self.timeout_min, retry=self.retry)


def submit_local(
    folder: Path, fn: Callable[[], Any], threads: int, max_num_timeout: int, **params: Any
) -> submitit.Job:
    """One submitit local job running `fn` (also the parse shards').

    The job's environment is the launcher's, less what marks a process as a task of a SLURM
    job or torchrun (the launcher may run inside one; a local trial seeing SLURM_NTASKS=4
    would wait for ranks that never come), with OMP_NUM_THREADS=`threads`."""
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=max_num_timeout)
    ex.update_parameters(**params)
    with (
        submitit.helpers.clean_env(),
        submitit.helpers.environment_variables(OMP_NUM_THREADS=threads),
    ):
        return ex.submit(fn)


def run_local(
    planned: list[Planned],
    max_parallel: int,
    timeout_min: float,
    signal_delay_s: int = 60,
    retry: RetryPolicy | None = None,
) -> int:
    """Run the trials to run as local submitit jobs, at most `max_parallel` at once (trials
    started by an earlier launch count), and follow every trial until none is alive; a trial
    that ends of a transient cause runs again after its backoff (`retry`)."""
    queue = [p for p in planned if p.action.runs()]
    return _run(planned, queue, max_parallel, timeout_min, signal_delay_s, retry)


def follow_only(planned: list[Planned]) -> int:
    """Follow the trials an earlier launch started (action running) until none is alive:
    `run_local`'s loop with nothing to submit."""
    return _run(planned, [], 1, 0.0, 0)


def _run(
    planned: list[Planned],
    queue: list[Planned],
    max_parallel: int,
    timeout_min: float,
    signal_delay_s: int,
    retry: RetryPolicy | None = None,
) -> int:
    watch = [p for p in planned if p.action is Action.SKIP_RUNNING]  # an earlier launch's
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    running: dict[Path, tuple[Planned, Any]] = {}
    not_before: dict[Path, float] = {}  # an automatic retry's start, after its backoff
    # A stop signal is only recorded, wherever it comes (in a job's start-up too); the loop
    # acts on it between two steps (bilma.sweep.signals). Entered before the live view, which
    # puts back at its end the stdout it found (hang-up proof from here on).
    with LauncherSignals() as signals:
        follower = Follower(planned)
        view = ProgressView(follower)
        while (queue or running or follower.any_alive(watch)) and not signals.received:
            while (
                not signals.received
                and (p := next_ready(queue, not_before)) is not None
                and len(running) + follower.alive_count(watch) < max_parallel
            ):
                queue.remove(p)
                with claimed([p]) as still_to_run:
                    if not still_to_run:  # another launcher started it, or it ended meanwhile
                        watch += [p] if p.action is Action.SKIP_RUNNING else []
                        continue
                    # Each timeout requeues and resumes; only a trial that makes no progress
                    # at all would need more than 30 slots.
                    with job_environment(p.dir.path):  # its code snapshot first on its path
                        job = submit_local(
                            p.dir.path / "logs",
                            TrialJob(p.dir.path),
                            threads,
                            max_num_timeout=30,
                            timeout_min=timeout_min,
                            signal_delay_s=min(signal_delay_s, int(timeout_min * 30)),
                            setup=JOB_SETUP,
                        )
                    running[p.dir.path] = (p, job)
                    mark_submitted(p.dir, LocalBackend.name, job.job_id, int(job.job_id))
                follower.wake()  # its status.json changed: show it at once
                log.info("started %s (%s), log %s", p.name, p.dir.trial_id, job.paths.stderr)
            for key, (p, job) in list(running.items()):
                if job.done():
                    running.pop(key)
                    follower.wake()
                    if _report_end(p, job):
                        watch.append(p)
                    elif retry is not None and (again := retry_local(p, retry)) is not None:
                        not_before[key] = time.time() + again[0]  # starts after its backoff
                        queue.append(p)
                        print(again[1], flush=True)
            if not signals.received:
                view.tick()
                time.sleep(TICK_S)
        with contextlib.suppress(OSError):  # a hung-up terminal
            view.close()
        if signals.received:
            return stop_jobs(running, signals)
    c = follower.snapshot().counts
    return 1 if c[TrialState.FAILED] or c[TrialState.INTERRUPTED] or c[UNREADABLE] else 0


def _report_end(p: Planned, job: Any) -> bool:
    """Say how a job ended; True when another process trains the trial (follow it)."""
    result, problem = read_result(p.dir)
    if result is not None:
        m = result["metrics"]
        print(f"  finished {p.name}: R1 {m['R1']:.2f} mAP {m['mAP']:.2f}", flush=True)
        return False
    if is_locked(p.dir.path):
        # Its trainer refused to start: another process trains this trial (bilma.runs.lock).
        print(f"  {p.name}: trained by another process ({holder(p.dir.path)}); following it")
        return True
    status = read_status(p.dir)
    if problem or status.get("state") == UNREADABLE:
        print(f"  {p.name}: {problem or status['error']}", flush=True)
        return False
    if TrialState.parse(status.get("state")) in (TrialState.RUNNING, TrialState.PENDING):
        # Died without the trainer recording why (killed, out of memory): say so.
        error = f"job {job.job_id} ended without a result ({job.state})"
        status = p.dir.set_status(TrialState.FAILED, error=error)
    state = str(status.get("state", TrialState.FAILED)).upper()
    cause = f" ({status['cause']})" if status.get("cause") else ""
    print(
        f"  {state} {p.name}{cause}: {status.get('error', '')}\n    log: {job.paths.stderr}",
        flush=True,
    )
    return False
