"""Finished and unfinished trials of the studies, read from MLflow or from trial directories.

This is the ONE place in `analysis/` that imports the run schema from `bilma` (the tracking
URI default, the result metrics, the trial-directory reader): if those names move, fix the
imports here.

    studies = load_mlflow("sqlite:///mlflow.db", ["smoke"], curves=True)
    studies = load_dirs("runs", ["smoke"])     # a cluster whose runs were never synced
    # -> {study: [TrialRecord, ...]} in launch order

A trial's table row comes from what it recorded, never from its display name: the variant's
base name and position in the grid and the grid point (axis -> value) are read from
result.json / MLflow tags when present, else from the resolved config (config.yaml's
tracking section, or the MLflow params of the flattened config).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The run schema, from the library (see the module docstring).
from bilma.tracking import DEFAULT_URI, RESULT_METRICS, TrialDir, find_trials, resolve_uri

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_URI",
    "RESULT_METRICS",
    "AnalysisError",
    "TrialRecord",
    "load_dirs",
    "load_mlflow",
]

FINISHED, STOPPED = "finished", "stopped"
# MLflow run status -> trial state as the tables name it.
_STATE_OF_STATUS = {
    "FINISHED": FINISHED,
    "FAILED": "failed",
    "KILLED": "interrupted",
    "RUNNING": "running",
    "SCHEDULED": "pending",
}
# Axes that say which dataset a trial ran on: the dataset is its own column, not a grid point.
DATASET_AXES = ("data.dataset", "data.root", "data.parsing_root", "data.tokenizer")


class AnalysisError(RuntimeError):
    """Bad input for the tables: one line naming the study, store or folder and the fix."""


@dataclass
class TrialRecord:
    """What the tables need of one trial, whichever store it came from."""

    study: str
    trial_id: str
    variant: str  # display label, only shown
    variant_base: str  # the grid's variant name: the row
    variant_index: int  # position in the grid (row order); -1 when unknown
    grid_point: dict[str, Any]  # swept axis -> value
    seed: int
    dataset: str
    state: str  # finished | stopped | failed | interrupted | running | pending | unknown
    metrics: dict[str, float] = field(default_factory=dict)  # test split, selected checkpoint
    selection_split: str | None = None
    selection_metric: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, R1 on curve_split)
    curve_split: str | None = None
    started: float = 0.0  # unix time; orders runs when variant_index is unknown
    run_id: str | None = None
    path: Path | None = None

    @property
    def finished(self) -> bool:
        return self.state == FINISHED and all(m in self.metrics for m in RESULT_METRICS)

    def point(self, drop: tuple[str, ...] = DATASET_AXES) -> tuple[tuple[str, Any], ...]:
        """The grid point as a hashable key, without the dataset axes."""
        return tuple((k, hashable(v)) for k, v in self.grid_point.items() if k not in drop)


def hashable(value: Any) -> Any:
    """Lists (YAML [384, 128]) as tuples, so grid points can be dictionary keys."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    return value


def _parse_point(raw: Any) -> dict[str, Any]:
    """A grid point given as a dict or as JSON text ('' and None: no axes)."""
    if isinstance(raw, dict):
        return dict(raw)
    if isinstance(raw, str) and raw.strip():
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        return dict(value) if isinstance(value, dict) else {}
    return {}


def _yaml_value(text: str) -> Any:
    """An MLflow param or tag back to its value ("0.3" -> 0.3; params are YAML/JSON)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _order(records: list[TrialRecord]) -> list[TrialRecord]:
    return sorted(records, key=lambda r: (r.started, r.trial_id))


# ----------------------------------------------------------------------------- MLflow


def _check_store(uri: str) -> None:
    """Fail in one line on a store that is not there (MLflow would create an empty SQLite
    file) or a server that does not answer (MLflow would retry for minutes)."""
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        if not path.is_file():
            raise AnalysisError(
                f"no MLflow store at {path} (tracking URI {uri}): run a sweep first, or pass "
                "--tracking-uri URI or --runs DIR"
            )
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _from_run(run: Any, study: str) -> TrialRecord | None:
    """A trial run -> TrialRecord; None for a sweep's parent run or a foreign run."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    if tags.get("kind") == "sweep" or "trial_id" not in tags:
        return None
    point = {k[len("grid.") :]: _yaml_value(v) for k, v in tags.items() if k.startswith("grid.")}
    if not point:
        point = _parse_point(params.get("tracking.grid_point"))
    variant = tags.get("variant") or params.get("tracking.variant") or ""
    base = tags.get("variant_base") or params.get("tracking.variant_base") or variant
    state = _STATE_OF_STATUS.get(run.info.status, "unknown")
    if str(tags.get("stopped_early", "")).lower() == "true":
        state = STOPPED
    test = {m: float(metrics[f"test/{m}"]) for m in RESULT_METRICS if f"test/{m}" in metrics}
    if state == FINISHED and len(test) < len(RESULT_METRICS):
        state = "unknown"  # FINISHED without final metrics: not a finished trial
    return TrialRecord(
        study=study,
        trial_id=tags["trial_id"],
        variant=variant,
        variant_base=base,
        variant_index=_int(params.get("tracking.variant_index")),
        grid_point=point,
        seed=_int(tags.get("seed", params.get("train.seed"))),
        dataset=tags.get("dataset") or params.get("data.dataset") or "",
        state=state,
        metrics=test,
        selection_split=tags.get("selection_split") or params.get("eval.select_split"),
        selection_metric=tags.get("selection_metric") or params.get("eval.select_metric"),
        started=(run.info.start_time or 0) / 1000.0,
        run_id=run.info.run_id,
    )


