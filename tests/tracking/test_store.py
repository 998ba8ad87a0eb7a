"""The study's experiment and a sweep's parent run as the MLflow UI shows them (real SQLite)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from support.tracking import client

from bilma.runs.schema import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND, TAG_NOTE
from bilma.tracking import store as store_module
from bilma.tracking.store import (
    ensure_experiment,
    ensure_parent_run,
    experiment_note,
    parent_run_name,
    runs_url,
)

# MLflow's own SQLAlchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def kind(uri: str, exp_id: str) -> str | None:
    return client(uri).get_experiment(exp_id).tags.get(TAG_EXPERIMENT_KIND)


def test_the_mlflow_3_ui_knows_the_kind() -> None:
    """The value is the one the installed MLflow UI calls custom model development (the runs
    table), not a guess: it is in the UI's bundle beside the GenAI kind."""
    import mlflow

    assert EXPERIMENT_KIND_TRAINING == "custom_model_development"
    assert TAG_EXPERIMENT_KIND == "mlflow.experimentKind"
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="ignore") for p in js.glob("main.*.js"))
    assert f'CUSTOM_MODEL_DEVELOPMENT="{EXPERIMENT_KIND_TRAINING}"' in bundle
    assert TAG_EXPERIMENT_KIND in "".join(p.read_text(errors="ignore") for p in js.glob("*.js"))


def test_a_new_experiment_is_tagged_model_training_and_described(store: str) -> None:
    exp_id = ensure_experiment(store, "kind-new")
    assert kind(store, exp_id) == EXPERIMENT_KIND_TRAINING
    note = client(store).get_experiment(exp_id).tags[TAG_NOTE]
    assert note == experiment_note("kind-new", exp_id)
    assert "pick **Model training** in the sidebar" in note
    assert f"(#/experiments/{exp_id}/runs?workflowType=machine_learning)" in note


def test_someone_s_description_is_kept(store: str) -> None:
    exp_id = client(store).create_experiment("described", tags={TAG_NOTE: "my notes"})
    store_module._experiments.clear()
    ensure_experiment(store, "described")
    tags = client(store).get_experiment(exp_id).tags
    assert tags[TAG_NOTE] == "my notes" and tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, EXPERIMENT_KIND_TRAINING),  # made by an older bilma: tagged when used
        ("no_inferred_type", EXPERIMENT_KIND_TRAINING),  # the UI's "not inferred": no choice
        ("genai_development", "genai_development"),  # someone chose it in the UI: kept
    ],
)
def test_an_existing_experiment_gets_the_kind_unless_one_was_chosen(
    store: str, before: str | None, after: str
) -> None:
    name = f"kind-old-{before}"
    tags = {TAG_EXPERIMENT_KIND: before} if before else None
    exp_id = client(store).create_experiment(name, tags=tags)
    assert kind(store, exp_id) == before
    store_module._experiments.clear()  # a new process: the cache knows nothing
    assert ensure_experiment(store, name) == exp_id
    assert kind(store, exp_id) == after
    assert client(store).get_experiment(exp_id).tags[TAG_NOTE] == experiment_note(name, exp_id)


def test_parent_run_named_by_the_study(store: str) -> None:
    assert parent_run_name("synth-ablation", "synth_ablation") == "synth-ablation"
    assert parent_run_name("ablation-cuhk", "ablation") == "ablation-cuhk"
    assert parent_run_name("ablation-cuhk", "knobs") == "ablation-cuhk (knobs)"
    run_id = ensure_parent_run(store, "parent-name", "parent-name")
    run = client(store).get_run(run_id)
    assert run.info.run_name == "parent-name" and run.data.tags["kind"] == "sweep"
    other = ensure_parent_run(store, "parent-name", "knobs")
    assert client(store).get_run(other).info.run_name == "parent-name (knobs)"

    # A parent named by an older bilma (the grid's name) takes the study's on the next launch.
    exp_id = ensure_experiment(store, "renamed-cuhk")
    old = client(store).create_run(
        exp_id,
        tags={"kind": "sweep", "sweep": "renamed", "study": "renamed-cuhk"},
        run_name="renamed",
    )
    assert ensure_parent_run(store, "renamed-cuhk", "renamed") == old.info.run_id
    assert client(store).get_run(old.info.run_id).info.run_name == "renamed-cuhk"


def test_runs_url_opens_the_model_training_view(store: str, tmp_path: Path) -> None:
    exp_id = ensure_experiment(store, "linked")
    view = f"/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert runs_url(store, "linked") == "http://127.0.0.1:5000" + view
    assert runs_url(store, "linked", base="http://mlflow.lab:8080/") == (
        "http://mlflow.lab:8080" + view
    )

    # Looked up only: a missing experiment (or store) is None and nothing is made.
    assert runs_url(store, "never-made") is None
    assert client(store).get_experiment_by_name("never-made") is None
    assert runs_url(f"sqlite:///{tmp_path}/none/mlflow.db", "linked") is None
    assert not (tmp_path / "none").exists()
    client(store).delete_experiment(client(store).create_experiment("gone"))
    assert runs_url(store, "gone") is None


