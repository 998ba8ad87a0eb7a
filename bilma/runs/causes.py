"""Why an attempt ended: the cause vocabulary (`bilma.runs.schema.CAUSES`) from an exception
or from SLURM's job state, and its record in status.json.

The trainer knows the exception it caught (`cause_of_exception`); a process that died without
a word (killed by SLURM for a node failure, an out-of-memory kill, a time limit) leaves a
status.json that still says running, and the launcher fills the cause from SLURM's state
(`cause_of_slurm_state`, `settled_cause`). Each ended attempt is one record of status.json's
"attempt_log" (`end_fields`); "cause" is the last one's. Transient causes
(`schema.TRANSIENT_CAUSES`) are retried automatically (`bilma.sweep.retry`); the others only
with `--retry-failed [CAUSES]` (`parse_causes`, `wants_retry`).

No torch import here: the launcher reads causes too, and exceptions are told by their names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Collection, Iterator
from typing import Any

from bilma.errors import ConfigError, DataError
from bilma.runs.schema import (
    CAUSE_BUG,
    CAUSE_CANCELLED,
    CAUSE_COMMUNICATION_TIMEOUT,
    CAUSE_CONFIG_ERROR,
    CAUSE_DATA_ERROR,
    CAUSE_NODE_FAILURE,
    CAUSE_OUT_OF_MEMORY,
    CAUSE_PREEMPTION,
    CAUSE_TIME_LIMIT,
    CAUSES,
    INTERRUPTING_CAUSES,
    TRANSIENT_CAUSES,
    TrialState,
)

# Words of an exception's message that tell an out-of-memory error (CUDA's caching allocator,
# the CUDA runtime, cuDNN/cuBLAS allocation failures, the host's allocator).
_OOM_WORDS = (
    "cuda out of memory",
    "cuda error: out of memory",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory",
)
# Words of a collective that timed out or a peer that went away (NCCL's watchdog, gloo,
# the c10d store).
_COMM_WORDS = (
    "nccl",
    "watchdog caught collective operation timeout",
    "collective operation timeout",
    "connection closed by peer",
    "connection reset by peer",
    "socket timeout",
    "timed out waiting for",
    "gloo",
)
# torch.distributed's own exception classes (DistBackendError: NCCL; DistNetworkError,
# DistStoreError: the rendezvous store).
_COMM_TYPES = ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")

# SLURM job states (sacct / squeue, "CANCELLED by 0" read as CANCELLED) -> cause.
_SLURM_CAUSES = {
    "OUT_OF_MEMORY": CAUSE_OUT_OF_MEMORY,
    "NODE_FAIL": CAUSE_NODE_FAILURE,
    "BOOT_FAIL": CAUSE_NODE_FAILURE,
    "PREEMPTED": CAUSE_PREEMPTION,
    "TIMEOUT": CAUSE_TIME_LIMIT,
    "DEADLINE": CAUSE_TIME_LIMIT,
    "CANCELLED": CAUSE_CANCELLED,
    "REVOKED": CAUSE_CANCELLED,  # a federated sibling ran it
}
# SLURM states of a job that has ended (any other: queued, running, or unknown).
SLURM_ENDED = (*_SLURM_CAUSES, "FAILED", "COMPLETED")


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e` and the exceptions it was raised from or during (each once)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    # torch.cuda.OutOfMemoryError (torch.OutOfMemoryError since 2.5), by name: no torch import
    if type(e).__name__ == "OutOfMemoryError" and type(e).__module__.startswith("torch"):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in _OOM_WORDS)


def _is_comm_timeout(e: BaseException) -> bool:
    if type(e).__module__.startswith("torch") and type(e).__name__ in _COMM_TYPES:
        return True
    text = str(e).lower()
    if isinstance(e, RuntimeError | TimeoutError | ConnectionError):
        return any(w in text for w in _COMM_WORDS)
    return False


def cause_of_exception(e: BaseException) -> str:
    """The cause of an attempt that ended in `e`: out of memory, a communication timeout, a
    data or config error (bilma.errors), Ctrl-C (cancelled), else a bug. The exceptions it was raised from count
    too (a DataError re-raised as a RuntimeError by a loader worker is still bad data)."""
    chain = list(_chain(e))
    if isinstance(e, KeyboardInterrupt):  # Ctrl-C before the stop handler was installed
        return CAUSE_CANCELLED
    if any(_is_oom(x) for x in chain):
        return CAUSE_OUT_OF_MEMORY
    if any(_is_comm_timeout(x) for x in chain):
        return CAUSE_COMMUNICATION_TIMEOUT
    if any(isinstance(x, DataError) for x in chain):
        return CAUSE_DATA_ERROR
    if any(isinstance(x, ConfigError) for x in chain):
        return CAUSE_CONFIG_ERROR
    return CAUSE_BUG


# Ray's words for an actor whose node died (ActorDiedError's message, written by Ray's C++
# side). Not memory words: every dead-worker message lists "the OOM killer" among its
# possible causes; Ray's memory monitor raises its own OutOfMemoryError.
_RAY_NODE_WORDS = ("node has died",)


def cause_of_ray_error(e: BaseException | None) -> str | None:
    """The cause of a Ray trial that failed outside the trainer (its worker died, or the
    trainable raised before the trainer ran), from Tune's pickled error; None when it does not
    say (like a local job killed without a record). By class names: no Ray import here."""
    if e is None:
        return None
    chain = list(_chain(e))
    for x in chain:
        if not type(x).__module__.startswith("ray"):
            continue
        name, text = type(x).__name__, str(x).lower()
        if name == "OutOfMemoryError":
            return CAUSE_OUT_OF_MEMORY
        if getattr(x, "preempted", False) is True:  # RayActorError: the autoscaler drained it
            return CAUSE_PREEMPTION
        if name == "NodeDiedError" or any(w in text for w in _RAY_NODE_WORDS):
            return CAUSE_NODE_FAILURE
    # a RayTaskError keeps the trainable's own exception in .cause
    inner = next(
        (x.cause for x in chain if isinstance(getattr(x, "cause", None), BaseException)), None
    )
    if inner is not None:
        return cause_of_exception(inner)
    if any(type(x).__module__.startswith("ray") for x in chain):
        return None  # a worker died and Ray does not say why
    return cause_of_exception(e)


def slurm_state_name(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'RUNNING' unchanged; '' for none."""
    return state.split()[0].rstrip("+") if state and state.strip() else ""


