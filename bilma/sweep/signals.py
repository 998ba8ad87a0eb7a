"""The launcher's stop signals (local backend): Ctrl-C (SIGINT), SIGTERM and SIGHUP (the
terminal closed) stop a launch the same way, wherever they arrive (also while a trial's job
starts: `LauncherSignals` only records them, the launcher's loop acts between two steps):

1. every trial this launch runs is asked to save and stop (`stop_jobs`): its trainer gets
   SIGTERM once; a job still starting (submitit's controller and task up, the trainer not yet)
   gets SIGTERM again each second until its trainer has it (`bilma.training.signals.
   catch_early` keeps it from then on). The launcher waits until no process of the trial is
   left; a trial that ended without its trainer saying so is recorded interrupted;
2. a second signal stops the wait at once, in one line; the trainers already asked finish
   their save on their own;
3. the launcher exits 128 + the first signal's number, after closing the MLflow parent run
   (KILLED: trials are left to resume); the same command resumes them.

The jobs' shell ignores SIGINT, SIGHUP and SIGTERM (`JOB_SETUP`), so that a signal to the
whole process group (the terminal's) never kills submitit's controller or the shell the
launcher follows; the trainer installs its own handlers and saves. Once the terminal is gone,
the launcher's output is dropped rather than failing (`quiet_output`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bilma.fileio import pid_alive
from bilma.runs.lock import is_locked
from bilma.runs.reading import read_status
from bilma.runs.schema import TrialState
from bilma.sweep.plan import Planned

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The shell of each local trial job: its processes inherit the ignored signals until they
# install handlers (the trainer does; submitit's controller forwards SIGTERM to its task).
JOB_SETUP = ["trap '' INT HUP TERM"]
STOP_WAIT_S = 120  # how long the running trials get to save and stop
NUDGE_S = 1.0  # how often a job that is still starting gets SIGTERM again
TICK_S = 0.2


class LauncherSignals:
    """Records the stop signals the launcher gets while the block runs (main thread only;
    elsewhere it installs nothing and records nothing)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> LauncherSignals:
        quiet_output()
        for s in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    @property
    def first(self) -> int:
        """The signal that stops the launch (0: none came)."""
        return self.received[0] if self.received else 0

    @property
    def again(self) -> bool:
        """A second signal came: stop waiting for the trials."""
        return len(self.received) > 1

    @property
    def name(self) -> str:
        return signal.Signals(self.first).name


class _Tolerant:
    """A text stream that drops what a hung-up terminal refuses (EIO) instead of raising."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            self._stream.write(text)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            if e.errno != errno.EIO:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_output() -> None:
    """stdout and stderr that survive their terminal's hang-up: closing a terminal makes its
    writes fail (EIO), possibly before the SIGHUP arrives, and the stop must go on."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Tolerant):
            setattr(sys, name, _Tolerant(stream))


def say(line: str) -> None:
    print(line, flush=True)


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (children first), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def trainer_pid(p: Planned) -> int | None:
    """The pid of the trial's trainer while it trains (it holds the trial's lock)."""
    status = read_status(p.dir)
    pid = status.get("pid")
    running = TrialState.parse(status.get("state")) is TrialState.RUNNING
    if running and isinstance(pid, int) and pid_alive(pid) and is_locked(p.dir.path):
        return pid
    return None


def job_ended(p: Planned, job: Any) -> bool:
    """The job's shell has exited and no process trains the trial any more."""
    return job.done() and not is_locked(p.dir.path)


class _Stopping:
    """Asks one trial's processes to save and stop, as often as its start-up needs."""

    def __init__(self, p: Planned, job: Any) -> None:
        self.p, self.job = p, job
        self.told: int | None = None  # the trainer that got SIGTERM
        self.nudged = -float("inf")

    def nudge(self) -> None:
        pid = trainer_pid(self.p)
        if pid is not None:  # it saves on the first SIGTERM; more would change nothing
            if pid != self.told:
                _signal([pid], signal.SIGTERM)
                self.told = pid
            return
        now = time.monotonic()
        if now - self.nudged >= NUDGE_S:  # still starting: submitit may have dropped it
            _signal(_descendants(int(self.job.job_id)), signal.SIGTERM)
            self.nudged = now

    def kill_start_up(self) -> None:
        """Stop at once a job whose trainer has not started (nothing to save): SIGKILL."""
        if trainer_pid(self.p) is None:
            shell = int(self.job.job_id)
            _signal([*reversed(_descendants(shell)), shell], signal.SIGKILL)


def stop_jobs(running: dict[Path, tuple[Planned, Any]], signals: LauncherSignals) -> int:
    """Stop the launch's running trials (see the module's docstring); the exit code."""
    say(f"\n{signals.name} received: asking running trials to save and stop (SIGTERM) ...")
    left = {key: _Stopping(p, job) for key, (p, job) in running.items()}
    deadline = time.monotonic() + STOP_WAIT_S
    while True:
        for key, s in list(left.items()):
            if job_ended(s.p, s.job):
                del left[key]
            else:
                s.nudge()
        if not left or signals.again or time.monotonic() > deadline:
            break
        time.sleep(TICK_S)
    if signals.again:
        for s in left.values():
            s.kill_start_up()
        until = time.monotonic() + 5  # SIGKILLed: gone (and reaped by done()) at once
        while any(not s.job.done() for s in left.values()) and time.monotonic() < until:
            time.sleep(0.05)
    for p, job in running.values():
        mark_interrupted(p, job, signals.name)
    stopped = sum(1 for p, _job in running.values() if not p.dir.is_done())
    if signals.again:
        trials = "trial" if stopped == 1 else "trials"
        say(f"stopping now: {stopped} {trials} interrupted, resume with the same command")
    elif left:
        pids = ", ".join(str(trainer_pid(s.p)) for s in left.values())
        say(f"{len(left)} trial(s) still saving after {STOP_WAIT_S} s (pid {pids}); they stop "
            "on their own; run the same command to resume")  # fmt: skip
    else:
        say("stopped; run the same command to resume")
    return 128 + signals.first


def mark_interrupted(p: Planned, job: Any, signame: str) -> None:
    """A trial left pending or running with no process training it (its job stopped before
    the trainer started, or the trainer died of the signal) is interrupted: it resumes."""
    if not job.done() or is_locked(p.dir.path):
        return  # its trainer is still saving: it records its own end
    state = TrialState.parse(read_status(p.dir).get("state"))
    if p.dir.is_done() or state not in (TrialState.PENDING, TrialState.RUNNING):
        return
    how = "before its trainer started" if state is TrialState.PENDING else "without a save"
    p.dir.set_status(TrialState.INTERRUPTED, error=f"{signame} to the launcher: stopped {how}")
