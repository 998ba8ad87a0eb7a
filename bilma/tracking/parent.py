"""A sweep's parent run in MLflow: what it carries, kept up to date from the trial directories.

A sweep (one grid file of a study) has one parent run (`store.ensure_parent_run`), named by the
study; the run of each of its trials is a child of it. The parent carries:

- params: `grid`, `trials`, `seeds`, `variants`, `axes` and `grid.<axis>` (the values each
  swept axis takes; from the trials' launch.json, `sweep_params`), from the launcher also
  `base`, `set.<key>` (the grid's fixed settings and the launch's --set) and `search.*` /
  `scheduler.*` (Ray Tune), and `backend` once a trial recorded one. MLflow never changes a
  param, so each is logged once: the first launch's value stays (a relaunch with more seeds
  shows in the summary's `sweep/trials`);
- the grid file as an artifact (`<grid>.yaml`, as the latest launch read it; `sync` logs it to
  a parent that lacks it);
- the sweep's summary, counted from the trial directories (the truth) when the launcher ends
  the sweep (`bilma.sweep.prepare.finish_parent`) and on `python -m bilma sync`: metrics
  `sweep/trials`, `sweep/done`, `sweep/failed` (`sweep/stopped` once ASHA stopped one) and
  `sweep/best_test_R1`, tags `best_trial` (that trial's run name, "s1 IRRA") and
  `best_trial_id`; each logged at step 0 when its value changed;
- curves for the chart view, at step = epoch: the mean over the sweep's trials of each of
  their per-epoch metrics, under the trials' own keys ("val/R1", "train/loss"). The runs table
  shows a parent folded; its chart view then draws one line per chart, the sweep's mean, and
  with the parent unfolded the mean among its trials' lines. An epoch's mean is logged once
  every trial of the sweep has reached that epoch or ended (done, stopped, failed): a running
  sweep's curves grow, their points stay (only a later change, e.g. a failed trial retried,
  adds a newer point at that step). A mean over every variant is a progress view, not a
  result: the tables compare the variants;
- the study's tables and plots (`log_study_tables`, called by `analysis/make_tables.py --out`)
  under `tables/`.

The parent's status: RUNNING while a launch runs the sweep (`setup_parent` reopens a finished
parent on a relaunch), then the launcher's verdict; `sync` sets it from the trials' states
(`Summary.status`): RUNNING while one runs, else FAILED, KILLED (one left to resume: a
launcher stopped, a trainer gone while MLflow did not answer) or FINISHED.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilma.config import ConfigError
from bilma.errors import first_line
from bilma.runs import schema
from bilma.runs.launch import Launch, read_launch
from bilma.runs.lock import live_state
from bilma.runs.schema import MLFLOW_STATUS, TrialState
from bilma.runs.trial_dir import TrialDir, state_of
from bilma.tracking.mirror import (
    _MAX_METRICS,
    _MAX_PARAMS,
    _chunks,
    _is_number,
    _ms,
    _same,
    param_value,
    record_metrics,
    run_label,
)
from bilma.tracking.store import DEFAULT_URI, ensure_parent_run, mlflow_client, resolve_uri

log = logging.getLogger(__name__)

SUMMARY_PREFIX = "sweep/"
TABLES_DIR = "tables"
# `update_parent(status=FROM_TRIALS)`: end the parent once every trial ended (what sync does).
FROM_TRIALS = "from-trials"
_ENDED = (TrialState.DONE, TrialState.STOPPED, TrialState.FAILED)
_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param's value


# ----------------------------------------------------------------------------- params


def sweep_params(launches: Sequence[Launch]) -> dict[str, str]:
    """The params the trials' launch.json tell: grid, trials, seeds, variants (in the grid's
    order), axes and each axis's values (in the order they first appear)."""
    seeds = sorted({la.seed for la in launches if la.seed is not None})
    order: dict[str, int] = {}
    axes: dict[str, list[Any]] = {}
    for la in launches:
        if la.variant_base:
            order.setdefault(la.variant_base, la.variant_index)
        for axis, value in la.grid_point.items():
            values = axes.setdefault(axis, [])
            if value not in values:
                values.append(value)
    params = {
        "grid": next((la.grid for la in launches if la.grid), ""),
        "trials": str(len(launches)),
        "seeds": json.dumps(seeds),
        "variants": json.dumps(sorted(order, key=order.__getitem__), ensure_ascii=False),
        "axes": json.dumps(list(axes)),
    }
    params.update({f"{schema.GRID_TAG_PREFIX}{k}": param_value(v) for k, v in axes.items()})
    return params


def _log_new_params(client: Any, run: Any, params: dict[str, str]) -> None:
    """Log the params the run does not have yet (MLflow refuses to change one)."""
    from mlflow.entities import Param

    new = [
        Param(k, v if len(v) <= _MAX_PARAM_VALUE else v[: _MAX_PARAM_VALUE - 1] + "…")
        for k, v in params.items()
        if k not in run.data.params
    ]
    for chunk in _chunks(new, _MAX_PARAMS):
        client.log_batch(run.info.run_id, params=chunk)


