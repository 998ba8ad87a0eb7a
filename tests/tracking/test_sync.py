"""`bilma sync`: rebuilding MLflow from trial directories, idempotently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.tracking import client, finish_trial, history, make_cfg, runs_of, write_records

from bilma.runs.trial_dir import (
    TrialDir,
)
from bilma.tracking.mirror import MlflowMirror, config_params
from bilma.tracking.store import TrackingError
from bilma.tracking.sync import sync

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


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
    assert counts == {
        "trials": 1,
        "runs_created": 1,
        "points_logged": 15,
        "skipped": 1,
        "parents": 0,
    }
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
    assert again == {"trials": 1, "runs_created": 0, "points_logged": 0, "skipped": 1, "parents": 0}
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


def test_sync_to_an_unreachable_server_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = make_cfg(tmp_path)
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9.*run sync again"):
        sync(tmp_path / "runs", "http://127.0.0.1:9")


def test_a_second_runs_folder_never_rewrites_a_finished_run(tmp_path: Path, store: str) -> None:
    """Copy B of a trial failed before copy A finished: syncing B after A keeps FINISHED;
    a copy whose state is newer than the run's end (a later relaunch) still wins."""
    import time

    cfg_b = make_cfg(tmp_path / "b", store, study="twofolders", **{"tracking.enabled": False})
    b = TrialDir.for_config(cfg_b)
    b.init(cfg_b)
    b.start_attempt()
    write_records(b, range(1, 2))
    b.set_status("failed", error="RuntimeError: out of memory")
    time.sleep(0.05)
    cfg_a = make_cfg(tmp_path / "a", store, study="twofolders", **{"tracking.enabled": False})
    a = TrialDir.for_config(cfg_a)
    assert a.trial_id == b.trial_id
    a.init(cfg_a)
    a.start_attempt()
    write_records(a, range(1, 3))
    finish_trial(a, cfg_a, epochs=2)

    sync(tmp_path / "a" / "runs", store)
    counts = sync(tmp_path / "b" / "runs", store)
    (run,) = runs_of(store, "twofolders")  # matched by trial id: no second run
    assert counts["runs_created"] == 0
    assert run.info.status == "FINISHED"
    assert history(store, run.info.run_id, "val/R1") == [(1, 10.0), (2, 20.0)]  # no duplicate

    # B is relaunched and fails again, now after A's end: its newer state is shown
    time.sleep(0.05)
    b.set_status("failed", error="RuntimeError: out of memory again")
    sync(tmp_path / "b" / "runs", store)
    (run,) = runs_of(store, "twofolders")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_server_that_stops_mid_sweep_gets_its_parent_ended_by_sync(tmp_path: Path) -> None:
    """A real MLflow server stops while two trials train: one finishes (its run and the
    launcher's end of the parent fail), the other's trainer dies. With the server back,
    sync completes the trial runs and ends the parent (KILLED: one trial is left to
    resume), where it stayed RUNNING for ever."""
    from support.tracking import MlflowServer
    from tracking.test_parent import make_trial

    from bilma.runs.lock import acquire_trial_lock, release_trial_lock
    from bilma.sweep.prepare import finish_parent
    from bilma.tracking.parent import setup_parent
    from bilma.tracking.store import ensure_parent_run

    server = MlflowServer(tmp_path / "store").start()
    uri = server.uri
    try:
        parent = ensure_parent_run(uri, "served", "ablation")
        setup_parent(uri, parent, None, {})
        trials = [
            make_trial(tmp_path, uri, "served", v, i, 1, [10.0], state="running", parent=parent)
            for i, v in enumerate(["IRRA", "BiLMa"])
        ]
        mirrors = []
        for t in trials:
            acquire_trial_lock(t.path)
            mirrors.append(MlflowMirror(t, t.read_config(), parent_run_id=parent, uri=uri))
            assert mirrors[-1].start()
        server.stop()  # mid-sweep
        finish_trial(trials[0], trials[0].read_config(), epochs=1)
        mirrors[0].finish()  # fails: one warning, the run stays RUNNING
        for t in trials:
            release_trial_lock(t.path)  # the first ended, the second's trainer died
        finish_parent(trials[0].read_config(), parent, failed=False)  # fails: a warning
        server.start()
        sync(tmp_path / "runs", uri)
        status = {r.info.run_id: r.info.status for r in runs_of(uri, "served")}
        assert status == {
            parent: "KILLED",
            mirrors[0].run_id: "FINISHED",
            mirrors[1].run_id: "KILLED",
        }
    finally:
        server.stop()


