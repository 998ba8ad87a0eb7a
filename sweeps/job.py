"""Old import path of the trial job (`bilma.sweep.job`): a job queued before the package was
layered unpickles `sweeps.job.TrialJob` and runs, and requeues, as the new one."""

from bilma.sweep.job import TrialInterrupted, TrialJob  # noqa: F401