def test_runs_url_of_an_unreachable_server_is_none_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(var, "")  # recorded, so what runs_url sets is undone after the test
        monkeypatch.delenv(var)  # MLflow's defaults (retries for minutes) unless runs_url's
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert runs_url(f"http://127.0.0.1:{port}", "linked") is None
    assert time.monotonic() - start < 10


# ----------------------------------------------------------------------------- bad stores


def _tables(db: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return sorted(
            r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )
    finally:
        con.close()


def _bad_store(kind: str, tmp_path: Path, store: str) -> Path:
    """A SQLite file that is no usable MLflow store of this MLflow."""
    import shutil
    import sqlite3

    db = tmp_path / f"{kind}.db"
    if kind == "garbage":
        db.write_bytes(bytes(range(256)) * 64)
    elif kind == "torn":  # a real store, cut short (a copy that stopped half way)
        ensure_experiment(store, "torn-source")
        good = Path(store[len("sqlite:///") :]).read_bytes()
        db.write_bytes(good[: len(good) // 2])
    elif kind == "foreign":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
        con.execute("INSERT INTO notes VALUES (1, 'precious')")
        con.commit()
        con.close()
    elif kind == "older":  # this MLflow's store, one schema revision back
        from alembic import command
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        ensure_experiment(store, "older-source")
        shutil.copy(store[len("sqlite:///") :], db)
        cfg = _get_alembic_config(f"sqlite:///{db}")
        previous = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()][1]
        command.downgrade(cfg, previous)
    return db


BAD_STORES = {
    "garbage": "is not an SQLite database",
    "torn": "is damaged",
    "foreign": "not an MLflow store (its tables: notes)",
    "older": "mlflow db upgrade sqlite:///",
}


@pytest.mark.parametrize("kind", list(BAD_STORES))
def test_a_bad_store_is_one_line_and_left_as_it_was(kind, tmp_path, store, capsys) -> None:
    """make_tables and sync on a damaged file, another program's SQLite database or a store
    of an older MLflow schema: one line naming the file and the fix; MLflow never opens it
    (it would add its tables to the foreign file and migrate the older one in place)."""
    from support.analysis import trial_on_disk

    from bilma.analysis.make_tables import main as make_tables
    from bilma.tracking.store import TrackingError
    from bilma.tracking.sync import sync

    db = _bad_store(kind, tmp_path, store)
    before = db.read_bytes()
    uri = f"sqlite:///{db}"
    capsys.readouterr()  # MLflow's lines while the fixture made the store
    assert make_tables(["--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(db) in err and BAD_STORES[kind] in err, err
    trial_on_disk(tmp_path / "runs", "bad-store", "IRRA", 1, 40.0)
    with pytest.raises(TrackingError, match=re.escape(BAD_STORES[kind])) as e:
        sync(tmp_path / "runs", uri)
    assert str(db) in str(e.value) and "\n" not in str(e.value)
    assert db.read_bytes() == before


def test_an_empty_file_is_a_new_store(tmp_path) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    ensure_experiment(f"sqlite:///{db}", "fresh")
    assert "experiments" in _tables(db)


def test_the_schema_revision_read_as_text_is_mlflow_s() -> None:
    """check_store reads MLflow's migration scripts as text: the head it finds is the one
    MLflow's own check demands."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    head, known = store_module._schema_revisions()
    assert head == _get_latest_schema_revision() and head in known and len(known) > 50


def test_a_store_damaged_inside_is_one_line_for_the_tables(tmp_path, store, capsys) -> None:
    """A store whose first page is sound but whose runs table is not (a disk error): the
    tables say so in one line, not with MLflow's SQLAlchemy traceback."""
    import shutil
    import sqlite3

    from bilma.analysis.make_tables import main as make_tables

    ensure_experiment(store, "damaged-source")
    db = tmp_path / "damaged.db"
    shutil.copy(store[len("sqlite:///") :], db)
    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    (root,) = con.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'experiments'"
    ).fetchone()
    con.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page : root * page] = b"\xff" * page
    db.write_bytes(bytes(data))
    capsys.readouterr()
    assert make_tables(["--tracking-uri", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {db} is damaged (database disk image is malformed); restore it from a backup "
        "(or salvage it with `sqlite3 DB .recover`), or read the trial directories with --runs DIR"
    )


@pytest.mark.parametrize("kind", ["folder", "file store"])
def test_a_store_that_is_a_folder_is_one_line(kind, tmp_path, capsys, monkeypatch) -> None:
    """sqlite:/// naming a folder, or MLflow's file store (which MLflow 3 no longer opens):
    one line with the fix, for the tables and for sync."""
    from support.analysis import trial_on_disk

    from bilma.analysis.make_tables import main as make_tables
    from bilma.tracking.store import TrackingError
    from bilma.tracking.sync import sync

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "store").mkdir()
    if kind == "folder":
        uri, fix = f"sqlite:///{tmp_path / 'store'}", "is a folder, not an SQLite file"
    else:
        uri, fix = f"file://{tmp_path / 'store'}", "mlflow migrate-filestore --source"
    assert make_tables(["--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fix in err, err
    trial_on_disk(tmp_path / "runs", "folder-store", "IRRA", 1, 40.0)
    with pytest.raises(TrackingError, match=re.escape(fix)):
        sync(tmp_path / "runs", uri)
    assert list((tmp_path / "store").iterdir()) == []
