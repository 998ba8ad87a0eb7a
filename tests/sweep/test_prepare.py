"""What a launch writes into the trials it does not run: a variant renamed in the grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bilma.runs.launch import write_launch
from bilma.runs.trial_dir import TrialDir, make_result
from bilma.sweep.cli import main
from bilma.sweep.expand import expand_report, load_grid

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def _grid(tmp_path: Path, name: str, uri: str) -> Path:
    grid = {
        "study": "renamed",
        "seeds": [1, 2],
        "set": {
            "paths.runs": str(tmp_path / "runs"),
            "tracking.uri": uri,
            "data.root": str(tmp_path / "data"),
        },
        "variants": {name: {"loss.mim_weight": 0.5}},
    }
    path = tmp_path / "rename.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _finish_all(path: Path) -> list[TrialDir]:
    """Every trial of the grid done, as a sweep would have left it (no training)."""
    grid = load_grid(path)
    out = []
    for trial in expand_report(grid)[0]:
        d = TrialDir.for_config(trial.config)
        d.init(trial.config)
        launch = write_launch(d.path, trial.launch(str(path), None, {"enabled": True}))
        metrics = {"R1": 40.0 + trial.seed, "R5": 60.0, "R10": 70.0, "mAP": 30.0, "mINP": 9.0}
        sel = {"split": "val", "metric": "R1", "epoch": 1, "value": 1.0}
        d.write_result(make_result(trial.config, metrics, sel, None, 1, 1.0, launch=launch))
        d.set_status("done")
        out.append(d)
    return out


def test_a_renamed_variant_is_renamed_in_the_tables_and_in_mlflow(tmp_path, capsys) -> None:
    """IRRA is renamed 'IRRA (SDM+ID)' in the grid after its trials finished: the relaunch
    runs nothing, and the tables and (after sync) MLflow show the new name, as --status does."""
    from mlflow import MlflowClient

    from bilma.analysis.aggregate import build_table
    from bilma.analysis.records import load_dirs, load_mlflow
    from bilma.tracking.sync import sync

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trials = _finish_all(_grid(tmp_path, "IRRA", uri))
    sync(tmp_path / "runs", uri)

    path = _grid(tmp_path, "IRRA (SDM+ID)", uri)
    assert main(["--grid", str(path), "--no-preflight"]) == 0
    out = capsys.readouterr().out
    assert main(["--grid", str(path), "--status"]) == 0
    assert "IRRA (SDM+ID)" in capsys.readouterr().out

    table = build_table("renamed", load_dirs(tmp_path / "runs")["renamed"])
    assert [r.label for r in table.rows] == ["IRRA (SDM+ID)"]
    assert {t.read_launch().variant for t in trials} == {"IRRA (SDM+ID)"}
    assert "2 trials renamed 'IRRA' -> 'IRRA (SDM+ID)'" in out and "bilma sync" in out

    sync(tmp_path / "runs", uri)
    exp = MlflowClient(uri).get_experiment_by_name("renamed")
    runs = [
        r for r in MlflowClient(uri).search_runs([exp.experiment_id]) if "trial_id" in r.data.tags
    ]
    assert sorted(r.info.run_name for r in runs) == ["s1 IRRA (SDM+ID)", "s2 IRRA (SDM+ID)"]
    assert {r.data.tags["variant_base"] for r in runs} == {"IRRA (SDM+ID)"}
    (recs,) = load_mlflow(uri, ["renamed"]).values()
    assert [r.label for r in build_table("renamed", recs).rows] == ["IRRA (SDM+ID)"]
