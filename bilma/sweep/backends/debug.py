"""The debug backend: the trials in this process, one after another (breakpoints and pdb
work); a failing trial is reported and the others go on."""

from __future__ import annotations

import os
import sys

from bilma.sweep.backends.base import Backend
from bilma.sweep.expand import Grid, Trial
from bilma.sweep.job import TrialJob
from bilma.sweep.plan import Action, Planned, claimed, mark_submitted


class DebugBackend(Backend):
    name = "debug"
    snapshots = False  # its trials run in the launcher's process, on the code it imported

    def check(self, grid: Grid, trials: list[Trial]) -> None:
        """Nothing refuses a debug launch up front."""

    def submit(self, grid: Grid, planned: list[Planned], parent_run_id: str | None) -> int:
        return run_debug(planned)


def run_debug(planned: list[Planned]) -> int:
    """In this process, one trial after another."""
    failed = 0
    for p in planned:
        if not p.action.runs():
            continue
        with claimed([p]) as still_to_run:
            if still_to_run:
                mark_submitted(p.dir, DebugBackend.name, str(os.getpid()), os.getpid())
        if not still_to_run:
            print(f"== {p.name}: {p.action} meanwhile, skipped")
            continue
        print(f"== {p.name} ({p.dir.trial_id})", flush=True)
        try:
            TrialJob(p.dir.path)()
        except Exception as e:  # report and go on with the other trials
            failed += 1
            print(f"  FAILED: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
    return 1 if failed or any(p.action is Action.SKIP_UNREADABLE for p in planned) else 0
