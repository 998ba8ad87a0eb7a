"""Reading the smoke sweep's store: the direct SQLite reader gives exactly what MLflow's
client gives, and the trial directories agree with both."""

from __future__ import annotations

import pytest

from bilma.analysis import records as runs


def key(records):
    return sorted(records, key=lambda r: r.trial_id)


def test_sqlite_reader_equals_mlflow_client(smoke_sweep, monkeypatch):
    from bilma.tracking import read

    fast = runs.load_mlflow(smoke_sweep.uri, [smoke_sweep.study], curves=True)
    monkeypatch.setattr(read, "sqlite_path", lambda uri: None)  # the same store, via MLflow
    slow = runs.load_mlflow(smoke_sweep.uri, [smoke_sweep.study], curves=True)
    a, b = key(fast[smoke_sweep.study]), key(slow[smoke_sweep.study])
    assert len(a) == 10 and a == b
    finished = [r for r in a if r.finished]
    assert len(finished) == 9
    assert {r.state for r in a if not r.finished} == {"failed"}
    for r in finished:
        assert r.variant_base in ("IRRA", "BiLMa") and r.variant_index in (0, 1)
        assert set(r.grid_point) == {"loss.id_weight"} and r.seed in (1, 2, 3)
        assert [e for e, _ in r.curve] == [1, 2] and r.curve_split == "val"


def test_trial_directories_agree_with_mlflow(smoke_sweep):
    from_dirs = key(runs.load_dirs(smoke_sweep.runs)[smoke_sweep.study])
    from_mlflow = key(runs.load_mlflow(smoke_sweep.uri, curves=True)[smoke_sweep.study])
    assert [r.trial_id for r in from_dirs] == [r.trial_id for r in from_mlflow]
    for d, m in zip(from_dirs, from_mlflow, strict=True):
        fields = ("variant", "variant_base", "variant_index", "grid_point", "seed", "dataset")
        assert [getattr(d, f) for f in fields] == [getattr(m, f) for f in fields]
        assert (d.state, d.metrics, d.selection_split) == (m.state, m.metrics, m.selection_split)
        assert d.curve == m.curve


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_two_configurations_of_one_seed_read_from_mlflow_name_their_keys(tmp_path):
    """The runs of two grids with one study name, mirrored by sync: the tables read the
    params of that variant's runs and show both configurations."""
    from support.analysis import trial_on_disk

    from bilma.analysis.aggregate import build_table
    from bilma.tracking.sync import sync

    folder, uri = tmp_path / "runs", f"sqlite:///{tmp_path}/mlflow.db"
    trial_on_disk(folder, "clash", "IRRA", 1, 41.0, grid="a", **{"optim.lr": 1e-4})
    trial_on_disk(folder, "clash", "IRRA", 1, 61.0, grid="b", **{"optim.lr": 2e-4})
    trial_on_disk(folder, "clash", "IRRA", 2, 42.0, grid="a", **{"optim.lr": 1e-4})
    sync(folder, uri)
    (recs,) = runs.load_mlflow(uri, ["clash"]).values()
    assert all(r.config["optim.lr"] for r in recs)
    table = build_table("clash", recs)
    labels = {r.label: r.n["synth"] for r in table.rows}
    assert labels == {"IRRA (optim.lr=0.0001)": 2, "IRRA (optim.lr=0.0002)": 1}


@pytest.mark.parametrize(
    "content", ["{not json", '["done"]', "", '"done"', '{"state": "done", "started": "noon"}']
)
def test_a_finished_trial_with_a_bad_status_json_is_kept(tmp_path, caplog, content):
    """status.json garbage, a list, empty, a string, a field of the wrong type: the trial
    finished (result.json), so it stays in the table; one warning names the file."""
    from support.analysis import trial_on_disk

    from bilma.analysis.aggregate import build_table

    good = trial_on_disk(tmp_path / "runs", "bad-status", "IRRA", 1, 40.0)
    bad = trial_on_disk(tmp_path / "runs", "bad-status", "IRRA", 2, 50.0)
    bad.status_path.write_text(content)
    (recs,) = runs.load_dirs(tmp_path / "runs").values()
    assert sorted(r.trial_id for r in recs if r.finished) == sorted([good.trial_id, bad.trial_id])
    assert build_table("bad-status", recs).rows[0].n == {"synth": 2}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if content.startswith('{"state"'):
        assert warned == []
    else:
        assert len(warned) == 1 and str(bad.status_path) in warned[0]


