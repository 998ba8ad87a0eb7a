"""The progress view of a sweep: counts of the trials' states and the best result so far.

    12:03:41 ablation: 4 done, 2 running, 0 failed, 9 pending | best test R1 61.20 (BiLMa seed=1)

`Follower` keeps each trial's last known state and looks at a trial's files again only when
they changed: an `os.stat` of status.json per poll (and of result.json for running trials), a
read only when a file's (inode, mtime, size) moved; a finished trial (done, or stopped early)
is never looked at again. Polls back off while nothing changes, the way submitit's job
watcher does: 0.5 s (1 ms per unfinished trial on a big study), doubling up to 10 s, and back
on any change (or when a job ends: `wake`). On a 1,000-trial study this is a few file opens
per second instead of thousands (benchmarks/bench_follow.py).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilma.runs.reading import UNREADABLE, read_result, read_status
from bilma.runs.schema import TrialState
from bilma.sweep.plan import Planned, is_running

# The states a progress line counts as such; every other one (no status yet, pending, or done
# in a status.json whose result.json is gone) counts as pending.
SHOWN = (TrialState.RUNNING, TrialState.FAILED, TrialState.INTERRUPTED, TrialState.STOPPED)

MIN_INTERVAL_S = 0.5
MAX_INTERVAL_S = 10.0
PER_TRIAL_S = 0.001


@dataclass
class Snapshot:
    counts: Counter  # TrialState (or UNREADABLE) -> trials
    best: tuple[float, str] | None  # (test R1, trial name)


def shown_state(result: dict[str, Any] | None, problem: str, status: dict[str, Any]) -> str:
    """The state a progress line counts a trial under (a TrialState, or UNREADABLE)."""
    if problem or status.get("state") == UNREADABLE:
        return UNREADABLE
    if result is not None:
        return TrialState.DONE
    state = TrialState.parse(status.get("state"))
    return state if state in SHOWN else TrialState.PENDING


def progress_line(study: str, snap: Snapshot) -> str:
    c = snap.counts
    pending = c[TrialState.PENDING] + c[TrialState.INTERRUPTED]
    line = (
        f"{time.strftime('%H:%M:%S')} {study}: {c[TrialState.DONE]} done, "
        f"{c[TrialState.RUNNING]} running, {c[TrialState.FAILED]} failed, {pending} pending"
    )
    if c[TrialState.STOPPED]:
        line += f", {c[TrialState.STOPPED]} stopped early"
    if c[UNREADABLE]:
        line += f", {c[UNREADABLE]} unreadable"
    if snap.best:
        line += f" | best test R1 {snap.best[0]:.2f} ({snap.best[1]})"
    return line


def snapshot(planned: list[Planned]) -> Snapshot:
    """The trials' states as their directories say now (every file read once)."""
    follower = Follower(planned)
    follower.poll()
    return follower.snapshot()


# ----------------------------------------------------------------------------- the follower


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of a file, None if it is not there. Atomic writes replace the
    file (a new inode), so even a rewrite within one mtime tick is seen."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class _Seen:
    """What the follower last read of one trial, and the files' signatures then."""

    result_sig: tuple[int, int, int] | None = None
    status_sig: tuple[int, int, int] | None = None
    result: dict[str, Any] | None = None
    problem: str = ""  # result.json cannot be read
    status: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # done or stopped early: never looked at again
    looked: bool = False  # result.json was looked at once
    progress_sig: tuple[int, int, int] | None = None
    progress: dict[str, Any] | None = None  # progress.json of a running trial


