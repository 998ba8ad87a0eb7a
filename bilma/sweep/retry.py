"""Automatic retries of trials whose attempt ended of a transient cause, and the causes SLURM
knows of trials whose process died without a word.

A trial's cause comes from the trainer (the exception) or from SLURM's state of its job
(`bilma.runs.causes`). What the launch then does with it:

    node_failure, preemption, communication_timeout   retried automatically, at most
        `max_transient_retries` times (profile), the n-th after retry_backoff_s * 2**(n-1) s:
        the local backend reruns it in the running launcher; on SLURM the next launch (the
        same command) resubmits it, with sbatch --begin for the backoff
    time_limit, cancelled     interrupted: a relaunch resumes it (as after a stop signal)
    bug, data_error, config_error, out_of_memory   failed: only --retry-failed [CAUSES] reruns it
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from bilma.runs.causes import (
    SLURM_ENDED,
    cause_of_slurm_state,
    end_fields,
    is_transient,
    settled_cause,
    slurm_state_name,
    wants_retry,
)
from bilma.runs.reading import read_status
from bilma.runs.schema import INTERRUPTING_CAUSES, TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.sweep.plan import Action, Planned


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after how long, a transient cause is retried (profile keys)."""

    max_retries: int = 2
    backoff_s: float = 60.0

    @classmethod
    def of(cls, profile: Any) -> RetryPolicy:
        """From a `Profile` (its max_transient_retries and retry_backoff_s)."""
        return cls(profile.max_transient_retries, float(profile.retry_backoff_s))

    def delay_s(self, retry: int) -> float:
        """Seconds before the `retry`-th retry (1-based): the backoff doubles each time."""
        return self.backoff_s * 2 ** max(0, retry - 1)


def _last_record(status: dict[str, Any], job_id: str | None) -> dict[str, Any] | None:
    log = status.get("attempt_log") or []
    last = log[-1] if log and isinstance(log[-1], dict) else None
    return last if last is not None and last.get("job_id") == job_id else None


def retry_once(
    d: TrialDir,
    status: dict[str, Any],
    cause: str,
    policy: RetryPolicy,
    write: bool = True,
    source: str = "slurm",
) -> int | None:
    """Whether the trial, whose last attempt (its job in status.json) ended of the transient
    `cause`, is retried: the retry's number (1-based), counted once per job, or None when the
    retries are spent. With `write`, status.json records it ("auto_retries", "retry_after"
    for the backoff, the attempt's record marked retried)."""
    job = None if status.get("job_id") is None else str(status["job_id"])
    done = int(status.get("auto_retries") or 0)
    last = _last_record(status, job)
    if last is not None and last.get("retried"):
        return done  # decided by an earlier launch that did not submit it: not counted twice
    if done >= policy.max_retries:
        return None
    if write:
        fields = end_fields(status, TrialState.FAILED, cause, job_id=job, source=source)
        fields["attempt_log"][-1]["retried"] = True
        d.set_status(
            TrialState.FAILED,
            **fields,
            auto_retries=done + 1,
            retry_after=time.time() + policy.delay_s(done + 1),
        )
    return done + 1


def delay_s(d: TrialDir) -> int:
    """Seconds until the trial's automatic retry may start (0: now)."""
    after = read_status(d).get("retry_after")
    return max(0, int(round(after - time.time()))) if isinstance(after, int | float) else 0


def by_delay(planned: list[Planned]) -> list[tuple[int, list[Planned]]]:
    """The trials grouped by the seconds their start must wait (`delay_s`), no wait first, in
    their order within each group: one SLURM array per group."""
    groups: dict[int, list[Planned]] = {}
    for p in planned:  # only a retry can wait: the others' status.json is not read again
        groups.setdefault(delay_s(p.dir) if p.action is Action.RETRY else 0, []).append(p)
    return sorted(groups.items(), key=lambda kv: kv[0])


