"""Finished and unfinished trials of the studies, read from MLflow (`bilma.tracking.read`)
or from trial directories (`bilma.runs`), as the rows the tables aggregate.

This is the ONE place in `analysis/` that reads the run record (its names are
`bilma.runs.schema`'s); the rest of the layer works on `TrialRecord`s.

    studies = load_mlflow("sqlite:///mlflow.db", ["smoke"], curves=True)
    studies = load_dirs("runs", ["smoke"])     # a cluster whose runs were never synced
    # -> {study: [TrialRecord, ...]} in launch order

A trial's table row comes from what it recorded, never from its display name: the variant's
base name and position in the grid and the grid point (axis -> value) are read from
result.json / launch.json / MLflow tags; trials run before launch.json existed have them in
config.yaml's tracking section or the MLflow params of the flattened config.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bilma.config import flatten
from bilma.errors import AnalysisError, first_line  # noqa: F401  (AnalysisError: importable from here too)
from bilma.runs import schema
from bilma.runs.schema import GROUP_METRICS, RESULT_METRICS, STATE_OF_MLFLOW, TrialState
from bilma.runs.trial_dir import TrialDir, find_trials

# The run schema, from the library (see the module docstring).
from bilma.tracking.mirror import param_value
from bilma.tracking.read import RunRow, read_params, read_runs
from bilma.tracking.store import DEFAULT_URI, resolve_uri  # noqa: F401  (the tables name the store)

# Every test metric a table can show: the five of every trial, then the look-alike ones.
ALL_METRICS = RESULT_METRICS + GROUP_METRICS
# R1 of a random ranking, 100 / identities in the test gallery: a field of result.json and an
# MLflow metric (absent for trials run before it was recorded).
CHANCE_R1 = "chance_R1"

log = logging.getLogger(__name__)

__all__ = [
    "ALL_METRICS",
    "CHANCE_R1",
    "DEFAULT_URI",
    "RESULT_METRICS",
    "AnalysisError",
    "TrialRecord",
    "load_dirs",
    "load_mlflow",
]

# The tables call a done trial "finished" (done, with the final metrics they need); the other
# states are the run record's.
FINISHED, STOPPED = "finished", TrialState.STOPPED.value
# MLflow run status -> trial state as the tables name it.
_STATE_OF_STATUS = {
    status: FINISHED if state is TrialState.DONE else state.value
    for status, state in STATE_OF_MLFLOW.items()
}
# Axes that say which dataset a trial ran on: the dataset is its own column, not a grid point.
DATASET_AXES = ("data.dataset", "data.root", "data.parsing_root", "data.tokenizer")


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
    chance_r1: float | None = None  # 100 / test gallery identities; None: not recorded
    started: float = 0.0  # unix time; orders runs when variant_index is unknown
    run_id: str | None = None
    path: Path | None = None
    # The flattened config as MLflow params write it ({"optim.lr": "0.0001"}): from config.yaml,
    # or (MLflow) only for the runs that share a row and a seed with another configuration.
    config: dict[str, str] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)  # gpu_hours, cpu_hours (USAGE_FIELDS)
    cause: str | None = None  # why a trial that did not finish ended (bilma.runs.causes)

    @property
    def curve_key(self) -> str:
        """The MLflow metric of the per-epoch curve: R1 on the selection split."""
        return f"{self.selection_split or 'val'}/R1"

    @property
    def finished(self) -> bool:
        return self.state == FINISHED and all(m in self.metrics for m in RESULT_METRICS)

    def point(self, drop: tuple[str, ...] = DATASET_AXES) -> tuple[tuple[str, Any], ...]:
        """The grid point as a hashable key, without the dataset axes."""
        return tuple((k, hashable(v)) for k, v in self.grid_point.items() if k not in drop)

    def claim(self) -> tuple[str, tuple, str, int]:
        """What a finished trial claims in a table: (variant, grid point, dataset, seed)."""
        return (self.variant_base, self.point(), self.dataset, self.seed)


def claimants(records: list[TrialRecord]) -> list[list[TrialRecord]]:
    """Groups of finished trials (distinct trial ids) claiming one (variant, grid point,
    dataset, seed): two configurations under one name, e.g. two grids with one `study:` or a
    grid edited between launches. Each group has two trials or more."""
    by_claim: dict[tuple, dict[str, TrialRecord]] = {}
    for r in records:
        if r.finished:
            by_claim.setdefault(r.claim(), {}).setdefault(r.trial_id, r)
    return [list(g.values()) for g in by_claim.values() if len(g) > 1]


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


def _number(value: Any) -> float | None:
    """A recorded number as a float; None when absent or not a finite number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _order(records: list[TrialRecord]) -> list[TrialRecord]:
    return sorted(records, key=lambda r: (r.started, r.trial_id))


