"""The follow loop's `Follower` against real trial directories in tmp_path: what it re-reads,
what it never looks at again, how its polls back off; and `follow_only` on a real process.

File opens are counted by an audit hook (installed once; it records only inside `opened`),
stats by wrapping `os.stat`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bilma.runs.reading import UNREADABLE
from bilma.runs.schema import TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.sweep.backends.local import follow_only
from bilma.sweep.follow import Follower, progress_line, snapshot
from bilma.sweep.plan import Action, Planned
from bilma.sweep.view import ProgressView

_opens: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opens is not None and event == "open" and isinstance(args[0], str | Path):
        _opens.append(str(args[0]))


sys.addaudithook(_audit)


@contextlib.contextmanager
def opened(under: Path) -> Iterator[list[str]]:
    """The files under `under` opened inside the block."""
    global _opens
    _opens = []
    seen: list[str] = []
    try:
        yield seen
    finally:
        seen += [p for p in _opens if p.startswith(str(under))]
        _opens = None


@pytest.fixture
def stats(monkeypatch) -> list[str]:
    """Every path os.stat is called on from now on."""
    seen: list[str] = []
    real = os.stat

    def counting(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    return seen


def make_trials(tmp_path: Path, n: int, state: TrialState | None = TrialState.PENDING, **status):
    planned = []
    for i in range(n):
        d = TrialDir(tmp_path / "runs" / "study" / f"t{i}")
        d.path.mkdir(parents=True)
        if state is not None:
            d.set_status(state, **status)
        trial = SimpleNamespace(study="study", variant=f"v{i}", seed=i)
        planned.append(Planned(trial, d, Action.SKIP_RUNNING))  # type: ignore[arg-type]
    return planned


def finish(d: TrialDir, r1: float = 50.0) -> None:
    d.write_result({"metrics": {"R1": r1, "mAP": r1 - 10}})
    d.set_status(TrialState.DONE)


def counts(f: Follower) -> dict:
    return {k: v for k, v in f.snapshot().counts.items() if v}


def test_a_changed_status_is_seen_at_the_next_poll(tmp_path):
    planned = make_trials(tmp_path, 3)
    f = Follower(planned)
    assert f.poll() is True  # the first look reads every status.json
    assert counts(f) == {TrialState.PENDING: 3}
    assert f.poll() is False
    planned[0].dir.set_status(TrialState.RUNNING)
    planned[1].dir.set_status(TrialState.FAILED, error="boom")
    assert f.poll() is True
    assert counts(f) == {TrialState.RUNNING: 1, TrialState.FAILED: 1, TrialState.PENDING: 1}
    # A write in place (a hand edit) that keeps the size is seen too: the mtime moved.
    path = planned[2].dir.status_path
    before = os.stat(path)
    path.write_text(path.read_text().replace('"pending"', '"running"'))
    later = before.st_mtime_ns + 10**9  # a coarse clock could give the write the same mtime
    os.utime(path, ns=(later, later))
    assert f.poll() is True and counts(f)[TrialState.RUNNING] == 2


def test_an_unchanged_trial_is_not_reopened(tmp_path):
    planned = make_trials(tmp_path, 5)
    f = Follower(planned)
    with opened(tmp_path) as first:
        f.poll()
    assert sorted(first) == sorted(str(p.dir.status_path) for p in planned)
    with opened(tmp_path) as again:
        for _ in range(3):
            assert f.poll() is False
    assert again == []
    planned[3].dir.set_status(TrialState.RUNNING)
    with opened(tmp_path) as after_change:
        assert f.poll() is True
    assert after_change == [str(planned[3].dir.status_path)]


def test_finished_trials_are_read_once_and_never_looked_at_again(tmp_path, stats):
    planned = make_trials(tmp_path, 3, TrialState.RUNNING, pid=os.getpid())
    done, stopped, running = planned
    finish(done.dir, r1=61.5)
    stopped.dir.set_status(TrialState.STOPPED, stopped_epoch=2)
    f = Follower(planned)
    with opened(tmp_path) as first:
        f.poll()
    # done: result.json only (status.json is not needed); stopped: its status.json
    assert str(done.dir.result_path) in first and str(done.dir.status_path) not in first
    assert str(stopped.dir.status_path) in first
    assert counts(f) == {TrialState.DONE: 1, TrialState.STOPPED: 1, TrialState.RUNNING: 1}
    assert f.snapshot().best == (61.5, "v0 seed=0")
    stats.clear()
    with opened(tmp_path) as later:
        for _ in range(3):
            f.poll()
        assert not f.alive(done) and not f.alive(stopped) and f.alive(running)
    assert later == []
    looked_at = {Path(p).parent for p in stats}
    assert looked_at == {running.dir.path}  # two stats per poll, of the running trial only
    assert len(stats) == 3 * 2


def test_a_waiting_trial_costs_one_stat_a_poll_until_it_runs(tmp_path, stats):
    planned = make_trials(tmp_path, 4)  # pending
    f = Follower(planned)
    f.poll()
    stats.clear()
    f.poll()
    assert sorted(stats) == sorted(str(p.dir.status_path) for p in planned)  # no result.json
    trial = planned[2].dir
    trial.set_status(TrialState.RUNNING)
    stats.clear()
    f.poll()  # its status moved: its result.json is looked at from now on
    assert stats.count(str(trial.result_path)) == 1 and len(stats) == 5
    finish(trial, r1=70.0)
    f.poll()
    assert counts(f) == {TrialState.PENDING: 3, TrialState.DONE: 1}
    # A kill between result.json and status.json: a running trial's result is still seen.
    other = planned[3].dir
    other.set_status(TrialState.RUNNING)
    f.poll()
    other.write_result({"metrics": {"R1": 1.0, "mAP": 1.0}})
    f.poll()
    assert counts(f) == {TrialState.PENDING: 2, TrialState.DONE: 2}


def test_the_shortest_interval_grows_with_the_study(tmp_path):
    clock = [0.0]
    small = Follower(make_trials(tmp_path / "a", 10), clock=lambda: clock[0])
    small.poll()
    assert small.interval == 0.5
    big = Follower(make_trials(tmp_path / "b", 2000), clock=lambda: clock[0])
    big.poll()  # a change (the first look): the floor, 1 ms per unfinished trial
    assert big.interval == pytest.approx(2.0)
    big.poll()
    assert big.interval == pytest.approx(4.0)


def test_unreadable_files_count_as_unreadable(tmp_path):
    planned = make_trials(tmp_path, 3)
    planned[0].dir.status_path.write_text('{"state": "runn')
    planned[1].dir.result_path.write_text("{}")  # no metrics.R1 in it
    f = Follower(planned)
    f.poll()
    assert counts(f) == {UNREADABLE: 2, TrialState.PENDING: 1}
    finish(planned[1].dir)  # rewritten whole: read again, and done
    f.poll()
    assert counts(f) == {UNREADABLE: 1, TrialState.DONE: 1, TrialState.PENDING: 1}


def test_the_interval_backs_off_and_resets(tmp_path):
    planned = make_trials(tmp_path, 2)
    now = [100.0]
    f = Follower(planned, clock=lambda: now[0])
    assert f.due()
    f.poll()  # the first look: a change (every status.json read)
    waits = []
    for _ in range(7):
        waits.append(f.interval)
        assert not f.due()
        now[0] += f.interval
        assert f.due()
        f.poll()  # nothing changed
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    planned[0].dir.set_status(TrialState.RUNNING)
    now[0] += f.interval
    assert f.poll() is True and f.interval == 0.5  # a change: back to the shortest
    f.poll()
    f.poll()
    assert f.interval == 2.0 and not f.due()
    f.wake()  # a job ended
    assert f.due() and f.interval == 0.5


def test_the_follower_counts_what_a_fresh_read_counts(tmp_path):
    planned = make_trials(tmp_path, 6)
    f = Follower(planned)
    f.poll()
    finish(planned[0].dir)
    planned[1].dir.set_status(TrialState.INTERRUPTED)
    planned[2].dir.set_status(TrialState.STOPPED)
    planned[3].dir.status_path.unlink()
    planned[4].dir.set_status(TrialState.DONE)  # done, but no result.json: pending
    f.poll()
    assert f.snapshot() == snapshot(planned)
    line = progress_line("study", f.snapshot())
    assert line[9:] == (
        "study: 1 done, 0 running, 0 failed, 4 pending, 1 stopped early | best test R1 50.00 "
        "(v0 seed=0)"
    )


def test_the_progress_line_is_printed_when_it_changes(tmp_path, capsys):
    planned = make_trials(tmp_path, 2)
    view = ProgressView(Follower(planned))  # not a terminal: one line per change
    view.tick()
    view.tick()
    assert capsys.readouterr().out.count("\n") == 1
    planned[0].dir.set_status(TrialState.RUNNING)
    view.follower.wake()
    view.tick()
    out = capsys.readouterr().out
    assert out.endswith("study: 0 done, 1 running, 0 failed, 1 pending\n")
    view.close()  # the last line of a launch, printed even though nothing changed
    assert capsys.readouterr().out.count("\n") == 1


def test_follow_only_follows_an_earlier_launch_until_none_is_alive(tmp_path, capsys):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        host = socket.gethostname()
        planned = make_trials(tmp_path, 3, TrialState.RUNNING, pid=proc.pid, host=host)
        finish(planned[0].dir)

        # The trainers end: one finishes, the other is killed without a word.
        def end() -> None:
            finish(planned[1].dir, r1=70.0)
            proc.kill()

        threading.Timer(1.0, end).start()
        assert follow_only(planned) == 0
    finally:
        proc.kill()
        proc.wait()
    out = capsys.readouterr().out
    # each trial seen running is named once, with where its log is
    assert out.count("running v1 seed=1 (t1), log ") == 1
    lines = [ln for ln in out.splitlines() if " study: " in ln]
    assert lines[0].endswith(
        "study: 1 done, 2 running, 0 failed, 0 pending | best test R1 50.00 (v0 seed=0)"
    )
    assert lines[-1].endswith(
        "study: 2 done, 1 running, 0 failed, 0 pending | best test R1 70.00 (v1 seed=1)"
    )
