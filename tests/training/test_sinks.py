"""The sinks: each record written once, to the trial directory and MLflow."""

# ruff: noqa: F811 (pytest fixtures imported from tracking_support are used as parameters)
from __future__ import annotations

from pathlib import Path

import pytest
from support.tracking import (  # noqa: F401 (fixtures are used by name)
    _isolated,
    client,
    make_cfg,
    runs_of,
    store,
    write_records,
)

from bilma.runs.trial_dir import (
    TrialDir,
    make_result,
)
from bilma.tracking.sync import sync
from bilma.training.sinks import FanOutSink, MlflowSink, TrialSink

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


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
