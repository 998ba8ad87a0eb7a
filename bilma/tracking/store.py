"""The MLflow store: which URI, a client for it, the study's experiment, a sweep's parent run.

The study's experiment carries `mlflow.experimentKind=custom_model_development` (the MLflow 3
UI's "model training" kind), set when bilma creates it and when bilma uses one that has no
kind yet (a kind someone chose in the UI is left alone): the kind by which MLflow's UI is to
open an experiment on its runs table rather than on its GenAI pages. MLflow 3.17's UI does not
read it for that yet: one switch in its sidebar ("GenAI | Model training", remembered by the
browser, GenAI by default) decides (mlflow/mlflow#24498). So the experiment's description,
which the UI shows atop the GenAI pages too, says so and links to the runs table
(`experiment_note`; an existing description is never replaced); the launcher and `make demo`
print the URL that opens the runs table in any browser (`runs_url`, which names the view:
`?workflowType=machine_learning`). The parent run of a sweep is named by the study
(`parent_run_name`); what it carries is `bilma.tracking.parent`'s.

MLflow is imported lazily (about a second): the analysis side and `--help` do without it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from bilma.errors import TrackingError  # noqa: F401  (importable from here too)
from bilma.runs.schema import (
    EXPERIMENT_KIND_TRAINING,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_NOTE,
    TAG_RUN_NAME,
    TAG_STUDY,
    TAG_SWEEP,
)

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(uri: str | None) -> str:
    """The URI to use: the default defers to $MLFLOW_TRACKING_URI (a cluster's server);
    a relative SQLite path is made absolute so a later chdir cannot move the store."""
    uri = uri or DEFAULT_URI
    if uri == DEFAULT_URI and os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        uri = "sqlite:///" + str(Path.cwd() / db)
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


# Tables every MLflow store has had (the oldest schemas included): a SQLite file holding
# tables but none of these is another program's.
_MLFLOW_TABLES = {"experiments", "runs"}


def check_store(uri: str) -> None:
    """Refuse, in one line naming the file and the fix, a SQLite file MLflow must not open:
    one that is not SQLite or is damaged (MLflow: an SQLAlchemy traceback), another program's
    database (MLflow would add its tables to it), a store of another MLflow schema (MLflow
    migrates an older one in place, and then older MLflows cannot open it). A missing or
    empty file is a new store. Reads the file only (read-only); other URIs pass."""
    if _is_file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        import mlflow

        folder = uri[len("file://") :] if uri.startswith("file://") else uri
        raise TrackingError(
            f"{uri} is a file store, which MLflow {mlflow.__version__} no longer opens: "
            f"migrate it with `mlflow migrate-filestore --source {folder} --target "
            "sqlite:///mlflow.db` and use that URI (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    db = sqlite_path(uri)
    if db is not None and db.is_dir():
        raise TrackingError(
            f"{db} is a folder, not an SQLite file: point tracking.uri (--tracking-uri, --uri) "
            f"at a file, e.g. sqlite:///{db / 'mlflow.db'}"
        )
    if db is None or not db.is_file() or db.stat().st_size == 0:
        return
    tables, revision = _sqlite_tables(db, uri)
    tables = {t for t in tables if not t.startswith(("alembic_", "sqlite_"))}
    if not tables:
        return  # a new store (or one whose creation stopped before its first table)
    if not tables >= _MLFLOW_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise TrackingError(
            f"{db} is not an MLflow store (its tables: {shown}); MLflow would add its own "
            "tables to it: point tracking.uri (--tracking-uri, --uri) at another file"
        )
    head, known = _schema_revisions()
    if head is None or revision == head:
        return
    import mlflow

    if revision in known or revision is None:
        raise TrackingError(
            f"{db} is an MLflow store of an older schema (revision {revision}; MLflow "
            f"{mlflow.__version__} needs {head}): back it up, then run "
            f"`mlflow db upgrade {uri}` (MLflows older than {mlflow.__version__} cannot open "
            "it afterwards)"
        )
    raise TrackingError(
        f"{db} was written by a newer MLflow (schema revision {revision}, unknown to MLflow "
        f"{mlflow.__version__}): upgrade mlflow, or point tracking.uri at another store"
    )


def _is_file_store(uri: str) -> bool:
    """A file:// URI or a plain folder path: MLflow's file store."""
    return uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))


def _sqlite_tables(db: Path, uri: str) -> tuple[set[str], str | None]:
    """The tables of a SQLite file and its alembic revision, read-only."""
    import sqlite3
    from urllib.parse import quote

    try:
        con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            revision = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        what = "is not an SQLite database" if "not a database" in str(e) else "is damaged"
        raise TrackingError(
            f"{db} {what} ({e}); it is no MLflow store MLflow can open: restore it from a "
            "backup, or point tracking.uri (--tracking-uri, --uri) at another file"
        ) from None
    return tables, revision


