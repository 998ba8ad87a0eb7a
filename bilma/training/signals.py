"""Stop signals: SIGTERM, SIGUSR2 (SLURM's preemption and time-limit signals), SIGINT
(Ctrl-C) and SIGHUP (the terminal closed) ask the trainer to finish the current step, save and
stop; `StopFlag` records that they came (the first one names the stop).

A trial job installs its flag only after the data and the model are built; a stop signal
before that would kill it (a bare `bilma train`) or be dropped (submitit's job process ignores
SIGTERM: the trial would train on after its launcher stopped). `catch_early`, called by the
job first thing, keeps such a signal: the trainer's flag starts with it, and the trainer stops
after its first step (ended interrupted, resumable).

`timeout`, `scancel`, SLURM's end-of-job signal and Ctrl-C signal the whole process group, so
DataLoader workers die of the same signal at about the same moment (they keep SIGTERM's and
SIGINT's default behaviour: interpreter exit relies on terminating them). torch's SIGCHLD
handler would then raise "DataLoader worker ... is killed by signal" at an arbitrary point of
the training step; `guard_sigchld` keeps it quiet once a stop was requested, and
`worker_died` tells the trainer whether a failed batch fetch is part of such a stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)
# What `catch_early` keeps: not SIGUSR2, whose submitit handler checkpoints and requeues the
# job when it comes before the trainer's flag.
EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How long a failed batch fetch waits for the group's stop signal to reach this process.
WORKER_DEATH_GRACE_S = 2.0


class StopFlag:
    """Set by a stop signal (in the process that installed it); read at each step."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signum = 0
        self._old: dict[int, Any] = {}
        self._owner = os.getpid()
        self._loader_sigchld: Any = None  # torch's SIGCHLD handler, once it is installed

    def install(self) -> None:
        if _early is not None and _early is not self and _early._owner == os.getpid():
            self.signum = self.signum or _early.signum  # a stop asked before this flag
        for s in self.signals:
            # Outside the main thread (an in-process debug backend) there is no handler.
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            with contextlib.suppress(ValueError):
                signal.signal(s, h)
        self._old = {}
        if self._loader_sigchld is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGCHLD, self._loader_sigchld)
            self._loader_sigchld = None

    def guard_sigchld(self) -> None:
        """Wrap the SIGCHLD handler torch installs with the first multi-worker iterator: a
        worker dying of the stop signal is expected, not an error to raise mid-step."""
        if not self._old:
            return  # not installed (not the main thread): leave torch's handler alone
        current = signal.getsignal(signal.SIGCHLD)
        if current == self._sigchld or not callable(current):
            return
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGCHLD, self._sigchld)
            self._loader_sigchld = current

    def _sigchld(self, signum: int, frame: Any) -> None:
        if self.signum:
            return  # workers died of our stop signal: the step finishes, then we save
        if callable(self._loader_sigchld):
            self._loader_sigchld(signum, frame)

    def worker_died(self, exc: BaseException) -> bool:
        """Whether `exc` is a DataLoader worker's death caused by a stop signal: waits up to
        WORKER_DEATH_GRACE_S for that signal, which reaches this process at about the same
        moment as the workers."""
        if not isinstance(exc, RuntimeError) or "DataLoader worker" not in str(exc):
            return False
        deadline = time.monotonic() + WORKER_DEATH_GRACE_S
        while not self.signum and time.monotonic() < deadline:
            time.sleep(0.05)  # the handler runs in this thread, between these sleeps
        return bool(self.signum)

    def _handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._owner:
            # A forked helper process (e.g. a DataLoader worker) inherited this handler:
            # behave as if it had none.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.signum:  # the first names the stop (a launcher's SIGTERM may follow)
            log.warning(
                "%s received: stopping after this step and saving", signal.Signals(signum).name
            )
            self.signum = signum


_early: StopFlag | None = None  # this process's `catch_early` flag


@contextlib.contextmanager
def catch_early() -> Iterator[StopFlag]:
    """Within the block, keep the stop signals that come before the trainer installs its
    flag (a trial job's whole run). A forked helper process still dies of them
    (`StopFlag._handle`)."""
    global _early
    flag = _early = StopFlag(EARLY_SIGNALS)
    flag.install()
    try:
        yield flag
    finally:
        flag.restore()
        _early = None
