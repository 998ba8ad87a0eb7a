"""The callable a backend runs for one trial: a submitit Checkpointable holding only a path.

Everything a trial needs is in its directory (`config.yaml`; `launch.json` with the sweep's
MLflow parent run and the launching command's tracking settings, which win over config.yaml's),
so the pickle carries no mutable state and a requeued job simply calls the trainer again,
which resumes from `ckpt/last.pt`.

Signals: the trainer saves on SIGTERM/SIGUSR2/SIGINT/SIGHUP and raises `Interrupted`. For
SIGUSR2 (SLURM's time-limit and preemption signal, and submitit's local timeout) the job hands
the signal back to submitit's own handler, which checkpoints this object and requeues the job.
A stop signal during start-up (before the trainer's handlers) is kept from the job's first
line (`bilma.training.signals.catch_early`): submitit's handler would drop a SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import Any

import submitit

from bilma.errors import TrialInterrupted  # noqa: F401  (importable from here too)
from bilma.logs import configure as configure_logging
from bilma.runs.launch import Launch
from bilma.runs.schema import LAUNCH_FILE  # noqa: F401  (importable from here too)


class TrialJob(submitit.helpers.Checkpointable):
    def __init__(self, trial_dir: str | Path):
        self.trial_dir = str(trial_dir)

    def __repr__(self) -> str:
        return f"TrialJob({self.trial_dir!r})"

    def __call__(self) -> dict[str, Any]:
        from bilma.training.signals import catch_early

        # First thing (before torch's import): in a submitit job, whose handler drops
        # SIGTERM, a stop signal during start-up is kept and stops the trainer after its
        # first step (bilma.training.signals), instead of the trial training on.
        early = catch_early() if _submitit_handles(signal.SIGTERM) else contextlib.nullcontext()
        with early:
            return self._train()

    def _train(self) -> dict[str, Any]:
        from bilma.runs.trial_dir import TrialDir
        from bilma.training.trainer import Interrupted, train

        configure_logging()  # a fresh job process logs like the command line
        trial = TrialDir(Path(self.trial_dir))
        launch = trial.read_launch()
        cfg = with_tracking(trial.read_config(), launch)
        requeued = False
        try:
            return train(cfg, parent_run_id=launch.parent_run_id)
        except Interrupted as e:
            if e.signum == signal.SIGUSR2 and _submitit_handles(signal.SIGUSR2):
                # submitit's handler: checkpoint (this object) and requeue, then exit.
                requeued = True
                signal.raise_signal(signal.SIGUSR2)
            raise TrialInterrupted(str(e)) from None
        finally:
            if not requeued:  # the trial ended here: the study's webhook, if one is set
                from bilma.sweep.notify import check

                check(trial.path.parent, ended=trial.trial_id)


def _submitit_handles(signum: int) -> bool:
    handler = signal.getsignal(signum)
    return callable(handler) and "submitit" in getattr(handler, "__module__", "")


def with_tracking(cfg: Any, launch: Launch) -> Any:
    """The trial's config with the launching command's tracking settings (launch.json):
    a relaunch or --retry-failed mirrors where the current command says, not where the
    first launch did (tracking settings are not part of the trial id)."""
    changes = {k: launch.tracking[k] for k in ("enabled", "uri") if k in launch.tracking}
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, **changes))