def settle_slurm(
    planned: list[Planned],
    jobs: dict[Any, str],
    states: dict[str, str],
    policy: RetryPolicy,
    retry_failed: bool | Collection[str] = False,
    write: bool = True,
) -> None:
    """Correct the plan of trials whose SLURM job has ended (`jobs`: trial directory -> job
    id, `states`: job id -> SLURM's state) with the cause of its end: a transient cause is
    retried (bounded), a time limit or scancel resumes, any other fails (rerun only by a
    matching --retry-failed). With `write` (a launch, not --status or --dry-run), status.json
    records the cause; a trial whose job is gone but whose status.json still says running
    (killed without a word) becomes failed or interrupted."""
    for p in planned:
        job = jobs.get(p.dir.path)
        if job is None or p.action in (Action.SKIP_DONE, Action.SKIP_RUNNING):
            continue
        slurm = states.get(job, "")
        if slurm_state_name(slurm) not in SLURM_ENDED:
            continue
        status = read_status(p.dir)
        state = TrialState.parse(status.get("state"))
        if state is None or state.is_finished():
            continue
        if state is TrialState.INTERRUPTED and cause_of_slurm_state(slurm) is None:
            continue  # saved on a signal; its job then ended FAILED or COMPLETED: no news
        recorded = status.get("cause") if state is TrialState.FAILED else None
        cause = settled_cause(recorded, slurm)
        if cause is None:
            continue
        _settle(p, status, state, cause, job, slurm, policy, retry_failed, write)


def _settle(
    p: Planned,
    status: dict[str, Any],
    state: TrialState,
    cause: str,
    job: str,
    slurm: str,
    policy: RetryPolicy,
    retry_failed: bool | Collection[str],
    write: bool,
) -> None:
    why = f"SLURM job {job} ended {slurm_state_name(slurm)}: {cause}"
    resume = Action.RESUME if p.dir.last_ckpt.exists() else Action.SUBMIT
    if cause in INTERRUPTING_CAUSES:
        p.action, p.note = resume, why
        if write:
            p.dir.set_status(
                TrialState.INTERRUPTED,
                **end_fields(status, TrialState.INTERRUPTED, cause, job_id=job, source="slurm"),
            )
        return
    if is_transient(cause):
        n = retry_once(p.dir, status, cause, policy, write)
        if n is not None:
            p.action = Action.RETRY  # failed, and rerun (it resumes from ckpt/last.pt)
            p.note = f"{why} (automatic retry {n} of {policy.max_retries})"
            return
        why += f" ({policy.max_retries} automatic retries spent)"
    if write and (state is not TrialState.FAILED or status.get("cause") != cause):
        error = status.get("error") if state is TrialState.FAILED else why
        p.dir.set_status(
            TrialState.FAILED,
            error=error,
            **end_fields(status, TrialState.FAILED, cause, error, job_id=job, source="slurm"),
        )
    retry = wants_retry({**status, "cause": cause}, retry_failed)
    p.action = Action.RETRY if retry else Action.SKIP_FAILED
    p.note = why


def retry_local(p: Planned, policy: RetryPolicy) -> tuple[float, str] | None:
    """(seconds to wait, the line saying so) when the local trial `p`, whose job has just
    ended, failed of a transient cause and has retries left (recorded in status.json, its
    action made RETRY); None otherwise."""
    status = read_status(p.dir)
    cause = status.get("cause")
    if TrialState.parse(status.get("state")) is not TrialState.FAILED or not is_transient(cause):
        return None
    n = retry_once(p.dir, status, cause, policy, source="trainer")
    if n is None:
        return None
    p.action, wait = Action.RETRY, policy.delay_s(n)
    return (
        wait,
        f"  retrying {p.name} in {wait:g} s: {cause} (automatic retry {n} of {policy.max_retries})",
    )


def next_ready(queue: list[Planned], not_before: dict[Any, float]) -> Planned | None:
    """The first trial of `queue` whose backoff (`not_before`: trial directory -> unix time)
    has passed."""
    now = time.time()
    return next((p for p in queue if not_before.get(p.dir.path, 0.0) <= now), None)
