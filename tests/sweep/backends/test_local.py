"""The environment a local trial job starts with (`local.run_local`), without starting one.

submitit's LocalExecutor copies ``os.environ`` when it submits; a stand-in executor records
that copy, so no process is started.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import submitit
from support.executors import RecordingExecutor as _RecordingExecutor

from bilma.runs.trial_dir import TrialDir
from bilma.sweep.backends import local as launcher
from bilma.sweep.plan import Action, Planned
from bilma.sweep.retry import RetryPolicy

SUBMIT = Action.SUBMIT


def test_local_jobs_get_their_threads_and_none_of_the_launchers_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(submitit, "LocalExecutor", _RecordingExecutor)
    _RecordingExecutor.seen = []
    # The launcher itself runs as one task of a 4-task SLURM job, under torchrun's variables.
    for name, value in {
        "SLURM_JOB_ID": "77",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "0",
        "RANK": "0",
        "WORLD_SIZE": "4",
        "MASTER_PORT": "29500",
        "OMP_NUM_THREADS": "16",
        "BILMA_TEST_KEPT": "yes",
    }.items():
        monkeypatch.setenv(name, value)
    before = dict(os.environ)
    d = TrialDir(tmp_path / "runs" / "s" / "t1")
    d.path.mkdir(parents=True)
    trial = SimpleNamespace(study="s", variant="v", seed=0)
    planned = [Planned(trial, d, SUBMIT)]  # type: ignore[arg-type]

    code = launcher.run_local(planned, max_parallel=2, timeout_min=1)

    (env,) = _RecordingExecutor.seen
    assert not [k for k in env if k.startswith("SLURM_")]
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(env)
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert env["BILMA_TEST_KEPT"] == "yes"
    # The launcher's own environment is back as it was.
    assert dict(os.environ) == before
    # The stand-in job ended without a result: the trial is recorded as failed.
    assert code == 1 and d.status()["state"] == "failed"
    assert "FAILED v seed=0" in capsys.readouterr().out
    assert d.status().get("cause") is None  # died without a word: no cause known locally


def test_an_unset_thread_count_stays_unset_after_submitting(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit, "LocalExecutor", _RecordingExecutor)
    _RecordingExecutor.seen = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    d = TrialDir(tmp_path / "runs" / "s" / "t1")
    d.path.mkdir(parents=True)
    trial = SimpleNamespace(study="s", variant="v", seed=0)
    launcher.run_local([Planned(trial, d, SUBMIT)], max_parallel=1, timeout_min=1)  # type: ignore[arg-type]
    assert _RecordingExecutor.seen[0]["OMP_NUM_THREADS"] == str(os.cpu_count() or 1)
    assert "OMP_NUM_THREADS" not in os.environ


class _ScriptedExecutor:
    """Stands in for submitit.LocalExecutor: each submit "runs" the next scripted attempt at
    once, as the trainer would record it (an exception's cause, or a result)."""

    script: list[str | None] = []  # per attempt: a cause it fails of, or None (it finishes)
    started: list[float] = []

    def __init__(self, folder: Path, max_num_timeout: int) -> None:
        self.trial = TrialDir(folder.parent)

    def update_parameters(self, **params) -> None:
        pass

    def submit(self, fn) -> SimpleNamespace:
        cause = _ScriptedExecutor.script.pop(0)
        _ScriptedExecutor.started.append(time.time())
        n = len(_ScriptedExecutor.started)
        ran: list[bool] = []

        def done() -> bool:  # the attempt runs on the first look, after mark_submitted
            if not ran:
                ran.append(True)
                self.trial.start_attempt()
                if cause is None:
                    self.trial.write_result({"metrics": {"R1": 50.0, "mAP": 40.0}})
                    self.trial.end_attempt("done")
                else:
                    self.trial.end_attempt("failed", cause=cause, error=f"RuntimeError: {cause}")
            return True

        return SimpleNamespace(
            job_id=str(2**22 + n),
            done=done,
            state="DONE",
            paths=SimpleNamespace(stderr=self.trial.path / "job.err"),
        )


def _scripted_run(tmp_path, monkeypatch, script, policy):
    monkeypatch.setattr(submitit, "LocalExecutor", _ScriptedExecutor)
    monkeypatch.setattr(launcher, "TICK_S", 0.01)
    _ScriptedExecutor.script, _ScriptedExecutor.started = list(script), []
    d = TrialDir(tmp_path / "runs" / "s" / "t1")
    d.path.mkdir(parents=True)
    trial = SimpleNamespace(study="s", variant="v", seed=0)
    planned = [Planned(trial, d, SUBMIT)]  # type: ignore[arg-type]
    code = launcher.run_local(planned, max_parallel=1, timeout_min=1, retry=policy)
    return code, d


def test_a_transient_cause_is_retried_after_its_backoff(tmp_path, monkeypatch, capsys):
    """A NCCL timeout, then a node failure: retried twice (backoff 0.2 s, then 0.4 s), and
    the third attempt finishes."""
    script = ["communication_timeout", "node_failure", None]
    code, d = _scripted_run(tmp_path, monkeypatch, script, RetryPolicy(2, 0.2))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "retrying v seed=0 in 0.2 s: communication_timeout (automatic retry 1 of 2)" in out
    assert "retrying v seed=0 in 0.4 s: node_failure (automatic retry 2 of 2)" in out
    t = _ScriptedExecutor.started
    assert t[1] - t[0] >= 0.2 and t[2] - t[1] >= 0.4  # the backoff was waited
    st = d.status()
    assert (
        d.state() == "done"
        and st["state"] == "done"
        and st["auto_retries"] == 2
        and st["attempts"] == 3
    )
    assert [(r["cause"], r.get("retried")) for r in st["attempt_log"]] == [
        ("communication_timeout", True),
        ("node_failure", True),
        (None, None),
    ]
    assert [r["job_id"] for r in st["attempt_log"]] == [str(2**22 + n) for n in (1, 2, 3)]


def test_retries_are_bounded_and_other_causes_never_retry(tmp_path, monkeypatch, capsys):
    code, d = _scripted_run(tmp_path, monkeypatch, ["preemption", "preemption"], RetryPolicy(1, 0))
    assert code == 1 and len(_ScriptedExecutor.started) == 2  # one retry, then it stays failed
    assert d.status()["cause"] == "preemption" and d.status()["auto_retries"] == 1
    for cause in ("bug", "data_error", "config_error", "out_of_memory"):
        capsys.readouterr()
        code, d = _scripted_run(tmp_path / cause, monkeypatch, [cause], RetryPolicy(2, 0))
        out = capsys.readouterr().out
        assert code == 1 and len(_ScriptedExecutor.started) == 1 and "retrying" not in out
        assert f"FAILED v seed=0 ({cause}): RuntimeError: {cause}" in out
