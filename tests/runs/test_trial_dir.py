"""Trial directories: config, status, metrics, result, provenance (bilma.runs.trial_dir)."""

# ruff: noqa: F811 (pytest fixtures imported from tracking_support are used as parameters)
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support.tracking import (  # noqa: F401 (fixtures are used by name)
    _isolated,
    finish_trial,
    make_cfg,
    store,
    write_records,
)

from bilma.config import trial_id
from bilma.fileio import atomic_torch_save, atomic_write_json, atomic_write_text
from bilma.runs.launch import Launch, read_launch, write_launch
from bilma.runs.schema import LAUNCH_FIELDS, LAUNCH_FILE, USAGE_FIELDS
from bilma.runs.trial_dir import (
    RESULT_METRICS,
    TrialConflictError,
    TrialDir,
    find_trials,
    make_result,
)

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def test_init_writes_config_that_reloads(tmp_path: Path) -> None:
    exp = {"mim.mask_ratio": 0.3, "data.image_size": [256, 128]}
    cfg = make_cfg(tmp_path, **exp)
    trial = TrialDir.for_config(cfg)
    assert trial.path == tmp_path / "runs" / "s" / trial_id(cfg)
    trial.init(cfg)
    assert trial.config_path.is_file() and trial.ckpt_dir.is_dir()
    assert trial.read_config() == cfg
    trial.init(cfg)  # a resume: same experiment, accepted
    # Values outside the trial id (worker count, tracking) do not make another experiment.
    trial.init(make_cfg(tmp_path, **exp, **{"data.num_workers": 7, "tracking.variant": "x"}))
    assert trial.read_config() == cfg  # the first config.yaml stays


def test_init_refuses_a_different_experiment(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    with pytest.raises(TrialConflictError) as e:
        trial.init(make_cfg(tmp_path, **{"train.seed": 4}))
    msg = str(e.value)
    assert str(trial.config_path) in msg
    assert "train.seed: 3 there, 4 now" in msg
    assert trial.read_config() == cfg


def test_status_transitions_and_attempts(tmp_path: Path, monkeypatch) -> None:
    trial = TrialDir(tmp_path / "t")
    assert trial.status() == {}
    trial.set_status("pending")
    assert trial.status()["state"] == "pending" and trial.status()["attempts"] == 0

    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert trial.start_attempt() == 1
    st = trial.status()
    assert st["state"] == "running" and st["pid"] > 0 and st["host"]
    assert (st["slurm_job_id"], st["slurm_array_job_id"], st["slurm_array_task_id"]) == (
        "1234",
        "1200",
        "5",
    )
    trial.set_status("failed", error="RuntimeError: boom", traceback="Traceback ...")
    assert trial.start_attempt() == 2
    trial.set_status("interrupted")
    assert trial.start_attempt() == 3
    st = trial.set_status("done")
    assert st["state"] == "done" and st["attempts"] == 3
    assert st["error"] == "RuntimeError: boom"  # the last error is kept
    assert trial.status() == st
    with pytest.raises(ValueError, match="unknown trial state 'finished'"):
        trial.set_status("finished")


def test_atomic_writes_leave_no_tmp_files(tmp_path: Path) -> None:
    import torch

    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "ckpt" / "last.pt")
    atomic_write_text(tmp_path / "a.txt", "two")
    # A failing write keeps the old file and leaves nothing behind.
    with pytest.raises(Exception):  # noqa: B017 (pickle's error type is an implementation detail)
        atomic_torch_save({"f": lambda: 0}, tmp_path / "ckpt" / "last.pt")
    trial = TrialDir(tmp_path / "t")
    trial.set_status("running")
    trial.write_result({"metrics": {}})

    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["a.txt", "b.json", "ckpt/last.pt", "t/result.json", "t/status.json"]
    assert (tmp_path / "a.txt").read_text() == "two"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert torch.load(tmp_path / "ckpt" / "last.pt")["w"].tolist() == [0, 1, 2]


