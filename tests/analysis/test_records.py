"""Reading the smoke sweep's store: the direct SQLite reader gives exactly what MLflow's
client gives, and the trial directories agree with both."""

from __future__ import annotations

from bilma.analysis import records as runs


def key(records):
    return sorted(records, key=lambda r: r.trial_id)


def test_sqlite_reader_equals_mlflow_client(smoke_sweep, monkeypatch):
    from bilma.tracking import read

    fast = runs.load_mlflow(smoke_sweep.uri, [smoke_sweep.study], curves=True)
    monkeypatch.setattr(read, "_sqlite_file", lambda uri: None)  # the same store, via MLflow
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
