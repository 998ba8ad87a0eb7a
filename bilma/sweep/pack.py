"""Several trials in one allocation: the SLURM profile key `trials_per_job: K` packs K small
trials into one job (one array task), for clusters that limit jobs per user.

Each trial keeps its own directory, its own lock (taken by its trainer) and its own
status.json; the job runs them one after another (`TrialPack`), and every trial of a pack
records the pack's job id, so `--status`, liveness and `scancel` see them all. The pack holds
only paths: a requeued job (time limit, preemption) calls it again, and it skips the trials
that ended in this job (done, stopped, or failed: a failed trial is rerun only by
`--retry-failed`), resumes the interrupted one from its checkpoint and goes on with the rest.
A trial that fails does not stop the pack; a stop signal (scancel) does, after the running
trial saved. The job's time limit (`time_min`) covers the K trials together.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import submitit

from bilma.errors import TrialInterrupted, first_line
from bilma.runs.schema import TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.sweep.job import TrialJob

log = logging.getLogger(__name__)

# Ended in this job: never run again by it (a pack's trials are all pending when submitted).
ENDED_HERE = (TrialState.DONE, TrialState.STOPPED, TrialState.FAILED)


class TrialPack(submitit.helpers.Checkpointable):
    """The callable of one packed job: its trials' directories, run in order."""

    def __init__(self, trial_dirs: list[str | Path]):
        self.trial_dirs = [str(d) for d in trial_dirs]

    def __repr__(self) -> str:
        return f"TrialPack({self.trial_dirs!r})"

    def __call__(self) -> dict[str, str]:
        """{trial directory: how it ended in this job}."""
        ended: dict[str, str] = {}
        for path in self.trial_dirs:
            d = TrialDir(path)
            state = d.state()
            if state in ENDED_HERE:  # in an earlier run of this job, before a requeue
                ended[path] = f"{state} before"
                continue
            print(f"== trial {d.trial_id} ({path})", flush=True)
            try:
                TrialJob(path)()
            except TrialInterrupted:
                raise  # a stop signal: the job ends (a requeue resumes from this trial)
            except Exception as e:  # recorded as failed by the trainer: the next trial
                ended[path] = f"failed: {first_line(e)}"
                print(f"   FAILED {d.trial_id}: {first_line(e)}", flush=True)
                continue
            ended[path] = "done"
        return ended


def pack(items: list[Any], k: int) -> list[list[Any]]:
    """Consecutive groups of at most k."""
    k = max(1, k)
    return [items[i : i + k] for i in range(0, len(items), k)]