class Follower:
    """The trials of a launch as last seen on disk, re-read only where a file changed.

    `poll()` looks; `refresh()` and `alive()` poll first when a poll is `due()`, `snapshot()`
    and `running()` answer from the last one. The local backend and its view
    (`bilma.sweep.view`) call them from a loop that ticks every 0.5 s (asking a job costs no
    file); `wake()` when a job ends or starts makes the next tick poll, at the shortest
    interval again.
    """

    def __init__(
        self,
        planned: list[Planned],
        min_interval: float = MIN_INTERVAL_S,
        max_interval: float = MAX_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.planned = planned
        self.study = planned[0].trial.study if planned else ""
        self.min_interval, self.max_interval = min_interval, max_interval
        self.interval = min_interval  # the wait after the last poll
        self.clock = clock
        self._next = clock()  # the first poll is due at once
        self._seen: dict[Path, _Seen] = {p.dir.path: _Seen() for p in planned}
        self._alive: dict[Path, bool] = {}  # liveness asked since the last poll
        self._snap = Snapshot(Counter(), None)

    # -- polling
    def due(self) -> bool:
        return self.clock() >= self._next

    def refresh(self) -> None:
        """Poll if a poll is due."""
        if self.due():
            self.poll()

    def wake(self) -> None:
        """Something happened (a job ended or started): poll at the next tick, 0.5 s again."""
        self.interval = self.min_interval
        self._next = self.clock()

    def poll(self) -> bool:
        """Look at every unfinished trial's files; re-read those that changed. True if any
        did. The next poll is due after the shortest interval if so, twice the last if not."""
        changed = False
        unfinished = 0
        for p in self.planned:
            seen = self._seen[p.dir.path]
            if not seen.finished:
                unfinished += 1
                changed = self._look(p, seen) or changed
        self._alive.clear()
        self._snap = self._count()
        # The shortest interval grows with the study (1 ms per trial still looked at): on a
        # 1,000-trial study whose trials keep finishing, a poll a second, not two.
        floor = max(self.min_interval, unfinished * PER_TRIAL_S)
        if changed:
            self.interval = floor
        else:
            self.interval = min(max(self.interval * 2, floor), self.max_interval)
        self._next = self.clock() + self.interval
        return changed

    def _look(self, p: Planned, seen: _Seen) -> bool:
        d = p.dir
        first, seen.looked = not seen.looked, True
        changed = False
        if first or seen.problem:  # a done trial needs its result.json only
            changed = self._look_result(d, seen)
            if seen.result is not None or seen.problem:
                seen.finished = seen.result is not None  # unreadable: counted so, looked again
                return changed
        sig = _signature(d.status_path)
        if sig != seen.status_sig:
            seen.status_sig, changed = sig, True
            seen.status = read_status(d) if sig else {}
        state = TrialState.parse(seen.status.get("state"))
        # result.json comes from a running trainer, just before its status says done: a trial
        # last seen pending, failed or interrupted writes status.json before it can have one.
        # So only the running ones (and any whose status moved) are stat'ed for it: on a big
        # study, one stat per waiting trial and poll instead of two.
        if not first and (changed or state in (TrialState.RUNNING, TrialState.DONE)):
            changed = self._look_result(d, seen) or changed
            if seen.result is not None or seen.problem:
                seen.finished = seen.result is not None
                return changed
        seen.finished = state is TrialState.STOPPED
        return changed

    @staticmethod
    def _look_result(d: Any, seen: _Seen) -> bool:
        """Re-read result.json if it changed; True if it did."""
        sig = _signature(d.result_path)
        if sig == seen.result_sig:
            return False
        seen.result_sig = sig
        seen.result, seen.problem = read_result(d) if sig else (None, "")
        return True

    def _count(self) -> Snapshot:
        counts: Counter = Counter()
        best = None
        for p in self.planned:
            seen = self._seen[p.dir.path]
            counts[shown_state(seen.result, seen.problem, seen.status)] += 1
            if seen.result is not None:
                r1 = seen.result["metrics"]["R1"]
                if best is None or r1 > best[0]:
                    best = (r1, p.name)
        return Snapshot(counts, best)

    # -- answers from the last poll
    def snapshot(self) -> Snapshot:
        return self._snap

    def running(self) -> list[tuple[Planned, dict[str, Any], dict[str, Any] | None]]:
        """(trial, status, progress) of each trial last seen running; progress.json is
        re-read only where it changed (one stat per running trial, none for the others)."""
        out = []
        for p in self.planned:
            seen = self._seen[p.dir.path]
            if (
                seen.finished
                or TrialState.parse(seen.status.get("state")) is not TrialState.RUNNING
            ):
                continue
            sig = _signature(p.dir.progress_path)
            if sig != seen.progress_sig:
                seen.progress_sig = sig
                seen.progress = p.dir.read_progress() if sig else None
            out.append((p, seen.status, seen.progress))
        return out

    def alive(self, p: Planned) -> bool:
        """Whether the trial's trainer or job runs (asked once per poll; a finished trial
        is not asked again)."""
        self.refresh()
        seen = self._seen[p.dir.path]
        if seen.finished:
            return False
        if p.dir.path not in self._alive:
            self._alive[p.dir.path] = is_running(p.dir, seen.status)
        return self._alive[p.dir.path]

    def any_alive(self, planned: list[Planned]) -> bool:
        return any(self.alive(p) for p in planned)

    def alive_count(self, planned: list[Planned]) -> int:
        return sum(1 for p in planned if self.alive(p))
