"""`plan.classify`: what a launch does with one trial, decided from its directory alone.

Trial directories are written by hand in tmp_path; no process is started. A live pid is this
test's own; a dead one is above the kernel's highest possible pid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bilma.runs.trial_dir import TrialDir
from bilma.sweep import plan
from bilma.sweep.plan import Action, classify

RESUME, RETRY, SUBMIT = Action.RESUME, Action.RETRY, Action.SUBMIT
SKIP_DONE, SKIP_FAILED, SKIP_RUNNING = Action.SKIP_DONE, Action.SKIP_FAILED, Action.SKIP_RUNNING

ALIVE = os.getpid()
DEAD = 2**22 + 1  # above PID_MAX_LIMIT (2**22 on 64-bit Linux): no process has it
HOST = socket.gethostname()


def make(
    tmp_path: Path,
    state: str | None = None,
    *,
    result: bool = False,
    ckpt: bool = False,
    epochs: int = 0,
    **status,
) -> TrialDir:
    """A trial directory with the given status.json fields, result, checkpoint, epochs."""
    d = TrialDir(tmp_path / "runs" / "study" / "abc123")
    d.ckpt_dir.mkdir(parents=True)
    if state is not None:
        d.set_status(state, **status)
    if ckpt:
        d.last_ckpt.write_bytes(b"not read by classify")
    for epoch in range(1, epochs + 1):
        d.append_metrics({"split": "train", "epoch": epoch, "loss": 1.0 / epoch})
        d.append_metrics({"split": "val", "epoch": epoch, "R1": 10.0 * epoch})
    if result:
        d.write_result({"metrics": {"R1": 50.0, "mAP": 40.0}})
    return d


@pytest.mark.parametrize("retry_failed", [False, True])
def test_no_directory_is_submitted(tmp_path, retry_failed):
    d = TrialDir(tmp_path / "runs" / "study" / "never-made")
    assert classify(d, retry_failed) == (SUBMIT, "")
    assert not d.path.exists()  # classifying writes nothing


def test_empty_directory_is_submitted(tmp_path):
    assert classify(make(tmp_path), False) == (SUBMIT, "")


@pytest.mark.parametrize("retry_failed", [False, True])
def test_a_result_means_done_whatever_the_status(tmp_path, retry_failed):
    d = make(tmp_path, "failed", result=True, ckpt=True, error="late crash")
    assert classify(d, retry_failed) == (SKIP_DONE, "")
    d = make(tmp_path / "b", "running", result=True, pid=ALIVE, host=HOST)
    assert classify(d, retry_failed) == (SKIP_DONE, "")


def test_failed_is_skipped_unless_retried(tmp_path):
    d = make(tmp_path, "failed", ckpt=True, epochs=2, error="CUDA out of memory")
    assert classify(d, False) == (SKIP_FAILED, "CUDA out of memory")
    # A retry, not a resume, even with a checkpoint: the job itself resumes from it.
    assert classify(d, True) == (RETRY, "CUDA out of memory")
    bare = make(tmp_path / "b", "failed")
    assert classify(bare, False) == (SKIP_FAILED, "")
    assert classify(bare, True) == (RETRY, "")


@pytest.mark.parametrize("retry_failed", [False, True])
def test_interrupted_resumes_from_its_last_epoch(tmp_path, retry_failed):
    d = make(tmp_path, "interrupted", ckpt=True, epochs=3, pid=DEAD, host=HOST)
    assert classify(d, retry_failed) == (RESUME, "from epoch 3")
    # A checkpoint with no train record yet (killed before the first epoch's line).
    d = make(tmp_path / "b", "interrupted", ckpt=True)
    assert classify(d, retry_failed) == (RESUME, "from epoch ?")
    # Interrupted before the first checkpoint: starts afresh.
    d = make(tmp_path / "c", "interrupted", epochs=1)
    assert classify(d, retry_failed) == (SUBMIT, "")


@pytest.mark.parametrize("state", ["running", "pending"])
def test_alive_process_is_left_running(tmp_path, state):
    d = make(tmp_path, state, ckpt=True, epochs=1, pid=ALIVE, host=HOST)
    assert classify(d, True) == (SKIP_RUNNING, f"pid {ALIVE}")
    # Submitted, trainer not started yet: only the job's pid is known.
    d = make(tmp_path / "b", state, backend="local", job_id="7", job_pid=ALIVE, host=HOST)
    assert classify(d, False) == (SKIP_RUNNING, f"pid {ALIVE}")


@pytest.mark.parametrize("state", ["running", "pending"])
def test_dead_process_resumes_or_restarts(tmp_path, state):
    d = make(tmp_path, state, ckpt=True, epochs=2, pid=DEAD, job_pid=DEAD, host=HOST)
    assert classify(d, False) == (RESUME, "from epoch 2")
    d = make(tmp_path / "b", state, pid=DEAD, host=HOST)
    assert classify(d, False) == (SUBMIT, "")


def test_a_pid_of_another_machine_counts_as_gone(tmp_path):
    # This machine's live pid, recorded by another host: not this process, not alive here.
    d = make(tmp_path, "running", ckpt=True, epochs=4, pid=ALIVE, host=HOST + "-elsewhere")
    assert classify(d, False) == (RESUME, "from epoch 4")


def test_an_alive_pid_in_a_finished_state_does_not_block(tmp_path):
    # Only running and pending trials are checked for a live process.
    d = make(tmp_path, "interrupted", ckpt=True, epochs=1, pid=ALIVE, host=HOST)
    assert classify(d, False) == (RESUME, "from epoch 1")
    d = make(tmp_path / "b", "failed", pid=ALIVE, host=HOST, error="boom")
    assert classify(d, False) == (SKIP_FAILED, "boom")


@pytest.mark.parametrize(("queued", "expected"), [(True, SKIP_RUNNING), (False, RESUME)])
def test_slurm_job_is_asked_to_the_queue(tmp_path, monkeypatch, queued, expected):
    asked = []

    def fake_squeue(job_id: str) -> bool:
        asked.append(job_id)
        return queued

    monkeypatch.setattr(plan, "_slurm_alive", fake_squeue)
    # The pid is this process's, but a SLURM trial is alive only if its job is queued.
    d = make(tmp_path, "pending", ckpt=True, epochs=1, backend="slurm", job_id=4242, pid=ALIVE)
    action, _note = classify(d, False)
    assert (action, asked) == (expected, ["4242"])


def test_stopped_early_trial_is_finished_and_not_rerun(tmp_path):
    d = TrialDir(tmp_path / "t")
    d.path.mkdir()
    d.set_status("stopped", stopped_epoch=3, stop_reason="ASHA")
    d.ckpt_dir.mkdir()
    d.last_ckpt.write_bytes(b"x")
    for retry in (False, True):
        action, note = classify(d, retry_failed=retry)
        assert action == SKIP_DONE
        assert note == "stopped early at epoch 3"
