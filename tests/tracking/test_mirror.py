"""The MLflow mirror of a trial directory, against a real SQLite MLflow store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support.tracking import client, finish_trial, history, make_cfg, runs_of

from bilma.runs.launch import Launch, write_launch
from bilma.runs.trial_dir import (
    TrialDir,
    make_result,
)
from bilma.tracking.mirror import MlflowMirror, config_params, record_metrics
from bilma.tracking.store import ensure_experiment, ensure_parent_run

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def test_start_creates_one_run_with_tags_params_artifact(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="start")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    mirror = MlflowMirror(trial, cfg)
    run_id = mirror.start()
    assert run_id and mirror.created

    (run,) = runs_of(store, "start")
    assert run.info.run_id == run_id and run.info.status == "RUNNING"
    tags = run.data.tags
    assert tags["study"] == "start" and tags["trial_id"] == trial.trial_id
    assert (tags["variant"], tags["seed"], tags["dataset"]) == ("+SemMIM", "3", "synth")
    assert "git_commit" in tags and tags["slurm_job_id"] == ""
    assert tags["mlflow.runName"] == run.info.run_name == "s3 +SemMIM"
    assert "mlflow.parentRunId" not in tags
    assert run.data.params == config_params(cfg)
    assert run.data.params["data.image_size"] == "[384, 128]"
    assert run.data.params["model.pretrained"] == "null"
    assert [f.path for f in client(store).list_artifacts(run_id)] == ["config.yaml"]
    # Artifacts sit beside the SQLite file, not in ./mlruns of whatever process made them.
    db_dir = Path(store[len("sqlite:///") :]).parent
    assert run.info.artifact_uri.startswith(str(db_dir / "mlartifacts" / "start"))
    assert not (tmp_path / "mlruns").exists()
    saved = json.loads(trial.mlflow_path.read_text())
    assert saved["run_id"] == run_id and saved["experiment_id"] == run.info.experiment_id


def test_a_second_mirror_continues_the_same_run(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="resume")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    first = MlflowMirror(trial, cfg)
    run_id = first.start()
    first.log_metrics({"train/loss": 2.0}, step=1)
    first.finish("KILLED")  # preempted
    assert client(store).get_run(run_id).info.status == "KILLED"

    second = MlflowMirror(trial, cfg)  # the requeued job
    assert second.start() == run_id and not second.created
    assert client(store).get_run(run_id).info.status == "RUNNING"
    # Without mlflow.json (e.g. lost), the trial_id tag still finds the run.
    trial.mlflow_path.unlink()
    assert MlflowMirror(trial, cfg).start() == run_id
    assert len(runs_of(store, "resume")) == 1
    assert history(store, run_id, "train/loss") == [(1, 2.0)]


def test_log_metrics_and_finish(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="finish")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    mirror = MlflowMirror(trial, cfg)
    run_id = mirror.start()
    mirror.log_metrics({"train/loss": 1.5, "train/loss_sdm": 0.5}, step=1)
    rec = {"epoch": 2, "step": 20, "split": "val", "time": 1_700_000_000.25, "R1": 42.0}
    trial.append_metrics(rec)
    mirror.log_record(rec)
    finish_trial(trial, cfg, epochs=2)
    mirror.finish()

    run = client(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time
    assert history(store, run_id, "train/loss") == [(1, 1.5)]
    (point,) = client(store).get_metric_history(run_id, "val/R1")
    assert (point.step, point.value, point.timestamp) == (2, 42.0, 1_700_000_000_250)
    m = run.data.metrics
    assert (m["test/R1"], m["test/R5"], m["test/R10"], m["test/mAP"], m["test/mINP"]) == (
        55.5,
        75.0,
        82.25,
        50.0,
        33.0,
    )
    assert m["train_seconds"] == 12.5
    assert history(store, run_id, "test/R1") == [(2, 55.5)]
    assert run.data.tags["selection_split"] == "val" and run.data.tags["selection_epoch"] == "2"


def test_parent_run(tmp_path: Path, store: str) -> None:
    parent = ensure_parent_run(store, "sweep", "ablation")
    assert ensure_parent_run(store, "sweep", "ablation") == parent  # a relaunch: same parent
    cfg = make_cfg(tmp_path, store, study="sweep")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    child = MlflowMirror(trial, cfg, parent_run_id=parent).start()
    tags = client(store).get_run(child).data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["kind"] == "trial"
    assert client(store).get_run(parent).data.tags["kind"] == "sweep"
    # A requeued job that does not know the parent keeps it (mlflow.json remembers).
    assert MlflowMirror(trial, cfg).start() == child
    assert client(store).get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_unreachable_server_warns_once_and_goes_on(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = make_cfg(tmp_path, "http://127.0.0.1:9", study="down")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    mirror = MlflowMirror(trial, cfg)
    with caplog.at_level(logging.WARNING, logger="bilma.tracking.mirror"):
        assert mirror.start() is None
        mirror.log_metrics({"train/loss": 1.0}, step=1)
        mirror.log_record({"epoch": 1, "split": "val", "R1": 1.0})
        mirror.finish("FAILED")
    warnings = [r for r in caplog.records if r.name == "bilma.tracking.mirror"]
    assert len(warnings) == 1 and "bilma sync --runs" in warnings[0].getMessage()
    assert not mirror.active and not trial.mlflow_path.exists()


def test_tracking_disabled_is_silent(tmp_path: Path, caplog) -> None:
    cfg = make_cfg(tmp_path, "http://127.0.0.1:9", **{"tracking.enabled": False})
    trial = TrialDir.for_config(cfg)
    mirror = MlflowMirror(trial, cfg)
    with caplog.at_level(logging.WARNING):
        assert mirror.start() is None
        mirror.log_metrics({"a": 1.0}, step=1)
        mirror.finish()
    assert caplog.records == []


def test_record_metrics_keys() -> None:
    rec = {"epoch": 1, "step": 5, "split": "val", "time": 1.0, "R1": 1, "ok": True, "n": "x"}
    assert record_metrics(rec) == {"val/R1": 1.0}


def test_ensure_experiment_is_idempotent(store: str) -> None:
    assert ensure_experiment(store, "idem") == ensure_experiment(store, "idem")


def test_grid_point_and_variant_base_in_result_and_tags(tmp_path: Path, store: str) -> None:
    point = {"mim.mask_ratio": 0.3, "data.image_size": [256, 128]}
    cfg = make_cfg(tmp_path, store, study="grid")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    write_launch(trial.path, Launch(variant_base="BiLMa", variant_index=1, grid_point=point))
    assert trial.read_launch().grid_point == point
    result = finish_trial(trial, cfg, epochs=1)
    assert result["variant_base"] == "BiLMa"
    assert result["grid_point"] == {"mim.mask_ratio": 0.3, "data.image_size": [256, 128]}
    run_id = MlflowMirror(trial, cfg).start()
    tags = client(store).get_run(run_id).data.tags
    assert tags["variant_base"] == "BiLMa" and tags["grid.mim.mask_ratio"] == "0.3"
    assert tags["grid.data.image_size"] == "[256, 128]" and tags["variant_index"] == "1"
    # Defaults: not from a grid.
    plain = make_result(make_cfg(tmp_path), result["metrics"], result["selection"], None, 1, 1)
    assert plain["variant_base"] == "" and plain["grid_point"] == {}


def test_a_resumed_mirror_never_logs_a_step_twice(tmp_path: Path, store: str) -> None:
    """A kill after an epoch's records reached MLflow but before last.pt: the resumed run logs
    that epoch again; the mirror keeps one point per (key, step)."""
    cfg = make_cfg(tmp_path, store, study="resumed")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    first = MlflowMirror(trial, cfg)
    run_id = first.start()
    first.log_record({"epoch": 1, "split": "val", "time": 1.0, "R1": 10.0})
    first.log_record({"epoch": 2, "split": "val", "time": 2.0, "R1": 20.0})
    second = MlflowMirror(trial, cfg)  # the relaunch
    assert second.start() == run_id
    second.log_record({"epoch": 2, "split": "val", "time": 3.0, "R1": 20.0})
    second.log_record({"epoch": 3, "split": "val", "time": 4.0, "R1": 30.0})
    second.log_record({"epoch": 3, "split": "val", "time": 5.0, "R1": 30.0})
    assert history(store, run_id, "val/R1") == [(1, 10.0), (2, 20.0), (3, 30.0)]


def test_a_failed_run_is_tagged_with_its_cause_live_and_by_sync(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="cause")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    trial.start_attempt()
    mirror = MlflowMirror(trial, cfg)
    run_id = mirror.start()
    trial.end_attempt("failed", cause="out_of_memory", error="OutOfMemoryError: CUDA")
    mirror.finish("FAILED")  # the trainer: status.json first, then MLflow
    run = client(store).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_cause"] == "out_of_memory"
    # the launcher learns later from SLURM that the node failed: a sync shows it
    trial.end_attempt("failed", cause="node_failure")
    MlflowMirror(trial, cfg).sync()
    assert client(store).get_run(run_id).data.tags["failure_cause"] == "node_failure"