def cause_of_slurm_state(state: str) -> str | None:
    """The cause SLURM's state of an ended job names (OUT_OF_MEMORY, NODE_FAIL, PREEMPTED,
    TIMEOUT, CANCELLED, ...); None for FAILED (the exception tells), COMPLETED, and a job that
    has not ended."""
    return _SLURM_CAUSES.get(slurm_state_name(state))


def settled_cause(recorded: str | None, slurm_state: str) -> str | None:
    """The cause of an attempt whose SLURM job ended in `slurm_state`, given what the trainer
    recorded (None: nothing, it died without a word). What SLURM saw from outside wins (an
    OOM kill, a node failure, a time limit: the trainer may have seen only the signal that
    came with it); a FAILED job the trainer said nothing about died of a bug (the process
    exited on an error before or beyond the trainer's handler)."""
    name = slurm_state_name(slurm_state)
    if name in _SLURM_CAUSES:
        return _SLURM_CAUSES[name]
    if name == "FAILED":
        return recorded or CAUSE_BUG
    return recorded


def requeued_run_state(env: dict[str, str] | None = None) -> str:
    """SLURM's state of this job's previous run, when this process runs in a job SLURM
    requeued by itself (SLURM_RESTART_COUNT > 0: a node failure or a preemption with
    JobRequeue=1): `sacct -D` lists each run of the job, this one last. '' when not requeued
    or unknown."""
    env = dict(os.environ) if env is None else env
    if int(env.get("SLURM_RESTART_COUNT") or 0) < 1 or shutil.which("sacct") is None:
        return ""
    job = env.get("SLURM_JOB_ID", "")
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    try:
        out = subprocess.run(
            ["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    runs = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return runs[-2] if out.returncode == 0 and len(runs) >= 2 else ""


def previous_attempt(status: dict[str, Any]) -> dict[str, Any]:
    """The status.json fields that complete the record of the previous attempt, as the next
    one starts (holding the trial's lock): an attempt that died without a word (status.json
    still says running) gets a record, and its cause from SLURM when SLURM requeued the job by
    itself (`requeued_run_state`: NODE_FAIL, PREEMPTED), as does one that saved on the signal
    of such a kill without knowing why. {} when there is nothing to add."""
    state, attempts = status.get("state"), int(status.get("attempts") or 0)
    log = status.get("attempt_log") or []
    last = log[-1] if log and isinstance(log[-1], dict) else {}
    died = state == TrialState.RUNNING and attempts >= 1
    unexplained = (
        state == TrialState.INTERRUPTED
        and last.get("attempt") == attempts
        and last.get("cause") is None
    )
    if not (died or unexplained):
        return {}
    cause = cause_of_slurm_state(requeued_run_state())
    if unexplained and cause is None:
        return {}
    ended = "interrupted" if cause in (*TRANSIENT_CAUSES, *INTERRUPTING_CAUSES) else "failed"
    fields = end_fields(status, last.get("state", ended) if unexplained else ended, cause)
    fields["attempt_log"][-1]["source"] = "slurm" if cause else "trainer"
    fields.pop("cause")  # the new attempt runs: status.json's "cause" is an ended one's
    return fields


def is_transient(cause: str | None) -> bool:
    """Whether `cause` is retried automatically (node failure, preemption, a collective's
    timeout)."""
    return cause in TRANSIENT_CAUSES


def parse_causes(text: str) -> frozenset[str]:
    """'out_of_memory,node_failure' -> those causes; ValueError naming the valid ones for an
    unknown one (the --retry-failed filter)."""
    names = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in names if w not in CAUSES]
    if unknown or not names:
        what = f"unknown cause {', '.join(repr(w) for w in unknown)}" if unknown else "no cause"
        raise ValueError(f"{what}; valid causes: {', '.join(CAUSES)} (comma-separated)")
    return frozenset(names)


def wants_retry(status: dict[str, Any], retry_failed: bool | Collection[str]) -> bool:
    """Whether --retry-failed (True: every failed trial; a set of causes: those whose last
    attempt ended of one of them) reruns a failed trial of this status.json."""
    if isinstance(retry_failed, bool):
        return retry_failed
    return status.get("cause") in retry_failed


def end_fields(
    status: dict[str, Any],
    state: str,
    cause: str | None,
    error: str | None = None,
    job_id: str | None = None,
    source: str = "trainer",
) -> dict[str, Any]:
    """The status.json fields that record the end of the current attempt: "cause" and the
    attempt_log with this attempt's record (schema.ATTEMPT_FIELDS). An attempt recorded
    already (the trainer's, then SLURM's view of the same job) is updated, not repeated."""
    attempt = int(status.get("attempts") or 0)
    job_id = job_id if job_id is not None else status.get("job_id")
    log = [r for r in status.get("attempt_log") or [] if isinstance(r, dict)]
    record = {
        "attempt": attempt,
        "state": str(state),
        "cause": cause,
        "error": error,
        "job_id": None if job_id is None else str(job_id),
        "ended": time.time(),
        "source": source,
    }
    if log and log[-1].get("attempt") == attempt and log[-1].get("job_id") == record["job_id"]:
        old = log.pop()
        record["error"] = error or old.get("error")
        record["ended"] = old.get("ended", record["ended"])
    return {"cause": cause, "attempt_log": [*log, record]}
