"""One process per trial: the trainer's flock, and the launchers' claim (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO
from support.tiny import tiny_overrides

from bilma.runs.lock import (
    TrialBusy,
    acquire_trial_lock,
    claim,
    holder,
    is_locked,
    release_trial_lock,
)

HOLD = (
    "import sys, time\n"
    "from bilma.runs.lock import acquire_trial_lock\n"
    "acquire_trial_lock(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


def hold_in_another_process(trial: Path) -> subprocess.Popen:
    """A second process that takes the trial's lock and keeps it until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(trial)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def try_in_another_process(trial: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom bilma.runs.lock import acquire_trial_lock, TrialBusy\n"
        "try:\n    acquire_trial_lock(sys.argv[1])\nexcept TrialBusy as e:\n"
        "    print(e)\n    sys.exit(3)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(trial)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )


def test_a_second_process_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    trial = tmp_path / "study" / "abc123"
    proc = hold_in_another_process(trial)
    try:
        assert is_locked(trial)
        assert holder(trial).startswith(f"pid {proc.pid} on ")
        with pytest.raises(TrialBusy) as e:
            acquire_trial_lock(trial)
        assert f"pid {proc.pid}" in str(e.value) and str(trial) in str(e.value)
        assert "\n" not in str(e.value)
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel frees the lock
        proc.wait()
    assert not is_locked(trial)
    acquire_trial_lock(trial)
    try:
        assert holder(trial).startswith(f"pid {os.getpid()} on ")
        other = try_in_another_process(trial)
        assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    finally:
        release_trial_lock(trial)
    assert not is_locked(trial)
    assert try_in_another_process(trial).returncode == 0


def test_same_process_takes_it_again_and_a_forked_child_cannot_release_it(tmp_path):
    trial = tmp_path / "t"
    acquire_trial_lock(trial)
    try:
        acquire_trial_lock(trial)  # a second train() in one process: no self-deadlock
        pid = os.fork()
        if pid == 0:  # a forked helper (e.g. a data loader worker) exiting
            release_trial_lock(trial)
            os._exit(0)
        os.waitpid(pid, 0)
        assert try_in_another_process(trial).returncode == 3
    finally:
        release_trial_lock(trial)
    assert try_in_another_process(trial).returncode == 0


def test_helpers_of_a_killed_trainer_do_not_block_the_next_one(tmp_path):
    """A trainer killed hard leaves forked helpers (data loader workers) that share its lock
    for a few seconds: the trial does not count as running, and the next trainer waits."""
    trial = tmp_path / "t"
    code = HOLD.replace(
        "print('held', flush=True)",
        "import os\nif os.fork() == 0:\n    time.sleep(3)\n    os._exit(0)\n"
        "print('held', flush=True)",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(trial)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert try_in_another_process(trial).returncode == 0  # waited for the orphan, then took it
    assert not is_locked(trial)


def test_claim_waits_for_the_other_launcher(tmp_path):
    trial = tmp_path / "t"
    marker = tmp_path / "submitted-by-the-other"
    code = (
        "import sys, time, pathlib\nfrom bilma.runs.lock import claim\n"
        "with claim(sys.argv[1]):\n    print('claimed', flush=True)\n    time.sleep(1.0)\n"
        "    pathlib.Path(sys.argv[2]).write_text('x')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(trial), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdout.readline().strip() == "claimed"
    with claim(trial):
        # Only once the other launcher has finished its part do we get the claim.
        assert marker.exists()
    assert proc.wait(timeout=60) == 0


def test_train_refuses_a_trial_that_another_process_trains(synth_small, tmp_path):
    from bilma.config import load_config
    from bilma.runs.trial_dir import TrialDir
    from bilma.training.trainer import train

    overrides = tiny_overrides(
        synth_small, tmp_path / "runs", "train.epochs=1", "train.max_steps_per_epoch=2"
    )
    cfg = load_config(None, overrides)
    trial = TrialDir.for_config(cfg)
    proc = hold_in_another_process(trial.path)
    try:
        with pytest.raises(TrialBusy, match=f"pid {proc.pid}"):
            train(cfg, progress=False)
        # Refused before it wrote anything: the other process's files are untouched.
        assert sorted(p.name for p in trial.path.iterdir()) == [".lock"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = train(cfg, progress=False)  # the holder is gone: the trial runs, once
    assert result["epochs"] == 1 and not is_locked(trial.path)
    status = json.loads(trial.status_path.read_text())
    assert status["state"] == "done" and status["attempts"] == 1