def test_sync_from_a_read_only_runs_folder(read_only, tmp_path, store, caplog) -> None:
    """sync only reads the trials: from a read-only folder it mirrors them all, says once
    that mlflow.json could not be kept there, finds the runs again by their trial id the
    next time, and never blames the server."""
    folder, view = read_only  # written through `folder`, synced through the read-only `view`
    cfg = make_cfg(folder, store, study="readonly", **{"tracking.enabled": False})
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    trial.start_attempt()
    write_records(trial, range(1, 3))
    finish_trial(trial, cfg, epochs=2)
    counts = sync(view / "runs", store)
    assert counts["trials"] == 1 and counts["runs_created"] == 1
    (run,) = runs_of(store, "readonly")
    assert run.info.status == "FINISHED" and run.data.metrics["test/R1"] == 55.5
    notes = [r.getMessage() for r in caplog.records if "mlflow.json" in r.getMessage()]
    assert len(notes) == 1 and str(view / "runs") in notes[0] and "read-only" in notes[0]
    assert sync(view / "runs", store)["runs_created"] == 0
    assert len(runs_of(store, "readonly")) == 1
    assert not trial.mlflow_path.exists()


def test_an_unreadable_trial_file_is_named_not_the_server(tmp_path, store, monkeypatch) -> None:
    """A file sync cannot read (no permission: what a non-root user meets) is named, with
    the folder to fix; the server is not blamed."""
    cfg = make_cfg(tmp_path, store, study="unreadable", **{"tracking.enabled": False})
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self.metrics_path))

    monkeypatch.setattr(TrialDir, "read_metrics", denied)
    with pytest.raises(TrackingError) as e:
        sync(tmp_path / "runs", store)
    assert str(e.value) == (
        f"{trial.metrics_path}: Permission denied; sync reads the trial directories (and "
        f"writes only their mlflow.json): fix the permissions under {tmp_path / 'runs'}, then "
        "run sync again"
    )


def test_sync_mirrors_trials_with_hand_edited_files(tmp_path, store, caplog) -> None:
    """A done trial whose status.json holds a list, and one whose metrics.jsonl has a line
    with "epoch": "x": both mirrored (FINISHED, the sound points), each file named once."""
    from support.analysis import trial_on_disk

    lists = trial_on_disk(tmp_path / "runs", "edited", "IRRA", 1, 40.0)
    lists.status_path.write_text('["done"]')
    texts = trial_on_disk(tmp_path / "runs", "edited", "IRRA", 2, 50.0)
    texts.append_metrics({"epoch": 1, "split": "val", "R1": 30.0})
    with open(texts.metrics_path, "a") as f:
        f.write('{"epoch": "x", "split": "val", "R1": 31.0}\n')
    counts = sync(tmp_path / "runs", store)
    assert counts["trials"] == 2 and counts["skipped"] == 0
    runs = {
        r.data.tags["trial_id"]: r for r in runs_of(store, "edited") if "trial_id" in r.data.tags
    }
    assert {t: r.info.status for t, r in runs.items()} == {
        lists.trial_id: "FINISHED",
        texts.trial_id: "FINISHED",
    }
    assert history(store, runs[texts.trial_id].info.run_id, "val/R1") == [(1, 30.0)]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert str(lists.status_path) in warned and f"{texts.metrics_path}:2" in warned