# ----------------------------------------------------------------------------- MLflow


def _record(row: RunRow) -> TrialRecord | None:
    """A trial run's tags, params and latest metrics -> TrialRecord; None for a sweep's
    parent run or a foreign run."""
    tags, params, metrics = row.tags, row.params, row.metrics
    if tags.get(schema.TAG_KIND) == "sweep" or schema.TAG_TRIAL_ID not in tags:
        return None
    grid = schema.GRID_TAG_PREFIX
    point = {k[len(grid) :]: _yaml_value(v) for k, v in tags.items() if k.startswith(grid)}
    if not point:  # a run mirrored before launch.json: its config had the grid point
        point = _parse_point(params.get("tracking.grid_point"))
    variant = tags.get(schema.TAG_VARIANT) or params.get("tracking.variant") or ""
    base = tags.get(schema.TAG_VARIANT_BASE) or params.get("tracking.variant_base") or variant
    state = _STATE_OF_STATUS.get(row.status, "unknown")
    if str(tags.get(schema.TAG_STOPPED_EARLY, "")).lower() == "true":
        state = STOPPED
    test = {m: float(metrics[f"test/{m}"]) for m in ALL_METRICS if f"test/{m}" in metrics}
    if state == FINISHED and any(m not in test for m in RESULT_METRICS):
        state = "unknown"  # FINISHED without final metrics: not a finished trial
    chance = metrics.get(CHANCE_R1, metrics.get(f"test/{CHANCE_R1}"))
    return TrialRecord(
        study=row.study,
        trial_id=tags[schema.TAG_TRIAL_ID],
        variant=variant,
        variant_base=base,
        variant_index=_int(
            tags.get(schema.TAG_VARIANT_INDEX, params.get("tracking.variant_index"))
        ),
        grid_point=point,
        seed=_int(tags.get(schema.TAG_SEED, params.get("train.seed"))),
        dataset=tags.get(schema.TAG_DATASET) or params.get("data.dataset") or "",
        state=state,
        metrics=test,
        selection_split=tags.get("selection_split") or params.get("eval.select_split"),
        selection_metric=tags.get("selection_metric") or params.get("eval.select_metric"),
        chance_r1=_number(chance),
        started=(row.start_ms or 0) / 1000.0,
        run_id=row.run_id,
        usage={k: float(metrics[k]) for k in schema.USAGE_FIELDS if k in metrics},
        cause=tags.get(schema.TAG_FAILURE_CAUSE),
    )


def _set_curve(rec: TrialRecord, points: list[tuple[int, int, float]]) -> None:
    """(step, timestamp, value) points of "<selection split>/R1" -> rec.curve. On the test
    split the final metric shares the last epoch's step: the earlier point is the epoch's."""
    by_step: dict[int, tuple[int, float]] = {}
    for step, ts, value in points:
        if step not in by_step or (ts, value) < by_step[step]:
            by_step[step] = (ts, value)
    rec.curve = sorted((step, v) for step, (_ts, v) in by_step.items())
    rec.curve_split = rec.selection_split or "val"


def _curve_key(row: RunRow) -> str | None:
    """The per-epoch curve a finished trial's row needs: R1 on its selection split."""
    rec = _record(row)
    return rec.curve_key if rec is not None and rec.finished else None


# Params the tables read (the rest of the flattened config is not loaded); the tracking.*
# ones are those of runs mirrored before launch.json.
_PARAMS = (
    "tracking.variant",
    "tracking.variant_base",
    "tracking.variant_index",
    "tracking.grid_point",
    "train.seed",
    "data.dataset",
    "eval.select_split",
    "eval.select_metric",
)


def load_mlflow(
    uri: str | None = None, studies: list[str] | None = None, curves: bool = False
) -> dict[str, list[TrialRecord]]:
    """{study: trials} from an MLflow store (`bilma.tracking.read`); every study
    (experiment with trial runs) if `studies` is None. `curves` also reads each finished
    trial's per-epoch R1."""
    runs = read_runs(uri, studies, _PARAMS, _curve_key if curves else None)
    out: dict[str, list[TrialRecord]] = {}
    for name, rows in runs.items():
        records = []
        for row in rows:
            rec = _record(row)
            if rec is None:
                continue
            if curves and rec.finished:
                _set_curve(rec, row.curves.get(rec.curve_key, []))
            records.append(rec)
        _add_configs(uri, records)
        if records or studies:
            out[name] = _order(records)
    return out


def _add_configs(uri: str | None, records: list[TrialRecord]) -> None:
    """The params (flattened config) of the runs of a variant two configurations of which
    claim one seed: the tables name the keys in which they differ, on every row."""
    rows = {g[0].claim()[:2] for g in claimants(records)}
    clashing = [r for r in records if r.finished and r.claim()[:2] in rows and r.run_id]
    if clashing:
        params = read_params(uri, [r.run_id for r in clashing])
        for r in clashing:
            r.config = params.get(r.run_id, {})


