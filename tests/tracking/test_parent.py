"""A sweep's parent run: params, grid file, summary, mean curves, tables (real SQLite MLflow)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from support.tracking import client, finish_trial, history, make_cfg, runs_of

from bilma.runs.launch import Launch, write_launch
from bilma.runs.lock import acquire_trial_lock, release_trial_lock
from bilma.runs.trial_dir import TrialDir
from bilma.tracking.mirror import MlflowMirror
from bilma.tracking.parent import (
    log_study_tables,
    setup_parent,
    summarize,
    sweep_params,
    sweep_trials,
    update_parent,
)
from bilma.tracking.store import ensure_parent_run
from bilma.tracking.sync import sync

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

GRID = "study: {study}\nseeds: [1, 2]\nvariants: {{IRRA: {{}}, BiLMa: {{}}}}\n"


def make_trial(
    tmp_path: Path,
    uri: str,
    study: str,
    variant: str,
    index: int,
    seed: int,
    r1s: list[float],
    state: str = "done",
    grid: str = "ablation",
    parent: str | None = None,
) -> TrialDir:
    """A trial of the sweep `grid` whose val R1 at epoch e is r1s[e-1]: done (test R1 = 50 +
    seed + 10 * index), failed, or still running."""
    cfg = make_cfg(
        tmp_path,
        uri,
        study=study,
        **{"tracking.variant": variant, "train.seed": seed, "tracking.enabled": False},
        **{"loss.mim_weight": 0.5 * index},  # the variants differ (the label is no identity)
    )
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    grid_file = tmp_path / f"{grid}.yaml"
    grid_file.write_text(GRID.format(study=study))
    launch = Launch(
        study=study,
        grid=str(grid_file),
        variant=variant,
        variant_base=variant,
        variant_index=index,
        seed=seed,
        grid_point={"loss.id_weight": 1.0},
        parent_run_id=parent,
    )
    write_launch(trial.path, launch)
    trial.start_attempt()
    trial.set_status("running", backend="local")
    for e, r1 in enumerate(r1s, 1):
        t = 1_700_000_000.0 + 60 * e + seed
        trial.append_metrics(
            {"epoch": e, "step": 7 * e, "split": "train", "time": t, "loss": 1 / e}
        )
        trial.append_metrics({"epoch": e, "step": 7 * e, "split": "val", "time": t + 1, "R1": r1})
    if state == "done":
        result = finish_trial(trial, cfg, epochs=len(r1s))
        result["metrics"]["R1"] = 50.0 + seed + 10 * index
        trial.write_result(result)
    elif state == "failed":
        trial.set_status("failed", error="RuntimeError: boom")
    return trial


def test_sweep_params_from_the_trials() -> None:
    launches = [
        Launch(grid="/g/abl.yaml", variant_base=v, variant_index=i, seed=s, grid_point=p)
        for i, v in ((1, "BiLMa"), (0, "IRRA"))
        for s in (2, 1)
        for p in ({"mim.mask_ratio": 0.3, "data.image_size": [384, 128]},)
    ]
    launches.append(Launch(variant_base="BiLMa", variant_index=1, seed=3, grid_point={}))
    params = sweep_params(launches)
    assert params == {
        "grid": "/g/abl.yaml",
        "trials": "5",
        "seeds": "[1, 2, 3]",
        "variants": '["IRRA", "BiLMa"]',  # the grid's order, not the trials'
        "axes": '["mim.mask_ratio", "data.image_size"]',
        "grid.mim.mask_ratio": "[0.3]",
        "grid.data.image_size": "[[384, 128]]",
    }


def test_setup_params_grid_file_and_reopen(tmp_path: Path, store: str) -> None:
    parent = ensure_parent_run(store, "setup", "ablation")
    grid = tmp_path / "ablation.yaml"
    grid.write_text(GRID.format(study="setup"))
    setup_parent(store, parent, grid, {"seeds": "[1, 2]", "set.train.epochs": "2"})
    run = client(store).get_run(parent)
    assert run.data.params == {"seeds": "[1, 2]", "set.train.epochs": "2"}
    assert run.info.status == "RUNNING"
    assert [f.path for f in client(store).list_artifacts(parent)] == ["ablation.yaml"]
    client(store).set_terminated(parent, "FINISHED")

    # A relaunch with an edited grid: params stay (MLflow never changes one), new ones are
    # added, the artifact is the current file, the parent runs again.
    grid.write_text(GRID.format(study="setup") + "# edited\n")
    setup_parent(store, parent, grid, {"seeds": "[1, 2, 3]", "base": "configs/x.yaml"})
    run = client(store).get_run(parent)
    assert run.data.params == {
        "seeds": "[1, 2]",
        "set.train.epochs": "2",
        "base": "configs/x.yaml",
    }
    assert run.info.status == "RUNNING"
    local = client(store).download_artifacts(parent, "ablation.yaml", str(tmp_path / "dl"))
    assert Path(local).read_text().endswith("# edited\n")


def test_summary_and_mean_curves(tmp_path: Path, store: str) -> None:
    study = "summary"
    a = make_trial(tmp_path, store, study, "IRRA", 0, 1, [10.0, 20.0])
    b = make_trial(tmp_path, store, study, "BiLMa", 1, 2, [30.0, 50.0])
    c = make_trial(tmp_path, store, study, "BiLMa", 1, 1, [5.0], state="failed")
    d = make_trial(tmp_path, store, study, "IRRA", 0, 2, [40.0], state="running")
    make_trial(tmp_path, store, study, "IRRA", 0, 3, [1.0], grid="other")  # another sweep
    study_dir = a.path.parent
    assert {t.trial_id for t in sweep_trials([study_dir], "ablation")} == {
        t.trial_id for t in (a, b, c, d)
    }

    s = summarize(sweep_trials([study_dir], "ablation"))
    assert s.trials == 4 and s.backends == ["local"]
    assert s.best == (62.0, "s2 BiLMa", b.trial_id)  # 50 + seed 2 + 10 * index 1
    # Epoch 2 waits for the running trial; the failed one counts where it got to.
    last = 1_700_000_063_000  # the latest of the epoch's records (seed 2's), in ms
    assert s.curves["val/R1"] == {1: (statistics.mean([10.0, 30.0, 5.0, 40.0]), last)}
    assert set(s.curves) == {"val/R1", "train/loss"}

    parent = ensure_parent_run(store, study, "ablation")
    update_parent(store, parent, [study_dir])
    run = client(store).get_run(parent)
    m = run.data.metrics
    assert (m["sweep/trials"], m["sweep/done"], m["sweep/failed"]) == (4.0, 2.0, 1.0)
    assert m["sweep/best_test_R1"] == 62.0 and "sweep/stopped" not in m
    assert run.data.tags["best_trial"] == "s2 BiLMa"
    assert run.data.tags["best_trial_id"] == b.trial_id
    assert run.data.params["backend"] == "local"
    assert run.data.params["seeds"] == "[1, 2]" and run.data.params["trials"] == "4"
    assert run.data.params["variants"] == '["IRRA", "BiLMa"]'
    assert history(store, parent, "val/R1") == [(1, 21.25)]
    assert "ablation.yaml" in {f.path for f in client(store).list_artifacts(parent)}
    assert run.info.status == "RUNNING"  # no status asked for

    # Nothing changed: nothing logged again.
    update_parent(store, parent, [study_dir])
    assert history(store, parent, "val/R1") == [(1, 21.25)]
    assert len(client(store).get_metric_history(parent, "sweep/trials")) == 1

    # The running trial finishes epoch 2: epoch 2 is complete, epoch 1 stays as it was.
    d.append_metrics({"epoch": 2, "step": 14, "split": "val", "time": 1_700_000_200.0, "R1": 60.0})
    finish_trial(d, d.read_config(), epochs=2)
    update_parent(store, parent, [study_dir], status="FAILED")
    run = client(store).get_run(parent)
    assert history(store, parent, "val/R1") == [
        (1, 21.25),
        (2, statistics.mean([20.0, 50.0, 60.0])),
    ]
    steps = [p.step for p in client(store).get_metric_history(parent, "train/loss")]
    assert sorted(steps) == [1, 2]
    assert run.data.metrics["sweep/done"] == 3.0 and run.info.status == "FAILED"
    assert len(client(store).get_metric_history(parent, "sweep/done")) == 2  # 2, then 3


def test_sync_puts_a_sweep_under_its_parent_in_a_new_store(tmp_path: Path, store: str) -> None:
    """MLflow was down at the launch (no parent run): sync makes the parent, puts the trials
    under it, fills its params, grid file, summary and curves, and ends it."""
    study = "synced"
    a = make_trial(tmp_path, store, study, "IRRA", 0, 1, [10.0, 20.0])
    b = make_trial(tmp_path, store, study, "BiLMa", 1, 1, [30.0, 40.0], parent="gone-run-id")
    counts = sync(tmp_path / "runs", store)
    assert counts["trials"] == 2 and counts["parents"] == 1
    runs = runs_of(store, study)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert parent.info.run_name == "synced (ablation)" and parent.data.tags["sweep"] == "ablation"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.info.run_name for c in children) == ["s1 BiLMa", "s1 IRRA"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/done"] == 2.0
    assert parent.data.params["variants"] == '["IRRA", "BiLMa"]'
    assert history(store, parent.info.run_id, "val/R1") == [(1, 20.0), (2, 30.0)]
    assert "ablation.yaml" in {f.path for f in client(store).list_artifacts(parent.info.run_id)}
    saved = json.loads(a.mlflow_path.read_text())
    assert saved["parent_run_id"] == parent.info.run_id

    # Again: the same parent, nothing new.
    again = sync(tmp_path / "runs", store)
    assert again["runs_created"] == 0 and again["points_logged"] == 0
    assert len([r for r in runs_of(store, study) if r.data.tags.get("kind") == "sweep"]) == 1
    assert history(store, parent.info.run_id, "val/R1") == [(1, 20.0), (2, 30.0)]
    # A trial that mirrored live under the launch's parent keeps it.
    assert json.loads(b.mlflow_path.read_text())["parent_run_id"] == parent.info.run_id


def test_a_live_parent_is_kept_by_sync(tmp_path: Path, store: str) -> None:
    study = "live"
    parent = ensure_parent_run(store, study, "ablation")
    t = make_trial(tmp_path, store, study, "IRRA", 0, 1, [10.0], state="running", parent=parent)
    cfg = t.read_config()
    MlflowMirror(t, cfg, parent_run_id=parent, uri=store).start()
    acquire_trial_lock(t.path)  # its trainer runs
    try:
        counts = sync(tmp_path / "runs", store)
    finally:
        release_trial_lock(t.path)
    assert counts["parents"] == 1
    runs = runs_of(store, study)
    assert len(runs) == 2
    (child,) = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert child.data.tags["mlflow.parentRunId"] == parent
    # One trial still running: the parent is not ended.
    assert client(store).get_run(parent).info.status == "RUNNING"


def test_tables_go_to_the_study_s_parent_run(tmp_path: Path, store: str) -> None:
    parent = ensure_parent_run(store, "tabled", "tabled")
    files = []
    for name in ("tabled.md", "tabled.tex", "tabled.csv", "tabled_R1.png"):
        (path := tmp_path / name).write_text(name)
        files.append(path)
    lines = log_study_tables(store, "tabled", files)
    assert len(lines) == 1 and parent in lines[0] and "tables/" in lines[0]
    shown = {f.path for f in client(store).list_artifacts(parent, "tables")}
    assert shown == {f"tables/{p.name}" for p in files}
    assert log_study_tables(store, "no-such-study", files) == []


def test_tables_never_fail_on_mlflow(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    (path := tmp_path / "t.md").write_text("x")
    assert log_study_tables("http://127.0.0.1:9", "s", [path]) == []
    assert "could not log s's tables to MLflow" in caplog.text


def test_sync_ends_a_parent_whose_launcher_is_gone(tmp_path: Path, store: str) -> None:
    """MLflow stopped answering mid-sweep and the launcher was stopped: one trial finished,
    the other's trainer died (status.json still says running, nobody holds its lock). sync
    ends the parent from its trials' states (KILLED: one is left to resume), not RUNNING for
    ever; a relaunch's running trial opens it again, and its end finishes it."""
    study = "orphaned"
    parent = ensure_parent_run(store, study, "ablation")
    setup_parent(store, parent, None, {})
    done = make_trial(tmp_path, store, study, "IRRA", 0, 1, [10.0], parent=parent)
    dead = make_trial(tmp_path, store, study, "BiLMa", 1, 1, [20.0], state="running", parent=parent)
    sync(tmp_path / "runs", store)
    assert client(store).get_run(parent).info.status == "KILLED"
    dead_run = json.loads(dead.mlflow_path.read_text())["run_id"]
    assert client(store).get_run(dead_run).info.status == "KILLED"
    done_run = json.loads(done.mlflow_path.read_text())["run_id"]
    assert client(store).get_run(done_run).info.status == "FINISHED"

    acquire_trial_lock(dead.path)  # relaunched: its trainer runs
    try:
        dead.start_attempt()
        sync(tmp_path / "runs", store)
        assert client(store).get_run(parent).info.status == "RUNNING"
        assert client(store).get_run(dead_run).info.status == "RUNNING"
        finish_trial(dead, dead.read_config(), epochs=1)
    finally:
        release_trial_lock(dead.path)
    sync(tmp_path / "runs", store)
    assert client(store).get_run(parent).info.status == "FINISHED"