def _curve(client: Any, rec: TrialRecord) -> None:
    """Per-epoch R1 on the selection split from the metric history (one call per run)."""
    split = rec.selection_split or "val"
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(rec.run_id, f"{split}/R1"):
        # On the test split the final metric shares the last epoch's step: keep the earlier.
        if m.step not in by_step or m.timestamp < by_step[m.step][0]:
            by_step[m.step] = (m.timestamp, m.value)
    rec.curve = sorted((step, v) for step, (_ts, v) in by_step.items())
    rec.curve_split = split


def load_mlflow(
    uri: str | None = None, studies: list[str] | None = None, curves: bool = False
) -> dict[str, list[TrialRecord]]:
    """{study: trials} from an MLflow store; every study (experiment with trial runs) if
    `studies` is None. `curves` also reads each finished trial's per-epoch R1."""
    uri = resolve_uri(uri or DEFAULT_URI)
    _check_store(uri)
    from mlflow import MlflowClient  # lazily: importing mlflow costs about a second

    client = MlflowClient(tracking_uri=uri)
    try:
        experiments = {e.name: e for e in client.search_experiments()}
    except Exception as e:
        raise AnalysisError(
            f"cannot read the MLflow store at {uri} ({_first_line(e)}); start the server or "
            "pass --tracking-uri URI, or read trial directories with --runs DIR"
        ) from None
    if studies:
        for name in studies:
            if name not in experiments:
                known = ", ".join(sorted(experiments)) or "none"
                raise AnalysisError(f"unknown study '{name}' at {uri} (studies there: {known})")
        chosen = {name: experiments[name] for name in studies}
    else:
        chosen = dict(sorted(experiments.items()))
    out: dict[str, list[TrialRecord]] = {}
    for name, exp in chosen.items():
        records = []
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], max_results=50000, page_token=token)
            records += [r for r in (_from_run(run, name) for run in page) if r is not None]
            token = page.token
            if not token:
                break
        if records or studies:
            out[name] = _order(records)
    if curves:
        for records in out.values():
            for rec in records:
                if rec.finished:
                    _curve(client, rec)
    return out


# ----------------------------------------------------------------------------- directories


def _from_dir(path: Path) -> TrialRecord | None:
    """A trial directory -> TrialRecord; None (with a warning) for an unreadable one."""
    trial = TrialDir(path)
    try:
        cfg = yaml.safe_load(trial.config_path.read_text()) or {}
        result = trial.read_result()
        status = trial.status()
    except Exception as e:  # a hand-edited file: skip it, say which
        log.warning("skipping %s: %s", path, _first_line(e))
        return None
    tracking = cfg.get("tracking") or {}
    result = result if isinstance(result, dict) else None
    state = status.get("state") or "unknown"
    if result is not None:
        state = FINISHED
    elif state == "done":
        state = "unknown"  # done without result.json: not a finished trial
    src = result or {}
    variant = src.get("variant") or tracking.get("variant") or ""
    point = src.get("grid_point")
    point = _parse_point(point if point is not None else tracking.get("grid_point"))
    selection = src.get("selection") or {}
    evalc = cfg.get("eval") or {}
    rec = TrialRecord(
        study=src.get("study") or tracking.get("study") or path.parent.name,
        trial_id=path.name,
        variant=variant,
        variant_base=src.get("variant_base") or tracking.get("variant_base") or variant,
        variant_index=_int(tracking.get("variant_index")),
        grid_point=point,
        seed=_int(src.get("seed", (cfg.get("train") or {}).get("seed"))),
        dataset=src.get("dataset") or (cfg.get("data") or {}).get("dataset") or "",
        state=state,
        metrics={k: float(v) for k, v in (src.get("metrics") or {}).items()},
        selection_split=selection.get("split") or evalc.get("select_split"),
        selection_metric=selection.get("metric") or evalc.get("select_metric"),
        started=float(status.get("started") or status.get("updated") or 0.0),
        path=path,
    )
    if rec.finished:
        split = rec.selection_split or "val"
        rec.curve = [
            (int(m["epoch"]), float(m["R1"]))
            for m in trial.read_metrics()
            if m.get("split") == split and "R1" in m and "epoch" in m
        ]
        rec.curve_split = split
    return rec


def load_dirs(root: str | Path, studies: list[str] | None = None) -> dict[str, list[TrialRecord]]:
    """{study: trials} from the trial directories under `root` (any depth)."""
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such folder of trial directories; pass --runs DIR")
    out: dict[str, list[TrialRecord]] = {}
    for path in find_trials(root):
        rec = _from_dir(path)
        if rec is not None:
            out.setdefault(rec.study, []).append(rec)
    if studies:
        for name in studies:
            if name not in out:
                known = ", ".join(sorted(out)) or "none"
                raise AnalysisError(f"unknown study '{name}' under {root} (studies there: {known})")
        out = {name: out[name] for name in studies}
    return {name: _order(recs) for name, recs in sorted(out.items())}
