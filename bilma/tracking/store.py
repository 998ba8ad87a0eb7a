"""The MLflow store: which URI, a client for it, the study's experiment, a sweep's parent run.

MLflow is imported lazily (about a second): the analysis side and `--help` do without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bilma.errors import TrackingError  # noqa: F401  (importable from here too)
from bilma.runs.schema import TAG_KIND, TAG_STUDY, TAG_SWEEP

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(uri: str | None) -> str:
    """The URI to use: the default defers to $MLFLOW_TRACKING_URI (a cluster's server);
    a relative SQLite path is made absolute so a later chdir cannot move the store."""
    uri = uri or DEFAULT_URI
    if uri == DEFAULT_URI and os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    db = _sqlite_path(uri)
    if db is not None and not db.is_absolute():
        uri = "sqlite:///" + str(Path.cwd() / db)
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _prepare(uri: str) -> None:
    """Fail fast on an unreachable server (MLflow's defaults retry for minutes)."""
    if _is_http(uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def mlflow_client(uri: str) -> Any:
    """An `MlflowClient` for `uri` (already resolved), failing fast on a dead server."""
    _prepare(uri)
    from mlflow import MlflowClient  # lazily: importing mlflow costs about a second

    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str, study: str) -> str | None:
    """`<dir of the sqlite file>/mlartifacts/<study>`; None (the server's default) otherwise."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return str(db.parent / "mlartifacts" / study)


_experiments: dict[tuple[str, str], str] = {}


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
    if exp is None:
        try:
            exp_id = client.create_experiment(
                study, artifact_location=artifact_location(uri, study)
            )
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
        exp_id = exp.experiment_id
    _experiments[(uri, study)] = exp_id
    return exp_id


def ensure_parent_run(uri: str, study: str, sweep: str, tags: dict[str, str] | None = None) -> str:
    """The sweep's parent run (tags kind=sweep, sweep=<name>), created once: a relaunch
    of the same sweep gets the same run id. Raises (MlflowException) if MLflow fails."""
    uri = resolve_uri(uri)
    exp_id = ensure_experiment(uri, study)
    client = mlflow_client(uri)
    runs = client.search_runs(
        [exp_id],
        f"tags.kind = 'sweep' and tags.sweep = '{sweep}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if runs:
        run_id = runs[0].info.run_id
        if tags:
            from mlflow.entities import RunTag

            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return run_id
    all_tags = {TAG_KIND: "sweep", TAG_SWEEP: sweep, TAG_STUDY: study, **(tags or {})}
    return client.create_run(exp_id, tags=all_tags, run_name=sweep).info.run_id