@functools.cache
def _schema_revisions() -> tuple[str | None, frozenset[str]]:
    """(the schema revision this MLflow writes, every revision it knows), read from its
    migration scripts as text (importing them through alembic costs a second); (None, {})
    when they cannot be found (the check is then left to MLflow)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("mlflow")
    if spec is None or spec.origin is None:
        return None, frozenset()
    versions = Path(spec.origin).parent / "store" / "db_migrations" / "versions"
    revisions, parents = set(), set()
    for script in versions.glob("*.py"):
        text = script.read_text(errors="replace")
        rev = re.search(r'^revision\s*=\s*["\']([0-9a-f]+)["\']', text, re.M)
        down = re.search(r'^down_revision\s*=\s*["\']([0-9a-f]+)["\']', text, re.M)
        if rev:
            revisions.add(rev.group(1))
        if down:
            parents.add(down.group(1))
    heads = revisions - parents
    return (heads.pop() if len(heads) == 1 else None), frozenset(revisions)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _prepare(uri: str) -> None:
    """Fail fast on an unreachable server (MLflow's defaults retry for minutes)."""
    if _is_http(uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    check_store(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def mlflow_client(uri: str) -> Any:
    """An `MlflowClient` for `uri` (already resolved), failing fast on a dead server."""
    _prepare(uri)
    from mlflow import MlflowClient  # lazily: importing mlflow costs about a second

    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str, study: str) -> str | None:
    """`<dir of the sqlite file>/mlartifacts/<study>`; None (the server's default) otherwise."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return str(db.parent / "mlartifacts" / study)


_experiments: dict[tuple[str, str], str] = {}
# Kinds that are no one's choice: the UI's "not inferred", or nothing. bilma replaces these.
_NO_KIND = ("", "no_inferred_type")


def ensure_experiment(uri: str, study: str) -> str:
    """Create the store and the study's experiment if missing; return the experiment id.

    Call it once before runs start in parallel: on a new SQLite file, concurrent schema
    migrations and `set_experiment` races corrupt the store or misfile runs (STACK.md).
    """
    uri = resolve_uri(uri)
    if (uri, study) in _experiments:
        return _experiments[(uri, study)]
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(study)
    tags: dict[str, str] = {}
    if exp is None:
        try:
            exp_id = client.create_experiment(
                study,
                artifact_location=artifact_location(uri, study),
                tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING},
            )
            tags = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}
        except MlflowException:
            exp = client.get_experiment_by_name(study)  # another process won the race
            if exp is None:
                raise
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment '{study}' at {uri} is deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or use "
                "another tracking.study"
            )
        exp_id, tags = exp.experiment_id, exp.tags
    if tags.get(TAG_EXPERIMENT_KIND, "") in _NO_KIND:  # made before bilma tagged them
        client.set_experiment_tag(exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    if not tags.get(TAG_NOTE):  # never someone's own description
        client.set_experiment_tag(exp_id, TAG_NOTE, experiment_note(study, exp_id))
    _experiments[(uri, study)] = exp_id
    return exp_id


def experiment_note(study: str, exp_id: str) -> str:
    """The experiment's description (Markdown, shown atop its pages, GenAI ones included)."""
    runs = f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
    return (
        f"Training runs of the bilma study `{study}`: one run per trial, under its sweep's "
        "parent run. If MLflow shows its GenAI pages, pick **Model training** in the sidebar "
        f"(the browser remembers it), or [open the runs table]({runs})."
    )


def runs_url(uri: str, study: str, base: str = "http://127.0.0.1:5000") -> str | None:
    """The study's runs table in the UI's model-training view, served at `base`: the URL a
    fresh browser opens on the runs (not on the GenAI pages, mlflow/mlflow#24498). None when
    the experiment does not exist (or is deleted) or MLflow cannot be read; never raises.
    Looks up only: no experiment is made, nor a SQLite file that is not there."""
    try:
        uri = resolve_uri(uri)
        db = sqlite_path(uri)
        if db is not None and not db.is_file():
            return None
        exp = mlflow_client(uri).get_experiment_by_name(study)
    except Exception:  # noqa: BLE001 (a link is a nicety: no store, no link)
        return None
    if exp is None or exp.lifecycle_stage == "deleted":
        return None
    return (
        f"{base.rstrip('/')}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    )


def parent_run_name(study: str, sweep: str) -> str:
    """The parent run's name: the study's ("ablation-cuhk"), with the grid file's name when the
    study's name does not already say it ("ablation-cuhk (knobs)"): one study, several grids."""

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    return study if not sweep or norm(sweep) in norm(study) else f"{study} ({sweep})"


def ensure_parent_run(uri: str, study: str, sweep: str, tags: dict[str, str] | None = None) -> str:
    """The sweep's parent run (tags kind=sweep, sweep=<name>; named by `parent_run_name`),
    created once: a relaunch of the same sweep gets the same run id (and a run named before
    this naming its new name). Raises (MlflowException) if MLflow fails."""
    uri = resolve_uri(uri)
    exp_id = ensure_experiment(uri, study)
    client = mlflow_client(uri)
    runs = client.search_runs(
        [exp_id],
        f"tags.kind = 'sweep' and tags.sweep = '{sweep}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    name = parent_run_name(study, sweep)
    if runs:
        run = runs[0]
        new = {k: str(v) for k, v in {**(tags or {}), TAG_RUN_NAME: name}.items()}
        new = {k: v for k, v in new.items() if run.data.tags.get(k) != v}
        if new:
            from mlflow.entities import RunTag

            client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in new.items()])
        return run.info.run_id
    all_tags = {TAG_KIND: "sweep", TAG_SWEEP: sweep, TAG_STUDY: study, **(tags or {})}
    return client.create_run(exp_id, tags=all_tags, run_name=name).info.run_id
