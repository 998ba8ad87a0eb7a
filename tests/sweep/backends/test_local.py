"""The environment a local trial job starts with (`local.run_local`), without starting one.

submitit's LocalExecutor copies ``os.environ`` when it submits; a stand-in executor records
that copy, so no process is started.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import submitit
from support.executors import RecordingExecutor as _RecordingExecutor

from bilma.runs.trial_dir import TrialDir
from bilma.sweep.backends import local as launcher
from bilma.sweep.plan import Action, Planned

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