# ----------------------------------------------------------------------------- directories


def _object(path: Path, read: Any, what: str) -> tuple[dict[str, Any] | None, bool]:
    """A JSON or YAML file of the trial that should hold an object: (its dict or None, whether
    it exists but is unusable). An unusable one gets one warning naming it and `what`."""
    try:
        data = read()
    except Exception as e:  # noqa: BLE001 (hand-edited, torn or foreign: say which, go on)
        log.warning("%s: %s; %s", path, first_line(e), what)
        return None, True
    if data is None or isinstance(data, dict):
        return data, False
    log.warning("%s: holds %s, not an object; %s", path, type(data).__name__, what)
    return None, True


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _from_dir(path: Path) -> TrialRecord:
    """A trial directory -> TrialRecord. A file that cannot be used costs only what it holds,
    with one warning naming it: a finished trial (result.json) is never dropped for its
    status.json or config.yaml; an unreadable result.json lists the trial as not averaged."""
    trial = TrialDir(path)
    cfg, _bad = _object(
        trial.config_path,
        lambda: yaml.safe_load(trial.config_path.read_text()),
        "its config is not used (the table reads result.json and launch.json)",
    )
    result, bad_result = _object(
        trial.result_path,
        trial.read_result,
        "the trial is listed as not averaged: fix the file, or delete it and relaunch the trial",
    )
    status, _bad = _object(
        trial.status_path, trial.status, "the trial's state is taken from result.json alone"
    )
    cfg, status = cfg or {}, status or {}
    if result is not None and any(
        _number(_dict(result.get("metrics")).get(m)) is None for m in RESULT_METRICS
    ):
        log.warning(
            "%s: no number for each of metrics.%s; the trial is listed as not averaged: fix "
            "the file, or delete it and relaunch the trial",
            trial.result_path,
            ", ".join(RESULT_METRICS),
        )
        bad_result = True
    tracking = _dict(cfg.get("tracking"))
    launch = trial.read_launch()  # the sweep's row and grid point (old trials: config.yaml)
    state = str(status.get("state") or "unknown")
    if bad_result:
        state = "unreadable"
    elif result is not None:
        state = FINISHED
    elif state == TrialState.DONE:
        state = "unknown"  # done without result.json: not a finished trial
    src = result or {}
    # The latest launch names the trial (a variant renamed since it finished); result.json
    # keeps the name it finished under, for a trial whose launch.json is gone.
    variant = str(launch.variant or src.get("variant") or tracking.get("variant") or "")
    point = launch.grid_point if launch.variant_base else src.get("grid_point")
    point = _parse_point(point if point is not None else launch.grid_point)
    selection = _dict(src.get("selection"))
    evalc = _dict(cfg.get("eval"))
    rec = TrialRecord(
        study=str(src.get("study") or tracking.get("study") or path.parent.name),
        trial_id=path.name,
        variant=variant,
        variant_base=launch.variant_base or src.get("variant_base") or variant,
        variant_index=_int(launch.variant_index),
        grid_point=point,
        seed=_int(src.get("seed", _dict(cfg.get("train")).get("seed"))),
        dataset=str(src.get("dataset") or _dict(cfg.get("data")).get("dataset") or ""),
        state=state,
        metrics={
            k: x for k, v in _dict(src.get("metrics")).items() if (x := _number(v)) is not None
        },
        selection_split=selection.get("split") or evalc.get("select_split"),
        selection_metric=selection.get("metric") or evalc.get("select_metric"),
        chance_r1=_number(src.get(CHANCE_R1)),
        started=_number(status.get("started")) or _number(status.get("updated")) or 0.0,
        path=path,
        config={k: param_value(v) for k, v in flatten(cfg).items()},
        usage={k: x for k in schema.USAGE_FIELDS if (x := _number(src.get(k))) is not None},
        cause=None if result is not None else status.get("cause"),
    )
    if rec.finished:
        split = rec.selection_split or "val"
        rec.curve = [
            (int(epoch), r1)
            for m in trial.read_metrics()
            if m.get("split") == split
            and (r1 := _number(m.get("R1"))) is not None
            and (epoch := _number(m.get("epoch"))) is not None
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
        out.setdefault(rec.study, []).append(rec)
    if studies:
        for name in studies:
            if name not in out:
                known = ", ".join(sorted(out)) or "none"
                raise AnalysisError(f"unknown study '{name}' under {root} (studies there: {known})")
    names = studies or sorted(out)
    return {name: _order(out[name]) for name in names}
