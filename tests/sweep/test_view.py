"""The launcher's live view over real trial directories: a table redrawn in place on a terminal
(rich), one line per change in a log file; a trainer's progress.json feeds both."""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from bilma.runs.schema import TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.sweep.follow import Follower
from bilma.sweep.plan import Action, Planned
from bilma.sweep.view import ProgressView, fmt_eta, position


def trials(tmp_path: Path, n: int) -> list[Planned]:
    out = []
    for i in range(n):
        d = TrialDir(tmp_path / "runs" / "study" / f"t{i}")
        d.path.mkdir(parents=True)
        d.set_status(TrialState.PENDING, backend="local", job_id=str(100 + i))
        trial = SimpleNamespace(study="study", variant="IRRA" if i == 0 else "BiLMa", seed=1 + i)
        out.append(Planned(trial, d, Action.SUBMIT))  # type: ignore[arg-type]
    return out


def progress(epoch: int, step: int, loss: float = 3.2141, eta: float = 80.0) -> dict:
    return {
        "phase": "train",
        "epoch": epoch,
        "epochs": 10,
        "step": step,
        "steps": 50,
        "loss": loss,
        "samples_per_s": 152.4,
        "eta_s": eta,
    }


def plain_view(planned: list[Planned]) -> tuple[ProgressView, io.StringIO]:
    out = io.StringIO()
    follower = Follower(planned, min_interval=0.0, max_interval=0.0)
    return ProgressView(follower, Console(file=out, force_terminal=False, width=200)), out


def test_position_and_eta_in_words_a_researcher_reads():
    assert position(None)[0] == "starting"
    assert position(progress(4, 31)) == ("4/10", "31/50", "3.214", "152", "1m20s")
    assert position({**progress(4, 50), "phase": "eval"})[0] == "4/10 eval"
    assert fmt_eta(3725) == "1h02m" and fmt_eta(42) == "42s" and fmt_eta(None) == ""


def test_a_log_file_gets_one_line_per_change(tmp_path):
    planned = trials(tmp_path, 2)
    view, buf = plain_view(planned)

    def new_output() -> str:
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return text

    view.tick()
    view.tick()
    out = new_output()
    assert out.count("study: 0 done, 0 running, 0 failed, 2 pending") == 1

    d = planned[0].dir
    d.set_status(TrialState.RUNNING, backend="local", job_id="100")
    view.follower.wake()  # as the launcher does when a job starts: poll at the next tick
    view.tick()
    out = new_output()
    log = d.path / "logs" / "100_0_log.err"
    assert f"running IRRA seed=1 (t0), log {log}" in out
    assert "study: 0 done, 1 running, 0 failed, 1 pending" in out

    d.write_progress(progress(1, 10))
    view.tick()
    d.write_progress(progress(1, 20))  # same epoch: nothing new to say
    view.tick()
    d.write_progress(progress(2, 5, loss=2.5, eta=30))
    view.tick()
    lines = new_output().splitlines()
    assert lines == [
        "  IRRA seed=1: epoch 1/10, loss 3.214, 152 samples/s, ETA 1m20s",
        "  IRRA seed=1: epoch 2/10, loss 2.500, 152 samples/s, ETA 30s",
    ]
    view.close()
    assert new_output().count("study: 0 done, 1 running") == 1  # the last line


def test_a_terminal_gets_a_table_redrawn_in_place(tmp_path):
    planned = trials(tmp_path, 2)
    for p in planned:
        p.dir.set_status(TrialState.RUNNING, backend="local", job_id=p.dir.status()["job_id"])
    planned[0].dir.write_progress(progress(4, 31))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=220, color_system=None)
    view = ProgressView(Follower(planned, min_interval=0.0), console)
    view.tick(force=True)
    view.close()
    screen = buf.getvalue()
    assert "study: 0 done, 2 running, 0 failed, 0 pending" in screen
    row = next(ln for ln in screen.splitlines() if "IRRA seed=1" in ln)
    for cell in ("4/10", "31/50", "3.214", "152", "1m20s", "t0/logs/100_0_log.err"):
        assert cell in row, row
    starting = next(ln for ln in screen.splitlines() if "BiLMa seed=2" in ln)
    assert "starting" in starting
    assert "\x1b[" in screen  # drawn with cursor moves, not appended


def test_progress_json_is_a_view_never_fsynced_and_never_fatal(tmp_path, monkeypatch):
    import os

    d = TrialDir(tmp_path / "t")
    d.path.mkdir()
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    d.write_progress(progress(1, 1))
    assert synced == []
    got = d.read_progress()
    assert got["epoch"] == 1 and abs(got["updated"] - time.time()) < 60
    d.progress_path.write_text("{torn")
    assert d.read_progress() is None
    (tmp_path / "ro").mkdir()
    ro = TrialDir(tmp_path / "ro" / "missing-parent" / "t")  # cannot be written
    ro.write_progress(progress(1, 1))  # no exception: training goes on
    assert ro.read_progress() is None