def setup_parent(uri: str, run_id: str, grid_file: Path | None, params: dict[str, str]) -> None:
    """At a launch: the params (those new to the run), the grid file as an artifact, and the
    run RUNNING again if an earlier launch ended it. Raises if MLflow fails."""
    client = mlflow_client(resolve_uri(uri))
    run = client.get_run(run_id)
    _log_new_params(client, run, params)
    if grid_file is not None and Path(grid_file).is_file():
        client.log_artifact(run_id, str(grid_file))
    running = MLFLOW_STATUS[TrialState.RUNNING]
    if run.info.status != running:
        client.update_run(run_id, status=running)


def find_parent(uri: str, study: str, sweep: str, known: str | None = None) -> str:
    """The sweep's parent run in this store: `known` (launch.json's) if it is one here, else
    the one `ensure_parent_run` finds or creates (`sync` into a new store). Raises if MLflow
    fails."""
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(uri)
    if known:
        try:
            run = mlflow_client(uri).get_run(known)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:
            tags = run.data.tags
            want = {schema.TAG_KIND: "sweep", schema.TAG_SWEEP: sweep, schema.TAG_STUDY: study}
            if run.info.lifecycle_stage == "active" and all(
                tags.get(k) == v for k, v in want.items()
            ):
                return known
    return ensure_parent_run(uri, study, sweep)


# ----------------------------------------------------------------------------- summary


def sweep_trials(study_dirs: Iterable[Path], sweep: str) -> list[TrialDir]:
    """The trial directories of a sweep: those in `study_dirs` launched from a grid file named
    `sweep` (launch.json); a trial found in two folders counts once (its newest state)."""
    found: dict[str, TrialDir] = {}
    for folder in study_dirs:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).iterdir()):
            if not (path / schema.CONFIG_FILE).is_file():
                continue
            grid = read_launch(path).grid
            if not grid or Path(grid).stem != sweep:
                continue
            trial = TrialDir(path)
            other = found.get(trial.trial_id)
            if other is None or _updated(trial) > _updated(other):
                found[trial.trial_id] = trial
    return [found[k] for k in sorted(found)]


def _updated(trial: TrialDir) -> float:
    try:
        updated = trial.status().get("updated")
    except ConfigError:
        return 0.0
    return float(updated) if _is_number(updated) else 0.0


@dataclass
class Summary:
    """A sweep as its trial directories tell it."""

    trials: int = 0
    states: Counter = field(default_factory=Counter)  # TrialState (None: unknown) -> count
    best: tuple[float, str, str] | None = None  # (test R1, run name, trial id)
    backends: list[str] = field(default_factory=list)
    # key -> epoch -> (mean over the trials, time in ms of the latest record in it)
    curves: dict[str, dict[int, tuple[float, int]]] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """Every trial is done, stopped or failed."""
        return self.trials > 0 and sum(self.states[s] for s in _ENDED) == self.trials

    def status(self) -> str | None:
        """The parent run's MLflow status from its trials' states: RUNNING while one runs
        (or waits in a queue), else FAILED if one failed, KILLED if one is left to resume
        (or unreadable), else FINISHED; None without trials."""
        if not self.trials:
            return None
        if self.states[TrialState.RUNNING] or self.states[TrialState.PENDING]:
            state = TrialState.RUNNING
        elif self.states[TrialState.FAILED]:
            state = TrialState.FAILED
        elif not self.ended:
            state = TrialState.INTERRUPTED
        else:
            state = TrialState.DONE
        return MLFLOW_STATUS[state]

    def metrics(self) -> dict[str, float]:
        out = {
            f"{SUMMARY_PREFIX}trials": float(self.trials),
            f"{SUMMARY_PREFIX}done": float(self.states[TrialState.DONE]),
            f"{SUMMARY_PREFIX}failed": float(self.states[TrialState.FAILED]),
        }
        if self.states[TrialState.STOPPED]:
            out[f"{SUMMARY_PREFIX}stopped"] = float(self.states[TrialState.STOPPED])
        if self.best is not None:
            out[f"{SUMMARY_PREFIX}best_test_R1"] = self.best[0]
        return out

    def tags(self) -> dict[str, str]:
        if self.best is None:
            return {}
        return {schema.TAG_BEST_TRIAL: self.best[1], schema.TAG_BEST_TRIAL_ID: self.best[2]}


