"""What a trial used (bilma.training.usage): GPU-hours, CPU-hours, memory and throughput in
result.json and MLflow, summed over the attempts of a resumed trial."""

from __future__ import annotations

import signal

import pytest
import torch
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.errors import Interrupted
from bilma.runs.schema import USAGE_FIELDS
from bilma.runs.trial_dir import TrialDir
from bilma.tracking.mirror import final_metrics
from bilma.training import trainer as train_mod
from bilma.training import usage


def test_cores_held_follow_slurm_else_the_affinity(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert usage.cores_held(world=2) == 12
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setattr(usage.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert usage.cores_held(world=2) == 3  # the processes of one node share these


def test_the_meter_adds_the_attempts_before(monkeypatch):
    clock = iter([100.0, 130.0])  # the attempt started at 100 s; total() at 130 s
    monkeypatch.setattr(usage.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(usage, "cores_held", lambda world: 4)
    meter = usage.UsageMeter(torch.device("cpu"), world=1)
    meter.carry({"wall_seconds": 70.0, "gpu_seconds": 140.0, "cpu_seconds": 280.0,
                 "peak_gpu_mem_gb": 9.5, "peak_host_mem_gb": 1e6})  # fmt: skip
    total = meter.total()
    assert total["wall_seconds"] == 100.0
    assert total["gpu_seconds"] == 140.0  # no GPU in this attempt: nothing added
    assert total["cpu_seconds"] == 280.0 + 4 * 30.0
    assert total["peak_gpu_mem_gb"] == 9.5 and total["peak_host_mem_gb"] == 1e6
    fields = usage.result_fields(total, train_seconds=20.0, train_samples=480)
    assert set(fields) == set(USAGE_FIELDS)
    assert fields["gpu_hours"] == 140.0 / 3600 and fields["cpu_hours"] == 400.0 / 3600
    assert fields["samples_per_s"] == 24.0 and fields["train_samples"] == 480


def test_a_cpu_trial_records_cpu_hours_and_no_gpu_hours(synth_small, tmp_path):
    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs"))
    result = train_mod.train(cfg, progress=False)
    assert result["gpu_hours"] == 0.0 and result["peak_gpu_mem_gb"] is None
    assert result["cpu_hours"] > 0 and 0.01 < result["peak_host_mem_gb"] < 100
    assert result["train_samples"] == 2 * 6 * 8  # epochs x steps x batch
    assert result["samples_per_s"] == pytest.approx(96 / result["train_seconds"])
    assert TrialDir.for_config(cfg).read_result() == result
    logged = final_metrics(result)  # the MLflow run's final metrics
    assert logged["cpu_hours"] == result["cpu_hours"] and logged["gpu_hours"] == 0.0
    assert "peak_gpu_mem_gb" not in logged  # None: not measured, not logged


def test_a_resumed_trial_adds_up_its_attempts(synth_small, tmp_path, monkeypatch):
    """Stopped by a signal after 3 steps, then resumed: the result holds the sums of both
    attempts (the first attempt's saved figures are inflated here to tell them apart). With
    train.keep_checkpoints=best, last.pt stays until the trial is done, then goes."""
    overrides = tiny_overrides(synth_small, tmp_path / "runs", "train.keep_checkpoints=best")
    cfg = load_config(None, overrides)
    monkeypatch.setattr(usage, "cores_held", lambda world: 2)
    real_step = train_mod.Trainer._step

    def step(self, batch, bar):
        real_step(self, batch, bar)
        if self.state.global_step == 3:
            self.stop.signum = signal.SIGTERM  # as the handler of a real SIGTERM sets it

    monkeypatch.setattr(train_mod.Trainer, "_step", step)
    with pytest.raises(Interrupted):
        train_mod.train(cfg, progress=False)
    trial = TrialDir.for_config(cfg)
    ckpt = torch.load(trial.last_ckpt, weights_only=True)
    first = ckpt["state"]["usage"]
    assert (
        first["cpu_seconds"] == pytest.approx(2 * first["wall_seconds"])
        and first["wall_seconds"] > 0
    )
    ckpt["state"]["usage"] = {**first, "cpu_seconds": 7200.0, "peak_host_mem_gb": 500.0}
    torch.save(ckpt, trial.last_ckpt)

    monkeypatch.setattr(train_mod.Trainer, "_step", real_step)
    result = train_mod.train(cfg, progress=False)
    assert 2.0 < result["cpu_hours"] < 2.0 + 2 * 600 / 3600  # 7200 s + 2 cores x this attempt
    assert result["peak_host_mem_gb"] == 500.0  # the largest over the attempts
    assert result["train_samples"] == 96 and result["gpu_hours"] == 0.0
    assert not trial.last_ckpt.exists() and trial.best_ckpt.is_file()  # retention, once done
