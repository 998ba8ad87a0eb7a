"""Trial directories and the MLflow mirror, against a real SQLite MLflow store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bilma.config import Config, ConfigError, load_config, trial_id
from bilma.fileio import atomic_torch_save, atomic_write_json, atomic_write_text
from bilma.mirror import MlflowMirror, config_params, record_metrics
from bilma.mlflow_store import TrackingError, ensure_experiment, ensure_parent_run
from bilma.sinks import FanOutSink, MlflowSink, TrialSink
from bilma.sync import sync
from bilma.trial import (
    RESULT_METRICS,
    TrialConflictError,
    TrialDir,
    find_trials,
    grid_point,
    make_result,
)

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing may land in the repository (./mlruns, ./mlflow.db), and no outside server
    # may take over the default URI.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one costs 1-2 s); tests use their own study."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def make_cfg(tmp_path: Path, uri: str = "", study: str = "s", **overrides) -> Config:
    values = {
        "paths.runs": str(tmp_path / "runs"),
        "tracking.study": study,
        "tracking.variant": "+SemMIM",
        "train.seed": 3,
        **({"tracking.uri": uri} if uri else {}),
        **overrides,
    }
    return load_config(None, values)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, study: str) -> list:
    exp = client(uri).get_experiment_by_name(study)
    return [] if exp is None else client(uri).search_runs([exp.experiment_id])


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def write_records(trial: TrialDir, epochs: range) -> list[dict]:
    """Train and val records as the trainer writes them, at fixed times."""
    recs = []
    for e in epochs:
        t = 1_700_000_000.0 + 60 * e
        recs.append({"epoch": e, "step": 10 * e, "split": "train", "time": t, "loss": 3.0 / e})
        recs.append(
            {"epoch": e, "step": 10 * e, "split": "val", "time": t + 1, "R1": 10.0 * e, "mAP": e}
        )
    for r in recs:
        trial.append_metrics(r)
    return recs


def finish_trial(trial: TrialDir, cfg: Config, epochs: int) -> dict:
    metrics = {"R1": 55.5, "R5": 75.0, "R10": 82.25, "mAP": 50.0, "mINP": 33.0}
    sel = {"split": "val", "metric": "R1", "epoch": epochs, "value": 10.0 * epochs}
    result = make_result(cfg, metrics, sel, {"R1": 10.0 * epochs}, epochs, 12.5)
    trial.write_result(result)
    trial.set_status("done")
    return result


# ----------------------------------------------------------------------------- trial dir


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
    with caplog.at_level(logging.WARNING, logger="bilma.trial"):
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
        "finished",
    }
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


# ----------------------------------------------------------------------------- MLflow mirror


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
    assert tags["mlflow.runName"] == run.info.run_name == "+SemMIM seed=3"
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
    with caplog.at_level(logging.WARNING, logger="bilma.mirror"):
        assert mirror.start() is None
        mirror.log_metrics({"train/loss": 1.0}, step=1)
        mirror.log_record({"epoch": 1, "split": "val", "R1": 1.0})
        mirror.finish("FAILED")
    warnings = [r for r in caplog.records if r.name == "bilma.mirror"]
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


# ----------------------------------------------------------------------------- sync


def test_sync_a_trial_written_without_mlflow_and_twice(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="offline", **{"tracking.enabled": False})
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    trial.write_provenance()
    trial.start_attempt()
    recs = write_records(trial, range(1, 4))
    finish_trial(trial, cfg, epochs=3)
    (other := TrialDir(tmp_path / "runs" / "offline" / "bad")).path.mkdir(parents=True)
    other.config_path.write_text("train: {epochs: -1}\n")  # skipped with a warning

    counts = sync(tmp_path / "runs", store)
    # 3 epochs x (train/loss + val/R1 + val/mAP) + 5 test metrics + train_seconds
    assert counts == {"trials": 1, "runs_created": 1, "points_logged": 15, "skipped": 1}
    (run,) = runs_of(store, "offline")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["trial_id"] == trial.trial_id
    assert run.data.params == config_params(cfg)
    assert history(store, run_id, "train/loss") == [(e, 3.0 / e) for e in (1, 2, 3)]
    assert history(store, run_id, "val/R1") == [(1, 10.0), (2, 20.0), (3, 30.0)]
    stamps = sorted(m.timestamp for m in client(store).get_metric_history(run_id, "val/mAP"))
    assert stamps == [int(r["time"] * 1000) for r in recs if r["split"] == "val"]
    assert run.data.metrics["test/R1"] == 55.5
    assert json.loads(trial.mlflow_path.read_text())["run_id"] == run_id

    again = sync(tmp_path / "runs", store)
    assert again == {"trials": 1, "runs_created": 0, "points_logged": 0, "skipped": 1}
    assert [r.info.run_id for r in runs_of(store, "offline")] == [run_id]
    for key, n in (("train/loss", 3), ("val/R1", 3), ("val/mAP", 3), ("test/R1", 1)):
        assert len(client(store).get_metric_history(run_id, key)) == n


def test_sync_adds_only_the_missing_points(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="partial")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    trial.start_attempt()
    mirror = MlflowMirror(trial, cfg)
    run_id = mirror.start()
    for rec in write_records(trial, range(1, 3)):
        mirror.log_record(rec)  # live, until MLflow went away
    write_records(trial, range(3, 5))  # on disk only
    trial.set_status("interrupted")

    counts = sync(tmp_path / "runs", store)
    assert counts["runs_created"] == 0 and counts["points_logged"] == 2 * 3
    assert [r.info.run_id for r in runs_of(store, "partial")] == [run_id]
    assert history(store, run_id, "val/R1") == [(e, 10.0 * e) for e in (1, 2, 3, 4)]
    assert len(client(store).get_metric_history(run_id, "train/loss")) == 4
    assert client(store).get_run(run_id).info.status == "KILLED"


def test_record_metrics_keys() -> None:
    rec = {"epoch": 1, "step": 5, "split": "val", "time": 1.0, "R1": 1, "ok": True, "n": "x"}
    assert record_metrics(rec) == {"val/R1": 1.0}


def test_ensure_experiment_is_idempotent(store: str) -> None:
    assert ensure_experiment(store, "idem") == ensure_experiment(store, "idem")


def test_sync_to_an_unreachable_server_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = make_cfg(tmp_path)
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9.*run sync again"):
        sync(tmp_path / "runs", "http://127.0.0.1:9")


# ----------------------------------------------------------------------------- grid, sinks


def test_grid_point_and_variant_base_in_result_and_tags(tmp_path: Path, store: str) -> None:
    point = '{"mim.mask_ratio": 0.3, "data.image_size": [256, 128]}'
    cfg = make_cfg(
        tmp_path,
        store,
        study="grid",
        **{"tracking.variant_base": "BiLMa", "tracking.grid_point": point},
    )
    assert trial_id(cfg) == trial_id(make_cfg(tmp_path, store, study="grid"))  # not identity
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    assert trial.read_config().tracking.grid_point == point
    result = finish_trial(trial, cfg, epochs=1)
    assert result["variant_base"] == "BiLMa"
    assert result["grid_point"] == {"mim.mask_ratio": 0.3, "data.image_size": [256, 128]}
    run_id = MlflowMirror(trial, cfg).start()
    tags = client(store).get_run(run_id).data.tags
    assert tags["variant_base"] == "BiLMa" and tags["grid.mim.mask_ratio"] == "0.3"
    assert tags["grid.data.image_size"] == "[256, 128]"
    # Defaults: not from a grid.
    plain = make_result(make_cfg(tmp_path), result["metrics"], result["selection"], None, 1, 1)
    assert plain["variant_base"] == "" and plain["grid_point"] == {}


@pytest.mark.parametrize("bad", ["[1, 2]", "{axis: 1}"])
def test_bad_grid_point_names_the_key(tmp_path: Path, bad: str) -> None:
    cfg = make_cfg(tmp_path, **{"tracking.grid_point": bad})
    with pytest.raises(ConfigError, match=r"tracking\.grid_point = .*axis -> value"):
        grid_point(cfg)


def test_sinks_write_each_record_once_to_dir_and_mlflow(tmp_path: Path, store: str) -> None:
    cfg = make_cfg(tmp_path, store, study="sinks")
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    sinks = FanOutSink([TrialSink(trial), MlflowSink.start(trial, cfg)])
    run_id = sinks.sinks[1].mirror.run_id
    rec = {"epoch": 1, "step": 10, "split": "val", "R1": 12.5}
    sinks.log_record(rec)
    (on_disk,) = trial.read_metrics()
    assert on_disk == rec and isinstance(rec["time"], float)  # one time, stamped once
    (point,) = client(store).get_metric_history(run_id, "val/R1")
    assert (point.step, point.value, point.timestamp) == (1, 12.5, int(rec["time"] * 1000))
    metrics = {"R1": 55.5, "R5": 75.0, "R10": 82.25, "mAP": 50.0, "mINP": 33.0}
    sel = {"split": "val", "metric": "R1", "epoch": 1, "value": 12.5}
    result = make_result(cfg, metrics, sel, {"R1": 12.5}, 1, 3.0)
    sinks.log_result(result)
    assert trial.read_result() == result
    sinks.close("done")
    run = client(store).get_run(run_id)
    assert trial.status()["state"] == "done" and run.info.status == "FINISHED"
    assert run.data.metrics["test/R1"] == 55.5 and "stopped_early" not in run.data.tags


def test_a_stopped_trial_is_killed_and_tagged_live_and_by_sync(tmp_path: Path, store: str) -> None:
    live_cfg = make_cfg(tmp_path / "live", store, study="stopped")
    trial = TrialDir.for_config(live_cfg)
    trial.init(live_cfg)
    sinks = FanOutSink([TrialSink(trial), MlflowSink.start(trial, live_cfg)])
    sinks.log_record({"epoch": 1, "step": 10, "split": "val", "R1": 3.0})
    sinks.close("stopped", stopped_epoch=1, stop_reason="ASHA")
    assert trial.status()["state"] == "stopped" and trial.is_finished()
    assert not trial.is_done()
    run = client(store).get_run(sinks.sinks[1].mirror.run_id)
    assert run.info.status == "KILLED" and run.data.tags["stopped_early"] == "true"

    # The same trial written without MLflow: sync shows it the same way.
    cfg = make_cfg(tmp_path / "off", store, study="stopped-sync", **{"tracking.enabled": False})
    other = TrialDir.for_config(cfg)
    other.init(cfg)
    write_records(other, range(1, 2))
    other.set_status("stopped", stopped_epoch=1)
    assert sync(tmp_path / "off" / "runs", store)["trials"] == 1
    (run,) = runs_of(store, "stopped-sync")
    assert run.info.status == "KILLED" and run.data.tags["stopped_early"] == "true"