def summarize(trials: Sequence[TrialDir]) -> Summary:
    """Counts, the best test R1, the backends, and the per-epoch means (`curves`)."""
    s = Summary(trials=len(trials))
    points: dict[tuple[str, int], list[tuple[float, int]]] = {}
    reached: list[float] = []  # per trial: the last epoch it logged (inf: it ended)
    backends: set[str] = set()
    for trial in trials:
        status, result = _read_or_warn(trial.status, {}), _read_or_warn(trial.read_result, None)
        result = result if isinstance(result, dict) else None
        done = result is not None or trial.is_done()  # a result.json of no use: still done
        state = live_state(trial.path, state_of(status, done))
        s.states[state] += 1
        if status.get("backend"):
            backends.add(str(status["backend"]))
        r1 = ((result or {}).get("metrics") or {}).get("R1")
        if _is_number(r1) and (s.best is None or r1 > s.best[0]):
            label = run_label(
                trial.read_launch().variant or result.get("variant"), result.get("seed")
            )
            s.best = (float(r1), label, trial.trial_id)
        last: dict[tuple[str, int], tuple[float, int]] = {}  # a resumed epoch: its last record
        for rec in trial.read_metrics():
            epoch = int(rec.get("epoch") or 0)
            stamp = _ms(rec["time"]) if _is_number(rec.get("time")) else 0
            for key, value in record_metrics(rec).items():
                if math.isfinite(value):
                    last[(key, epoch)] = (value, stamp)
        for point, value in last.items():
            points.setdefault(point, []).append(value)
        top = max((e for _k, e in last), default=0)
        reached.append(math.inf if state in _ENDED else top)
    complete = min(reached, default=0)
    for (key, epoch), values in sorted(points.items()):
        if epoch <= complete:
            mean = math.fsum(v for v, _t in values) / len(values)
            s.curves.setdefault(key, {})[epoch] = (mean, max(t for _v, t in values))
    s.backends = sorted(backends)
    return s


def _read_or_warn(read: Any, default: Any) -> Any:
    """A trial file as `read` gives it; `default` (with a warning) for a hand-edited one."""
    try:
        return read()
    except ConfigError as e:
        log.warning("%s; the sweep's summary does without it", e)
        return default


def update_parent(
    uri: str, run_id: str, study_dirs: Iterable[Path], status: str | None = None
) -> Summary:
    """Log the sweep's summary and mean curves (what changed) to its parent run, from the trial
    directories in `study_dirs`; then end the run with `status` (an MLflow status), or with
    `FROM_TRIALS` once every trial ended. Raises if MLflow fails."""
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow_client(resolve_uri(uri))
    run = client.get_run(run_id)
    trials = sweep_trials(study_dirs, run.data.tags.get(schema.TAG_SWEEP, ""))
    summary = summarize(trials)
    # What a launch logs first, for a parent made by `sync` (MLflow was down at the launch).
    launches = [t.read_launch() for t in trials]
    _log_new_params(client, run, sweep_params(launches) if launches else {})
    grid = Path(launches[0].grid) if launches else None
    if grid and grid.is_file() and grid.name not in _artifacts(client, run_id):
        client.log_artifact(run_id, str(grid))

    now = _ms(None)
    latest = run.data.metrics
    points = [
        Metric(k, v, now, 0) for k, v in summary.metrics().items() if not _same(latest.get(k), v)
    ]
    for key, by_epoch in summary.curves.items():
        shown: dict[int, tuple[int, float]] = {}  # step -> (timestamp, value) of the latest
        for m in client.get_metric_history(run_id, key) if key in latest else []:
            if m.step not in shown or m.timestamp >= shown[m.step][0]:
                shown[m.step] = (m.timestamp, m.value)
        points += [
            Metric(key, mean, max(ts, shown.get(epoch, (0, 0))[0] + 1), epoch)
            for epoch, (mean, ts) in by_epoch.items()
            if not _same(shown.get(epoch, (0, None))[1], mean)
        ]
    tags = [RunTag(k, v) for k, v in summary.tags().items() if run.data.tags.get(k) != v]
    params = []
    if summary.backends and "backend" not in run.data.params:
        params = [Param("backend", ", ".join(summary.backends))]
    for chunk in _chunks(points, _MAX_METRICS):
        client.log_batch(run_id, metrics=chunk)
    if tags or params:
        client.log_batch(run_id, tags=tags, params=params)

    if status == FROM_TRIALS:  # sync: whatever the launcher could or could not say
        wanted = summary.status()
        status = wanted if wanted != run.info.status else None
    if status == MLFLOW_STATUS[TrialState.RUNNING]:  # a relaunch's trial runs again
        client.update_run(run_id, status=status)
    elif status:
        client.set_terminated(run_id, status)
    return summary


def _artifacts(client: Any, run_id: str) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id)}


# ----------------------------------------------------------------------------- tables


def log_study_tables(uri: str | None, study: str, files: Sequence[Path]) -> list[str]:
    """The study's tables and plots as artifacts (under tables/) of each of its parent runs;
    one line per run for the user. Never raises: MLflow failing costs the tables nothing."""
    if not files:
        return []
    uri = resolve_uri(uri or DEFAULT_URI)
    try:
        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(study)
        if exp is None:
            return []
        runs = client.search_runs(
            [exp.experiment_id], "tags.kind = 'sweep'", max_results=100, order_by=["start_time"]
        )
        lines = []
        for run in runs:
            for path in files:
                client.log_artifact(run.info.run_id, str(path), artifact_path=TABLES_DIR)
            lines.append(
                f"logged {len(files)} files to MLflow run '{run.info.run_name}' "
                f"({run.info.run_id}) under {TABLES_DIR}/"
            )
        return lines
    except Exception as e:
        log.warning(
            "could not log %s's tables to MLflow at %s (%s); the files are written",
            study,
            uri,
            first_line(e),
        )
        return []
