"""The run record's vocabulary: every name that the trainer, the launcher, the backends, the
MLflow mirror and the tables share about a trial. One place: a state, a file name, a field or
a tag is spelt here and imported everywhere else (docs/architecture.md has the table).

A trial directory `runs/<study>/<trial_id>/` holds the files below. States of status.json:

    pending      submitted by a launcher, not started yet
    running      its trainer runs (it holds the trial's lock)
    done         result.json is written; never run again
    failed       an exception ("error", "traceback"); re-run only with --retry-failed
    interrupted  a stop signal; ckpt/last.pt resumes it
    stopped      ended early on purpose (an ASHA scheduler); never run again
"""

from __future__ import annotations

from enum import Enum


class TrialState(str, Enum):
    """A trial's state in status.json (a str: `TrialState.DONE == "done"`, JSON as "done")."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    def is_finished(self) -> bool:
        """Done, or stopped early on purpose: a relaunch runs nothing."""
        return self in (TrialState.DONE, TrialState.STOPPED)

    @classmethod
    def parse(cls, value: object) -> TrialState | None:
        """The state a status.json names, or None for a missing or unknown one."""
        try:
            return cls(value)
        except ValueError:
            return None


STATES = tuple(s.value for s in TrialState)

# ----------------------------------------------------------------------------- files

CONFIG_FILE = "config.yaml"  # the resolved config, written once
STATUS_FILE = "status.json"  # the state and each attempt (STATUS_FIELDS)
METRICS_FILE = "metrics.jsonl"  # append-only, one evaluation or training record per line
RESULT_FILE = "result.json"  # exists only when the trial is done (RESULT_FIELDS)
LAUNCH_FILE = "launch.json"  # the sweep's part of the trial's identity (LAUNCH_FIELDS)
MLFLOW_FILE = "mlflow.json"  # the trial's MLflow run, so a resumed trial continues it
PROVENANCE_FILE = "provenance.json"  # git commit and dirty flag, host, versions, SLURM ids
PROGRESS_FILE = "progress.json"  # the running trainer's position (PROGRESS_FIELDS), a view only
LOG_FILE = "train.log"
CKPT_DIR = "ckpt"
LAST_CKPT = "last.pt"  # every epoch (and on a stop signal): what a resume starts from
BEST_CKPT = "best.pt"  # the selected checkpoint
BEST_CANDIDATE = "best.next.pt"  # a new best, renamed to best.pt once last.pt names its epoch
EPOCH_CKPT_PREFIX = "epoch_"  # ckpt/epoch_0010.pt: train.keep_checkpoints=every:N snapshots
LOCK_FILE = ".lock"  # flock held by the trainer while it trains (bilma.runs.lock)
CLAIM_FILE = ".claim"  # flock held by a launcher while it re-reads and submits the trial
# A study's frozen code (bilma.sweep.snapshot): runs/<study>/.code/<id>/bilma/..., and beside
# the package the snapshot's manifest (commit, dirty, git diff, created), read by provenance.
CODE_DIR = ".code"
CODE_MANIFEST = "snapshot.json"
# In a study's folder (runs/<study>/), not a trial's: the launch's webhook, trials and the
# events sent (bilma.sweep.notify).
NOTIFY_FILE = "notify.json"

# ----------------------------------------------------------------------------- fields

# status.json: "state" is a TrialState; the rest as the writer knows them.
STATUS_FIELDS = (
    "state",
    "attempts",
    "updated",  # unix time of the last change
    "host",
    "pid",  # the trainer's
    "job_pid",  # the local job's controller
    "backend",
    "job_id",
    "slurm_job_id",
    "slurm_array_job_id",
    "slurm_array_task_id",
    "started",
    "error",
    "traceback",
    "stopped_epoch",
    "stop_reason",
    "after_job",  # the job this trial's job waits on (SLURM afterok: its parse array), or null
    "reused_from",  # the study whose finished trial of the same id this one reuses
    "cause",  # why the last attempt ended, when it did not finish (a CAUSES value)
    "attempt_log",  # one ATTEMPT_FIELDS record per ended attempt, oldest first
    "auto_retries",  # automatic retries after transient causes so far (bilma.sweep.retry)
    "retry_after",  # unix time before which an automatic retry does not start (backoff)
)

# ----------------------------------------------------------------------------- causes

# Why an attempt ended without finishing (status.json "cause", an attempt_log record's
# "cause", the MLflow tag TAG_FAILURE_CAUSE), from the exception the trainer caught or from
# SLURM's job state when the process died without a word (bilma.runs.causes).
CAUSE_OUT_OF_MEMORY = "out_of_memory"  # CUDA or host (MemoryError, SLURM's OUT_OF_MEMORY)
CAUSE_NODE_FAILURE = "node_failure"  # SLURM's NODE_FAIL or BOOT_FAIL
CAUSE_PREEMPTION = "preemption"  # SLURM's PREEMPTED (past the requeues, or without a signal)
CAUSE_TIME_LIMIT = "time_limit"  # SLURM's TIMEOUT or DEADLINE
CAUSE_CANCELLED = "cancelled"  # scancel
CAUSE_COMMUNICATION_TIMEOUT = "communication_timeout"  # NCCL or gloo: a collective timed out
CAUSE_DATA_ERROR = "data_error"  # a bilma.errors.DataError: a dataset file to fix
CAUSE_CONFIG_ERROR = "config_error"  # a bilma.errors.ConfigError: a config to fix
CAUSE_BUG = "bug"  # any other exception
CAUSES = (
    CAUSE_OUT_OF_MEMORY,
    CAUSE_NODE_FAILURE,
    CAUSE_PREEMPTION,
    CAUSE_TIME_LIMIT,
    CAUSE_CANCELLED,
    CAUSE_COMMUNICATION_TIMEOUT,
    CAUSE_DATA_ERROR,
    CAUSE_CONFIG_ERROR,
    CAUSE_BUG,
)
# Causes that running the same trial again may well not meet: retried automatically a bounded
# number of times with backoff (profile keys max_transient_retries, retry_backoff_s). The
# others (a bug, bad data or config, out of memory) fail the same way again: never retried
# without --retry-failed.
TRANSIENT_CAUSES = (CAUSE_NODE_FAILURE, CAUSE_PREEMPTION, CAUSE_COMMUNICATION_TIMEOUT)
# Causes that interrupt rather than fail a trial (a time limit, scancel): a relaunch resumes
# it, as after a stop signal, without counting a retry.
INTERRUPTING_CAUSES = (CAUSE_TIME_LIMIT, CAUSE_CANCELLED)

# One record of status.json's "attempt_log".
ATTEMPT_FIELDS = (
    "attempt",  # status.json's "attempts" when it ended
    "state",  # the TrialState it ended in
    "cause",  # a CAUSES value, or None (done, or interrupted for an unknown reason)
    "error",  # the first line of the exception, if any
    "job_id",  # the backend's job, if any
    "ended",  # unix time (when it was recorded, for an attempt that died without a word)
    "source",  # who recorded the cause: "trainer" (the exception), "slurm" (the job state), "ray"
    "retried",  # True: a launcher retried it automatically (a transient cause)
)
STATUS_AFTER_JOB = "after_job"

# result.json: test metrics of the selected checkpoint and how it was selected.
RESULT_METRICS = ("R1", "R5", "R10", "mAP", "mINP")
# Test metrics a trial adds when its synthetic dataset has look-alike groups: Rank-1 and mAP
# of the look-alike and of the ordinary queries, the percent of look-alike Rank-1 mistakes
# that land on a group-mate, and Rank-1 of look-alike queries ranked within their own group.
GROUP_METRICS = (
    "lookalike_R1",
    "lookalike_mAP",
    "ordinary_R1",
    "ordinary_mAP",
    "twin_errors",
    "group_R1",
)
# result.json and the trial's MLflow metrics: what the trial used, summed over its attempts
# (bilma.training.usage says how each is measured). None where not measured.
USAGE_FIELDS = (
    "gpu_hours",  # GPUs x wall hours of training and evaluation
    "cpu_hours",  # cores x wall hours
    "peak_gpu_mem_gb",  # None on a CPU
    "peak_host_mem_gb",
    "samples_per_s",  # mean training throughput
    "train_samples",
)
RESULT_FIELDS = (
    "trial_id",
    "study",
    "variant",
    "seed",
    "dataset",
    "variant_base",  # from launch.json
    "grid_point",  # from launch.json
    "metrics",
    "selection",  # {"split", "metric", "epoch", "value"}
    "val_metrics",
    "epochs",
    "train_seconds",
    "chance_R1",  # Rank-1 of a random ranking of the test gallery (100 / identities)
    "finished",
    "reused_from",  # set when the result is another study's, not trained here (bilma.runs.reuse)
    *USAGE_FIELDS,
)
# progress.json: rewritten by the running trainer every few seconds (no fsync: a view for the
# launcher's progress display, never read to resume).
PROGRESS_FIELDS = (
    "phase",  # "train", "eval" (the selection split) or "test"
    "epoch",  # 1-based epoch in progress
    "epochs",
    "step",  # step within the epoch
    "steps",  # steps per epoch
    "loss",  # mean loss of the epoch so far
    "samples_per_s",
    "eta_s",  # seconds of training left at the current speed (evaluations not counted)
    "updated",  # unix time
)

# Fields of a metrics.jsonl record that are not metrics.
RECORD_FIELDS = ("epoch", "step", "split", "time")

# launch.json: written by one function (bilma.runs.launch.write_launch) for every backend.
LAUNCH_FIELDS = (
    "study",
    "grid",  # the grid file
    "variant",  # the row label, with the axis values: "BiLMa [mask_ratio=0.3]"
    "variant_base",  # the grid's variant name, without axis values
    "variant_index",  # its position in the grid (row order); -1: none
    "grid_point",  # {axis: value} of the grid's axes
    "seed",
    "parent_run_id",  # the sweep's MLflow parent run
    "tracking",  # {"enabled", "uri"}: the launching command's, which win over config.yaml's
    "launched",  # unix time
    "code",  # the id of the code snapshot its jobs import (runs/<study>/.code/<id>); None: none
)

# ----------------------------------------------------------------------------- MLflow

# Tags of a trial's MLflow run; `grid.<axis>` per grid axis.
TAG_STUDY = "study"
TAG_TRIAL_ID = "trial_id"
TAG_VARIANT = "variant"
TAG_VARIANT_BASE = "variant_base"
TAG_VARIANT_INDEX = "variant_index"
TAG_SEED = "seed"
TAG_DATASET = "dataset"
TAG_GIT_COMMIT = "git_commit"
TAG_SLURM_JOB_ID = "slurm_job_id"
TAG_KIND = "kind"  # "trial" or "sweep" (a parent run)
TAG_SWEEP = "sweep"  # a parent run's grid name
TAG_STOPPED_EARLY = "stopped_early"
TAG_STATE_UPDATED = "state_updated"
TAG_FAILURE_CAUSE = "failure_cause"  # a CAUSES value: why the run's last attempt ended
GRID_TAG_PREFIX = "grid."
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
# A sweep's parent run: its grid file, and the best trial of its summary (bilma.tracking.parent).
TAG_GRID = "grid"
TAG_BEST_TRIAL = "best_trial"  # the best trial's run name ("s1 IRRA"), by test R1
TAG_BEST_TRIAL_ID = "best_trial_id"
# An experiment's kind, which the MLflow 3 UI opens on: "custom_model_development" is its
# "model training" kind (the runs table); without the tag it may open the GenAI traces page.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
TAG_NOTE = "mlflow.note.content"
# A trial reused from another study's finished trial of the same id (bilma.runs.reuse): its
# run carries the study it was trained in.
REUSED_FROM = "reused_from"  # also the field of status.json and result.json
TAG_REUSED_FROM = REUSED_FROM  # an experiment's (or run's) description, Markdown

# The MLflow run status that shows each state.
MLFLOW_STATUS = {
    TrialState.DONE: "FINISHED",
    TrialState.FAILED: "FAILED",
    TrialState.INTERRUPTED: "KILLED",
    TrialState.STOPPED: "KILLED",
    TrialState.RUNNING: "RUNNING",
    TrialState.PENDING: "SCHEDULED",
}
# And back, for the tables reading MLflow.
STATE_OF_MLFLOW = {
    "FINISHED": TrialState.DONE,
    "FAILED": TrialState.FAILED,
    "KILLED": TrialState.INTERRUPTED,
    "RUNNING": TrialState.RUNNING,
    "SCHEDULED": TrialState.PENDING,
}
