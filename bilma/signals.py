"""Stop signals: SIGTERM and SIGUSR2 (SLURM's preemption and time-limit signals) ask the
trainer to finish the current step, save and stop; `StopFlag` records that they came."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopFlag:
    """Set by a stop signal (in the process that installed it); read at each step."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}
        self._owner = os.getpid()

    def install(self) -> None:
        for s in STOP_SIGNALS:
            # Outside the main thread (an in-process debug backend) there is no handler.
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._owner:
            # A forked helper process (not a DataLoader worker, which ignores these signals)
            # inherited this handler: behave as if it had none.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.signum:
            log.warning(
                "%s received: stopping after this step and saving", signal.Signals(signum).name
            )
        self.signum = signum