def test_metrics_survive_a_torn_last_line(tmp_path: Path, caplog) -> None:
    trial = TrialDir(tmp_path / "t")
    recs = write_records(trial, range(1, 3))
    with open(trial.metrics_path, "a") as f:  # a kill in the middle of a write
        f.write('{"epoch": 3, "split": "tr')
    with caplog.at_level(logging.WARNING, logger="bilma.runs.trial_dir"):
        assert trial.read_metrics() == recs
    assert "torn" in caplog.text and "metrics.jsonl:5" in caplog.text
    # The resumed run appends after the torn line, not onto it.
    trial.append_metrics({"epoch": 3, "step": 30, "split": "train", "loss": 1.0})
    got = trial.read_metrics()
    assert got[:4] == recs and got[4]["epoch"] == 3 and got[4]["loss"] == 1.0
    assert isinstance(got[4]["time"], float)  # added by append_metrics


def test_result_exists_only_after_write_result(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    assert trial.read_result() is None and not trial.is_done()
    result = finish_trial(trial, cfg, epochs=4)
    assert trial.is_done() and trial.read_result() == result
    assert set(result) == {
        "trial_id",
        "study",
        "variant",
        "seed",
        "dataset",
        "variant_base",
        "grid_point",
        "metrics",
        "selection",
        "val_metrics",
        "epochs",
        "train_seconds",
        "chance_R1",
        "finished",
        *USAGE_FIELDS,  # None: make_result was given no usage
    }
    assert all(result[k] is None for k in USAGE_FIELDS)
    assert result["trial_id"] == trial.trial_id
    assert (result["study"], result["variant"], result["seed"]) == ("s", "+SemMIM", 3)
    assert result["dataset"] == "synth" and set(result["metrics"]) == set(RESULT_METRICS)
    assert result["selection"] == {"split": "val", "metric": "R1", "epoch": 4, "value": 40.0}
    with pytest.raises(ValueError, match="mINP"):
        make_result(cfg, {"R1": 1, "R5": 1, "R10": 1, "mAP": 1}, result["selection"], None, 1, 1)


def test_provenance_has_the_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    trial = TrialDir(tmp_path / "t")
    info = trial.write_provenance()
    for key in (
        "git_commit",
        "git_dirty",
        "hostname",
        "python",
        "torch",
        "transformers",
        "mlflow",
        "slurm_job_id",
        "command",
        "start_time",
    ):
        assert key in info
    assert info["slurm_job_id"] == "77_2" and info["torch"] and info["mlflow"]
    assert json.loads(trial.provenance_path.read_text()) == info
    again = trial.write_provenance()  # a resume keeps the earlier attempt
    assert [p["start_time"] for p in again["previous"]] == [info["start_time"]]


def test_find_trials_at_any_depth(tmp_path: Path) -> None:
    for p in ("runs/a/t1", "runs/b/t2", "runs/deep/x/t3"):
        (tmp_path / p / "ckpt").mkdir(parents=True)
        (tmp_path / p / "config.yaml").write_text("{}\n")
    assert [p.name for p in find_trials(tmp_path / "runs")] == ["t1", "t2", "t3"]


def test_an_old_trial_config_still_reads_and_its_sweep_fields_come_from_it(tmp_path: Path):
    """Trial folders from before launch.json carried the sweep's identity in config.yaml."""
    cfg = make_cfg(tmp_path)
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    old = trial.config_path.read_text().replace(
        "tracking:\n",
        "tracking:\n  variant_base: BiLMa\n  variant_index: 2\n"
        "  grid_point: '{\"mim.mask_ratio\": 0.3}'\n",
    )
    trial.config_path.write_text(old)
    assert trial.read_config() == cfg  # the retired keys are read and ignored
    launch = trial.read_launch()  # no launch.json: from config.yaml
    assert (launch.variant_base, launch.variant_index) == ("BiLMa", 2)
    assert launch.grid_point == {"mim.mask_ratio": 0.3}
    write_launch(trial.path, Launch(variant_base="IRRA", grid_point={"a": 1}))
    assert trial.read_launch().variant_base == "IRRA"  # launch.json wins


def test_launch_json_has_the_schema_fields(tmp_path: Path) -> None:
    write_launch(tmp_path, Launch(study="s", variant="v", seed=3, tracking={"enabled": False}))
    raw = json.loads((tmp_path / LAUNCH_FILE).read_text())
    assert tuple(raw) == LAUNCH_FIELDS and raw["seed"] == 3 and raw["launched"] > 0
    (tmp_path / LAUNCH_FILE).write_text("{torn")
    assert read_launch(tmp_path) == Launch()  # unreadable: defaults, never a crash
