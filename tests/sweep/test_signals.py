"""The launcher's stop signals on the local backend (`bilma.sweep.signals`): real launchers,
real trial processes, real signals, to the launcher alone or to its whole process group (what
a terminal does on Ctrl-C and when it is closed)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.paths import REPO
from sweep.test_cli import first_epoch_done, launch, mlflow_runs, write_grid

from bilma.fileio import pid_alive
from bilma.runs.lock import is_locked


def long_grid(tmp_path: Path, root: Path) -> Path:
    """One trial of 3 epochs x 12 steps: long enough to be signalled mid-training."""
    path = write_grid(tmp_path, root, seeds=[1], variants={"long": {}})
    text = path.read_text().replace("train.max_steps_per_epoch: 2", "train.max_steps_per_epoch: 12")
    path.write_text(text.replace("train.epochs: 1", "train.epochs: 3"))
    return path


def the_trial(tmp_path: Path, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list((tmp_path / "runs" / "launch-test").glob("*/status.json"))
        if found:
            return found[0].parent
        time.sleep(0.05)
    raise AssertionError("no trial folder")


def status(trial: Path) -> dict:
    return json.loads((trial / "status.json").read_text())


def wait_for_state(trial: Path, state: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if status(trial).get("state") == state:
                return
        except (OSError, ValueError):
            pass  # not written yet
        time.sleep(0.02)
    raise AssertionError(f"the trial never became {state}")


def assert_no_trial_process(trial: Path) -> None:
    """Nothing trains the trial: its lock is free and the pid it recorded has gone."""
    assert not is_locked(trial), f"a process still trains {trial}"
    pid = status(trial).get("pid")
    assert not (isinstance(pid, int) and pid_alive(pid)), f"trial process {pid} survives"


def assert_stopped(trial: Path) -> None:
    """The trial saved and stopped: interrupted, last.pt written, no process left."""
    assert_no_trial_process(trial)
    st = status(trial)
    assert st["state"] == "interrupted", st
    assert (trial / "ckpt" / "last.pt").exists()
    assert not (trial / "result.json").exists()


def parent_status(tmp_path: Path) -> str:
    (parent,) = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("kind") == "sweep"]
    return parent.info.status


def test_sighup_to_the_group_saves_stops_and_the_relaunch_resumes(synth_small, tmp_path):
    """The terminal closed: SIGHUP reaches the launcher and every trial process of its group.
    Before, the trial died at once without saving and the parent run stayed RUNNING."""
    grid = long_grid(tmp_path, synth_small)
    proc = launch("--grid", str(grid), "--max-parallel", "1", cwd=tmp_path, start_new_session=True)
    trial = first_epoch_done(tmp_path)
    os.killpg(proc.pid, signal.SIGHUP)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGHUP, out
    assert "SIGHUP received: asking running trials to save and stop" in out, out
    assert "stopped; run the same command to resume" in out and "Traceback" not in out
    assert_stopped(trial)
    assert re.match(r"SIGHUP received: saved epoch \d step \d+", status(trial)["error"])
    assert parent_status(tmp_path) == "KILLED"

    again = launch("--grid", str(grid), cwd=tmp_path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "1 to resume" in out and (trial / "result.json").exists()
    assert parent_status(tmp_path) == "FINISHED"


@pytest.mark.slow
def test_sigterm_to_the_launcher_alone_stops_its_trials(synth_small, tmp_path):
    """`kill PID` of the launcher: its trials (which got no signal) save and stop."""
    grid = long_grid(tmp_path, synth_small)
    proc = launch("--grid", str(grid), "--max-parallel", "1", cwd=tmp_path, start_new_session=True)
    trial = first_epoch_done(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped; run the same command to resume" in out and "Traceback" not in out
    assert_stopped(trial)
    assert re.match(r"SIGTERM received: saved epoch \d step \d+", status(trial)["error"])
    assert parent_status(tmp_path) == "KILLED"


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_in_one_line(synth_small, tmp_path):
    """Ctrl-C twice: no traceback, one line, the parent run closed; the trial, already asked
    to stop, still saves."""
    grid = long_grid(tmp_path, synth_small)
    proc = launch("--grid", str(grid), "--max-parallel", "1", cwd=tmp_path, start_new_session=True)
    trial = first_epoch_done(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.1)  # the first is being handled: the trial has not finished saving yet
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "stopping now: 1 trial interrupted, resume with the same command" in out, out
    assert parent_status(tmp_path) == "KILLED"
    deadline = time.time() + 60  # the trial's save goes on after the launcher left
    while is_locked(trial) and time.time() < deadline:
        time.sleep(0.1)
    assert_stopped(trial)


@pytest.mark.slow
def test_ctrl_c_during_a_trials_start_up_is_not_lost(synth_small, tmp_path):
    """Ctrl-C while the trial's job starts (submitit's controller and task up, the trainer not
    yet): before, submitit's task ignored the SIGTERM and the trial trained on after the
    launcher said "stopped"."""
    grid = long_grid(tmp_path, synth_small)
    proc = launch("--grid", str(grid), "--max-parallel", "1", cwd=tmp_path, start_new_session=True)
    trial = the_trial(tmp_path)
    wait_for_state(trial, "pending")  # the job is submitted; its trainer has not started
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "stopped; run the same command to resume" in out and "Traceback" not in out
    assert_no_trial_process(trial)
    assert status(trial)["state"] == "interrupted", status(trial)
    assert not (trial / "result.json").exists()
    assert parent_status(tmp_path) == "KILLED"


@pytest.mark.slow
def test_closing_the_launchers_terminal_stops_its_trials(synth_small, tmp_path):
    """A real hang-up: the launcher runs on a pseudo-terminal (its controlling terminal, with
    the live view) and the terminal is closed. The kernel sends SIGHUP to the launcher; its
    writes to the dead terminal fail from then on, which must not stop the stop."""
    import fcntl
    import pty
    import termios
    import threading

    grid = long_grid(tmp_path, synth_small)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", str(grid)],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:  # what a terminal shows; a full pty buffer would block the launcher
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 4096):
                seen.append(chunk)

    threading.Thread(target=drain, daemon=True).start()
    trial = first_epoch_done(tmp_path)
    os.close(master)  # the terminal window closes
    assert proc.wait(timeout=300) == 128 + signal.SIGHUP, b"".join(seen).decode(errors="replace")
    assert_stopped(trial)
    assert parent_status(tmp_path) == "KILLED"


@pytest.mark.slow
def test_ctrl_c_while_submitit_starts_the_job_is_not_lost(synth_small, tmp_path, monkeypatch):
    """The launcher in this process; Ctrl-C lands just as submitit has started the trial's job,
    before the launcher recorded it. Before, the KeyboardInterrupt lost the job: the launcher
    said "stopped" at once and the trial trained on."""
    from bilma.sweep.backends import local
    from bilma.sweep.expand import expand, load_grid
    from bilma.sweep.plan import plan
    from bilma.sweep.prepare import prepare

    grid = load_grid(long_grid(tmp_path, synth_small), ["tracking.enabled=false"])
    planned = plan(expand(grid))
    prepare(grid, planned)
    real = local.submit_local

    def submit_then_ctrl_c(*args, **kw):
        job = real(*args, **kw)
        os.kill(os.getpid(), signal.SIGINT)  # handled before submit_local returns
        return job

    monkeypatch.setattr(local, "submit_local", submit_then_ctrl_c)
    code = local.run_local(planned, max_parallel=1, timeout_min=10)
    assert code == 130
    (trial,) = [p.dir.path for p in planned]
    assert_no_trial_process(trial)
    assert status(trial)["state"] == "interrupted", status(trial)
    assert not (trial / "result.json").exists()
