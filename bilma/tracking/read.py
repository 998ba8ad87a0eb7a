"""MLflow runs read back for the tables: one `RunRow` per run (tags, the params asked for,
the latest test metrics, optionally a per-epoch curve), grouped by study (experiment).

A SQLite store is read directly (read-only, only the columns asked for: 1,000 runs in well
under a second, where MLflow's client takes tens of seconds to build every run's params); any
other store, or a SQLite schema this reader does not know, through MLflow's client. A store
that is not there, or a server that does not answer, fails in one line (AnalysisError).
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bilma.errors import AnalysisError, first_line
from bilma.runs.schema import USAGE_FIELDS
from bilma.tracking.store import DEFAULT_URI, TrackingError, check_store, resolve_uri, sqlite_path

log = logging.getLogger(__name__)

USED = USAGE_FIELDS[:2]  # gpu_hours, cpu_hours: the tables' study totals


@dataclass
class RunRow:
    """One MLflow run as the tables read it."""

    study: str
    run_id: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    start_ms: int | None
    tags: dict[str, str]
    params: dict[str, str]  # only those asked for
    metrics: dict[str, float]  # latest value of each test/* metric, and of USED
    curves: dict[str, list[tuple[int, int, float]]] = field(
        default_factory=dict
    )  # key -> (step, ms, value)


# Which per-epoch curve (a metric key) a row needs, or None.
CurveKey = Callable[[RunRow], "str | None"]


def read_runs(
    uri: str | None,
    studies: list[str] | None,
    params: tuple[str, ...],
    curve_key: CurveKey | None = None,
) -> dict[str, list[RunRow]]:
    """{study: rows} of the studies asked for (every experiment when None; an unknown one is
    refused naming those there)."""
    uri = resolve_uri(uri or DEFAULT_URI)
    _check_store(uri)
    db = sqlite_path(uri)
    if db is not None:
        try:
            return _read_sqlite(db, uri, studies, params, curve_key)
        except sqlite3.OperationalError as e:  # a schema this reader does not know
            log.debug("reading %s directly failed (%s); using MLflow's client", db, e)
        except sqlite3.DatabaseError as e:  # torn pages: MLflow would only add a traceback
            raise AnalysisError(
                f"{db} is damaged ({e}); restore it from a backup (or salvage it with "
                "`sqlite3 DB .recover`), or read the trial directories with --runs DIR"
            ) from None
    return _read_client(uri, studies, params, curve_key)


def read_params(uri: str | None, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """{run id: every param} of a few runs (the tables read all params only of those)."""
    uri = resolve_uri(uri or DEFAULT_URI)
    db = sqlite_path(uri)
    out: dict[str, dict[str, str]] = {rid: {} for rid in run_ids}
    if db is not None:
        try:
            con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
            try:
                marks = ",".join("?" * len(run_ids))
                for rid, key, value in con.execute(
                    f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({marks})", run_ids
                ):
                    out[rid][key] = value
            finally:
                con.close()
            return out
        except sqlite3.DatabaseError as e:
            log.debug("reading %s directly failed (%s); using MLflow's client", db, e)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for rid in run_ids:
        out[rid] = dict(client.get_run(rid).data.params)
    return out


def _check_store(uri: str) -> None:
    """Fail in one line on a store that is not there (MLflow would create an empty SQLite
    file) or a server that does not answer (MLflow would retry for minutes)."""
    try:
        check_store(uri)
    except TrackingError as e:
        raise AnalysisError(str(e)) from None
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise AnalysisError(
            f"no MLflow store at {db} (tracking URI {uri}): run a sweep first, or pass "
            "--tracking-uri URI or --runs DIR"
        )
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _choose(experiments: dict[str, str], studies: list[str] | None, uri: str) -> dict[str, str]:
    """{study: experiment id} of the studies asked for (all when None); unknown ones refused."""
    if not studies:
        return dict(sorted(experiments.items()))
    for name in studies:
        if name not in experiments:
            known = ", ".join(sorted(experiments)) or "none"
            raise AnalysisError(f"unknown study '{name}' at {uri} (studies there: {known})")
    return {name: experiments[name] for name in studies}


def _read_client(
    uri: str, studies: list[str] | None, params: tuple[str, ...], curve_key: CurveKey | None
) -> dict[str, list[RunRow]]:
    from mlflow import MlflowClient  # lazily: importing mlflow costs about a second

    try:
        client = MlflowClient(tracking_uri=uri)
        experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    except Exception as e:
        raise AnalysisError(
            f"cannot read the MLflow store at {uri} ({first_line(e)}); start the server or "
            "pass --tracking-uri URI, or read trial directories with --runs DIR"
        ) from None
    out: dict[str, list[RunRow]] = {}
    for name, exp_id in _choose(experiments, studies, uri).items():
        rows = []
        token = None
        while True:
            page = client.search_runs([exp_id], max_results=50000, page_token=token)
            for run in page:
                info, data = run.info, run.data
                wanted = {k: v for k, v in data.params.items() if k in params}
                test = {k: v for k, v in data.metrics.items() if k.startswith("test/") or k in USED}
                rows.append(
                    RunRow(name, info.run_id, info.status, info.start_time, data.tags, wanted, test)
                )
            token = page.token
            if not token:
                break
        if curve_key is not None:
            for row in rows:
                key = curve_key(row)
                if key:
                    history = client.get_metric_history(row.run_id, key)
                    row.curves[key] = [(m.step, m.timestamp, m.value) for m in history]
        out[name] = rows
    return out


def _read_sqlite(
    db: Path,
    uri: str,
    studies: list[str] | None,
    params: tuple[str, ...],
    curve_key: CurveKey | None,
) -> dict[str, list[RunRow]]:
    """The same rows as `_read_client`, straight from MLflow's SQLite tables."""
    con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
    try:
        experiments = dict(
            con.execute(
                "SELECT name, experiment_id FROM experiments WHERE lifecycle_stage = 'active'"
            ).fetchall()
        )
        return {
            name: _sqlite_study(con, name, exp_id, params, curve_key)
            for name, exp_id in _choose(experiments, studies, uri).items()
        }
    finally:
        con.close()