BAD_FILES = {
    # file: (content, the trial is still averaged)
    "result.json/garbage": ("result.json", '{"metrics": {"R1": 4', False),
    "result.json/list": ("result.json", "[1, 2]", False),
    "result.json/empty": ("result.json", "", False),
    "result.json/metric text": ("result.json", None, False),
    "config.yaml/list": ("config.yaml", "- a\n- b\n", True),
    "config.yaml/garbage": ("config.yaml", "train: {epochs: [\n", True),
    "launch.json/list": ("launch.json", "[]", True),
    "launch.json/types": (
        "launch.json",
        '{"variant": 7, "variant_base": ["x"], "seed": "a"}',
        True,
    ),
    "metrics.jsonl/torn": ("metrics.jsonl", '{"epoch": 1, "split": "val", "R1": "x"}\n{"ep', True),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_other_files_of_the_run_record_cost_only_themselves(tmp_path, capsys, caplog, case):
    """make_tables --runs over a study one trial of which has a bad file: the other trials'
    table, the bad one averaged if its result.json is sound, else listed as not averaged;
    a warning names the file; never a traceback."""
    import json

    from support.analysis import trial_on_disk

    from bilma.analysis.make_tables import main as make_tables

    name, content, averaged = BAD_FILES[case]
    trial_on_disk(tmp_path / "runs", "bad-file", "IRRA", 1, 40.0)
    bad = trial_on_disk(tmp_path / "runs", "bad-file", "IRRA", 2, 50.0)
    if content is None:  # a metric that is text
        result = json.loads(bad.result_path.read_text())
        result["metrics"]["R1"] = "fifty"
        content = json.dumps(result)
    (bad.path / name).write_text(content)
    assert make_tables(["--runs", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    err += "\n".join(r.getMessage() for r in caplog.records)
    assert ("| IRRA | 2 |" in out) == averaged, out
    assert ("Not averaged in (1)" in out) != averaged, out
    if not averaged:
        assert f"({bad.trial_id}): unreadable" in out
    if name != "launch.json":  # the fields of launch.json that are of no use are left out
        assert str(bad.path / name) in err, err
    assert "Traceback" not in err


def test_a_failed_trial_is_listed_with_its_cause(tmp_path, capsys):
    from support.analysis import trial_on_disk

    from bilma.analysis.make_tables import main as make_tables

    trial_on_disk(tmp_path / "runs", "causes", "IRRA", 1, 40.0)
    oom = trial_on_disk(tmp_path / "runs", "causes", "IRRA", 2, 50.0)
    oom.result_path.unlink()  # it never finished: its second attempt ran out of memory
    oom.end_attempt("failed", cause="out_of_memory", error="OutOfMemoryError: CUDA")
    old = trial_on_disk(tmp_path / "runs", "causes", "IRRA", 3, 50.0)
    old.result_path.unlink()
    old.set_status("failed", error="RuntimeError: x")  # a status.json from before causes
    loaded = runs.load_dirs(tmp_path / "runs")["causes"]
    (rec_oom,) = [r for r in loaded if r.trial_id == oom.trial_id]
    assert rec_oom.cause == "out_of_memory" and rec_oom.state == "failed"
    assert make_tables(["--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "Not averaged in (2):" in out
    assert f"({oom.trial_id}): failed (out_of_memory)" in out
    assert f"({old.trial_id}): failed\n" in out