def _sqlite_study(
    con: Any, name: str, exp_id: Any, params: tuple[str, ...], curve_key: CurveKey | None
) -> list[RunRow]:
    in_exp = "run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = ?)"
    runs = con.execute(
        "SELECT run_uuid, status, start_time FROM runs "
        "WHERE experiment_id = ? AND lifecycle_stage = 'active'",
        (exp_id,),
    ).fetchall()
    rows = {rid: RunRow(name, rid, status, start, {}, {}, {}) for rid, status, start in runs}
    for rid, key, value in con.execute(
        f"SELECT run_uuid, key, value FROM tags WHERE {in_exp}", (exp_id,)
    ):
        if rid in rows:
            rows[rid].tags[key] = value
    marks = ",".join("?" * len(params))
    for rid, key, value in con.execute(
        f"SELECT run_uuid, key, value FROM params WHERE key IN ({marks}) AND {in_exp}",
        (*params, exp_id),
    ):
        if rid in rows:
            rows[rid].params[key] = value
    for rid, key, value, is_nan in con.execute(
        f"SELECT run_uuid, key, value, is_nan FROM latest_metrics "
        f"WHERE (key LIKE 'test/%' OR key IN ({','.join('?' * len(USED))})) AND {in_exp}",
        (*USED, exp_id),
    ):
        if rid in rows:
            rows[rid].metrics[key] = math.nan if is_nan else float(value)
    if curve_key is not None:
        wanted = {rid: curve_key(row) for rid, row in rows.items()}
        for rid, key, step, ts, value in con.execute(
            f"SELECT run_uuid, key, step, timestamp, value FROM metrics "
            f"WHERE key LIKE '%/R1' AND is_nan = 0 AND {in_exp}",
            (exp_id,),
        ):
            if rid in rows and wanted.get(rid) == key:
                rows[rid].curves.setdefault(key, []).append((int(step), int(ts), float(value)))
    return list(rows.values())
