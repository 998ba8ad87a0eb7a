"""The MLflow mirror of a trial directory (the tag names are `bilma.runs.schema`'s).

The trial directory (`bilma.runs.trial_dir`) is the truth; `MlflowMirror` shows it in MLflow, live
while training and again (idempotently) from `python -m bilma sync` (`bilma.tracking.sync`). Schema:

- one experiment per study (artifacts under `<dir of the sqlite file>/mlartifacts/<study>` for
  SQLite stores); one run per trial, found again by the run id in mlflow.json or its
  `trial_id` tag, so a resumed or requeued trial continues its run;
- tags: study, trial_id, variant, variant_base and variant_index and one `grid.<axis>` per
  grid axis (from launch.json; values as params are written), seed, dataset, git_commit,
  slurm_job_id, kind=trial (parent runs: kind=sweep, tag sweep=<name>, see
  `bilma.tracking.parent`), mlflow.runName "s<seed> <variant>" (`run_label`: the seed first,
  so the runs table shows it), mlflow.parentRunId under a sweep; selection_split /
  selection_metric / selection_epoch once done; stopped_early=true for a trial stopped early
  on purpose (`TrialState.STOPPED`); reused_from=<study> for a trial another study trained
  (`bilma.runs.reuse`); failure_cause (status.json "cause": why the last attempt ended,
  `bilma.runs.causes`); state_updated (status.json "updated" of the state shown:
  `sync` from another copy of the trial never replaces a newer state);
- params: the flattened resolved config (strings as they are, everything else as JSON:
  `true`, `null`, `[384, 128]`, so `yaml.safe_load(param)` gives the value back);
- metrics: each metrics.jsonl record as "<split>/<name>" at step = epoch (never the global
  step: the chart view draws curves over epochs) with the record's time, one point per (key,
  step) (a resumed epoch is not logged again); final metrics "test/R1".. (and
  "train_seconds", "gpu_hours", "cpu_hours", ...: `USAGE_FIELDS`) from result.json at step = epochs;
- config.yaml as an artifact;
- run status from the trial state (`MLFLOW_STATUS`): done FINISHED, failed FAILED,
  interrupted and stopped KILLED, running RUNNING, pending SCHEDULED.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import numbers
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from bilma.config import Config, ConfigError, flatten, to_dict
from bilma.errors import first_line
from bilma.fileio import atomic_write_json
from bilma.runs import schema
from bilma.runs.lock import live_state
from bilma.runs.provenance import git_info, slurm_job_id
from bilma.runs.reuse import reused_from
from bilma.runs.schema import MLFLOW_STATUS, RECORD_FIELDS, USAGE_FIELDS, TrialState
from bilma.runs.trial_dir import TrialDir, read_json
from bilma.tracking.store import ensure_experiment, mlflow_client, resolve_uri

log = logging.getLogger(__name__)

# The statuses an MLflow run ends in: those of the finished, failed and stopped states.
TERMINAL = tuple(
    dict.fromkeys(
        MLFLOW_STATUS[s] for s in (TrialState.DONE, TrialState.FAILED, TrialState.INTERRUPTED)
    )
)
FINISHED = MLFLOW_STATUS[TrialState.DONE]
# The status.json "updated" time of the state a run shows: a sync never shows an older one.
STATE_TIME_TAG = schema.TAG_STATE_UPDATED
# The tag of a trial stopped early on purpose (its run is KILLED like an interrupted one).
STOPPED_TAGS = {schema.TAG_STOPPED_EARLY: "true"}
# A folder that cannot be written: no permission, or a read-only file system.
READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# MLflow's log_batch limits (per request).
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100


def cause_tags(status: dict[str, Any]) -> dict[str, str]:
    """The failure_cause tag of a trial whose status.json names why its last attempt ended."""
    cause = status.get("cause")
    return {schema.TAG_FAILURE_CAUSE: str(cause)} if cause else {}


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def config_params(cfg: Config) -> dict[str, str]:
    return {k: param_value(v) for k, v in flatten(to_dict(cfg)).items()}


def run_label(variant: str | None, seed: Any) -> str:
    """A trial's run name: "s1 IRRA [id_weight=1.0]". The seed comes first, so that the runs
    table's narrow name column shows it whatever the length of the variant's label (the full
    label is also the `variant` tag)."""
    return f"s{'?' if seed is None else seed} {variant or 'trial'}"


def run_name(cfg: Config, variant: str = "") -> str:
    """The trial's run name; `variant`: its launch.json's (the latest launch names it)."""
    return run_label(variant or cfg.tracking.variant, cfg.train.seed)


def _is_number(v: Any) -> bool:
    # numbers.Real takes numpy scalars too (np.float32 is no float); bools are no metric.
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record -> MLflow metric keys: {"<split>/<name>": value}."""
    split = record.get("split")
    prefix = f"{split}/" if split else ""
    return {
        f"{prefix}{k}": float(v)
        for k, v in record.items()
        if k not in RECORD_FIELDS and _is_number(v)
    }


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """result.json -> the run's final metrics: "test/R1".., "test/chance_R1" (the test
    gallery's chance level), "train_seconds" and the usage fields ("gpu_hours", ...)."""
    out = {f"test/{k}": float(v) for k, v in result.get("metrics", {}).items() if _is_number(v)}
    if _is_number(result.get("chance_R1")):
        out["test/chance_R1"] = float(result["chance_R1"])
    for key in ("train_seconds", *USAGE_FIELDS):  # what the trial used (GPU-hours, ...)
        if _is_number(result.get(key)):
            out[key] = float(result[key])
    return out


def _ms(t: float | None) -> int:
    return int((time.time() if t is None else t) * 1000)


def _iso_ms(text: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text)).timestamp() * 1000)
    except ValueError:
        return None


def _same(a: float | None, b: float) -> bool:
    if a is None:
        return False
    return (math.isnan(a) and math.isnan(b)) or a == b


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class MlflowMirror:
    """Mirror one trial directory into its MLflow run; never lets MLflow stop training.

    `start()` returns None (after ONE warning) when MLflow is unreachable, and so does any
    later failure: from then on every call is a no-op, and `sync` catches the run up later.
    """

    def __init__(
        self,
        trial: TrialDir,
        cfg: Config,
        parent_run_id: str | None = None,
        uri: str | None = None,
    ):
        self.trial = trial
        self.cfg = cfg
        self.parent_run_id = parent_run_id
        # An explicit uri (sync) mirrors even a trial trained with tracking disabled.
        self.enabled = uri is not None or cfg.tracking.enabled
        self.uri = resolve_uri(uri or cfg.tracking.uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.created = False  # this mirror created the run (rather than continuing one)
        self._client: Any = None
        self._failed = False
        self._bad_status = False
        self.unsaved: OSError | None = None  # mlflow.json could not be written (read-only)
        # Steps each metric key already has in the run: a resumed epoch is never logged twice.
        self._steps: dict[str, set[int]] = {}

    @property
    def active(self) -> bool:
        return self.run_id is not None and not self._failed

    # -- public, never raising
    def start(self) -> str | None:
        """Create or continue the trial's run and mark it RUNNING; its id, or None."""
        if not self.enabled or self._failed:
            return None
        try:
            run = self._open(live=True)
            if run.info.status != "RUNNING":
                self._client.update_run(self.run_id, status="RUNNING")
        except Exception as e:
            self._disable(e)
            return None
        return self.run_id

    def log_metrics(
        self, metrics: dict[str, float], step: int, timestamp: float | None = None
    ) -> None:
        """Log numbers at step (= epoch); `timestamp` in unix seconds, default now."""
        if not self.active:
            return
        from mlflow.entities import Metric

        ts = _ms(timestamp)
        try:
            points = [
                Metric(k, float(v), ts, int(step))
                for k, v in metrics.items()
                if _is_number(v) and int(step) not in self._logged_steps(k)
            ]
            self._log_batch(metrics=points)
        except Exception as e:
            self._disable(e)
            return
        for p in points:
            self._steps[p.key].add(p.step)

    def _logged_steps(self, key: str) -> set[int]:
        if key not in self._steps:
            history = [] if self.created else self._client.get_metric_history(self.run_id, key)
            self._steps[key] = {m.step for m in history}
        return self._steps[key]

    def log_record(self, record: dict[str, Any]) -> None:
        """Log a metrics.jsonl record exactly as `sync` would (same keys, step and time)."""
        self.log_metrics(
            record_metrics(record), int(record.get("epoch") or 0), timestamp=record.get("time")
        )

    def finish(
        self,
        status: str = FINISHED,
        tags: dict[str, str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Log the final metrics of `result` (default: result.json, if any) and `tags`, then
        end the run with `status` (an MLflow status: FINISHED, FAILED, KILLED)."""
        if status not in TERMINAL:
            raise ValueError(f"run status {status!r}: expected one of {', '.join(TERMINAL)}")
        if not self.active:
            return
        try:
            from mlflow.entities import RunTag

            tags = {**(tags or {}), **self._state_time_tag(), **cause_tags(self._status())}
            self._log_batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])
            if result is None:
                result = self.trial.read_result()
            end = None
            if result is not None:
                self._log_final(result, self._client.get_run(self.run_id))
                end = _iso_ms(result.get("finished")) if status == FINISHED else None
            self._client.set_terminated(self.run_id, status, end_time=end)
        except Exception as e:
            self._disable(e)

    # -- catch-up, raising
    def sync(self) -> int:
        """Bring the run up to date from the directory; the number of metric points logged."""
        from mlflow.entities import Metric

        run = self._open(live=False)
        client, run_id = self._client, self.run_id

        wanted: list[tuple[str, float, int, int]] = []
        for rec in self.trial.read_metrics():
            ts, step = _ms(rec.get("time")), int(rec.get("epoch") or 0)
            wanted += [(k, v, ts, step) for k, v in record_metrics(rec).items()]
        # Idempotence: a (key, step) already in MLflow (logged live or by an earlier sync)
        # is never logged again.
        present = {
            key: {m.step for m in client.get_metric_history(run_id, key)}
            for key in sorted({w[0] for w in wanted})
        }
        points = [Metric(k, v, ts, step) for k, v, ts, step in wanted if step not in present[k]]
        for chunk in _chunks(points, _MAX_METRICS):
            client.log_batch(run_id, metrics=chunk)
        n = len(points)

        result = self.trial.read_result()
        if result is not None:
            n += self._log_final(result, client.get_run(run_id))
        state = TrialState.DONE if self.trial.is_done() else self._status().get("state")
        state = live_state(self.trial.path, TrialState.parse(state))
        if state is TrialState.STOPPED:
            self._add_tags(STOPPED_TAGS, run)
        if state is not TrialState.DONE:
            self._add_tags(cause_tags(self._status()), run)
        status = MLFLOW_STATUS.get(state)
        if status and status != run.info.status and self._newer_than(run):
            if status in TERMINAL:
                self._add_tags(self._state_time_tag(), run)
                end = (
                    _iso_ms(result.get("finished")) if result and state is TrialState.DONE else None
                )
                updated = self._status().get("updated")
                end = end or (_ms(updated) if _is_number(updated) else None)
                client.set_terminated(run_id, status, end_time=end)
            else:
                client.update_run(run_id, status=status)
        return n

    def _newer_than(self, run: Any) -> bool:
        """Whether this directory's state is newer than the one the run shows (its
        STATE_TIME_TAG, else its end to the second): another copy of the trial (a second
        runs folder) must never turn a FINISHED run into a FAILED one."""
        if run.info.status not in TERMINAL or not run.info.end_time:
            return True
        tag = run.data.tags.get(STATE_TIME_TAG)
        try:
            shown = float(tag) if tag else run.info.end_time / 1000 + 1.0
        except ValueError:
            shown = run.info.end_time / 1000 + 1.0
        updated = self._status().get("updated")
        if _is_number(updated) and updated > shown:
            return True
        log.info(
            "%s: MLflow run %s shows a newer state (%s); kept",
            self.trial.path,
            run.info.run_id,
            run.info.status,
        )
        return False

    # -- internals
    def _status(self) -> dict[str, Any]:
        """status.json; {} (one warning) for a hand-edited one: a done trial is still done."""
        try:
            return self.trial.status()
        except ConfigError as e:
            if not self._bad_status:
                log.warning("%s; the run's state comes from result.json alone", e)
            self._bad_status = True
            return {}

    def _state_time_tag(self) -> dict[str, str]:
        updated = self._status().get("updated")
        return {STATE_TIME_TAG: repr(float(updated))} if _is_number(updated) else {}

    def _add_tags(self, tags: dict[str, str], run: Any) -> None:
        """Log the tags the run does not already carry with that value."""
        from mlflow.entities import RunTag

        new = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        self._log_batch(tags=new)

    def _disable(self, e: BaseException) -> None:
        if not self._failed:
            root = Path(self.cfg.paths.runs)
            log.warning(
                "MLflow at %s failed (%s); training goes on and %s keeps everything: run "
                "`python -m bilma sync --runs %s` to mirror it later",
                self.uri,
                first_line(e),
                self.trial.path,
                root,
            )
        self._failed = True

    def _log_batch(self, metrics: list = (), params: list = (), tags: list = ()) -> None:
        for chunk in _chunks(list(metrics), _MAX_METRICS):
            self._client.log_batch(self.run_id, metrics=chunk)
        for chunk in _chunks(list(params), _MAX_PARAMS):
            self._client.log_batch(self.run_id, params=chunk)
        for chunk in _chunks(list(tags), _MAX_TAGS):
            self._client.log_batch(self.run_id, tags=chunk)

    def _saved(self) -> dict[str, Any]:
        data = read_json(self.trial.mlflow_path) if self.trial.mlflow_path.exists() else None
        if not isinstance(data, dict):
            return {}
        # Entries are per URI: a run id means nothing in another store.
        return dict(data.get("by_uri", {}).get(self.uri) or {})

    def _save(self, parent: str | None) -> None:
        data = read_json(self.trial.mlflow_path) if self.trial.mlflow_path.exists() else None
        data = data if isinstance(data, dict) else {}
        entry = {"run_id": self.run_id, "experiment_id": self.experiment_id}
        entry["parent_run_id"] = parent
        by_uri = dict(data.get("by_uri", {}))
        by_uri[self.uri] = entry
        new = {**entry, "tracking_uri": self.uri, "by_uri": by_uri}
        if new == data:
            return  # nothing new: a read-only trial folder is no obstacle
        try:
            atomic_write_json(self.trial.mlflow_path, new)
        except OSError as e:
            if e.errno not in READ_ONLY_ERRNOS:
                raise
            # A read-only runs folder (sync from an archive): the run is found again by its
            # trial_id tag; the caller says so once.
            self.unsaved = e

    def _find_saved(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise  # unreachable store and the like: not a reason to create a new run
        tid = run.data.tags.get(schema.TAG_TRIAL_ID)
        if run.info.lifecycle_stage != "active" or tid not in (None, self.trial.trial_id):
            return None
        return run

    def _find_tagged(self) -> Any:
        runs = self._client.search_runs(
            [self.experiment_id],
            f"tags.trial_id = '{self.trial.trial_id}'",
            max_results=50,
            order_by=["attributes.start_time ASC"],
        )
        if len(runs) > 1:
            log.warning(
                "%d MLflow runs carry trial_id=%s; continuing the oldest, %s",
                len(runs),
                self.trial.trial_id,
                runs[0].info.run_id,
            )
        return runs[0] if runs else None

    def _start_time(self) -> int | None:
        """For a run created by sync: when the trial first started, not now."""
        prov = self.trial.read_provenance()
        first = (prov.get("previous") or [prov])[0]
        t = _iso_ms(first.get("start_time"))
        if t is None:
            recs = self.trial.read_metrics()
            t = _ms(recs[0]["time"]) if recs and _is_number(recs[0].get("time")) else None
        return t

    def _tags(self, parent: str | None, live: bool) -> dict[str, str]:
        cfg = self.cfg
        prov = self.trial.read_provenance()
        if live:
            commit = prov.get("git_commit") if prov else git_info()["git_commit"]
            job = slurm_job_id()
        else:  # sync: never the current checkout's commit, it may not be the code that ran
            commit = prov.get("git_commit")
            job = prov.get("slurm_job_id") or self._status().get("slurm_job_id")
        launch = self.trial.read_launch()  # the sweep's row and grid point
        tags = {
            schema.TAG_STUDY: cfg.tracking.study,
            schema.TAG_TRIAL_ID: self.trial.trial_id,
            schema.TAG_VARIANT: launch.variant or cfg.tracking.variant,
            schema.TAG_VARIANT_BASE: launch.variant_base,
            schema.TAG_VARIANT_INDEX: str(launch.variant_index),
            **{
                f"{schema.GRID_TAG_PREFIX}{axis}": param_value(v)
                for axis, v in launch.grid_point.items()
            },
            schema.TAG_SEED: str(cfg.train.seed),
            schema.TAG_DATASET: cfg.data.dataset,
            schema.TAG_GIT_COMMIT: commit or "",
            schema.TAG_KIND: "trial",
            schema.TAG_RUN_NAME: run_name(cfg, launch.variant),
        }
        tags[schema.TAG_SLURM_JOB_ID] = job or ""
        if study := reused_from(self.trial):  # trained in that study (bilma.runs.reuse)
            tags[schema.TAG_REUSED_FROM] = study
        if parent:
            tags[schema.TAG_PARENT_RUN] = parent
        return tags

    def _open(self, live: bool) -> Any:
        """Find or create the run; bring tags, params and the config artifact up to date."""
        from mlflow.entities import Param, RunTag

        self._client = client = mlflow_client(self.uri)
        self.experiment_id = ensure_experiment(self.uri, self.cfg.tracking.study)
        saved = self._saved()
        run = self._find_saved(saved["run_id"]) if saved.get("run_id") else None
        if run is None:
            run = self._find_tagged()
        if run is None:
            run = client.create_run(
                self.experiment_id,
                start_time=None if live else self._start_time(),
                tags={
                    schema.TAG_TRIAL_ID: self.trial.trial_id
                },  # findable even if we die right here
                run_name=run_name(self.cfg, self.trial.read_launch().variant),
            )
            self.created = True
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        parent = (
            self.parent_run_id
            or saved.get("parent_run_id")
            or run.data.tags.get(schema.TAG_PARENT_RUN)
        )
        self._save(parent)

        old = run.data.tags
        # An unknown value ("": no provenance at sync time) never erases a known one.
        tags = {
            k: v
            for k, v in self._tags(parent, live).items()
            if old.get(k) != v and (v or k not in old)
        }
        # Params are immutable in MLflow: log each key once (a requeue may differ in
        # untracked values such as data.num_workers; the first value stays).
        params = {k: v for k, v in config_params(self.cfg).items() if k not in run.data.params}
        self._log_batch(
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        if self.trial.config_path.exists():
            names = {f.path for f in client.list_artifacts(self.run_id)}
            if schema.CONFIG_FILE not in names:
                client.log_artifact(self.run_id, str(self.trial.config_path))
        return run

    def _log_final(self, result: dict[str, Any], run: Any) -> int:
        """Final metrics and selection tags; only values the run does not already show."""
        from mlflow.entities import Metric, RunTag

        ts = _iso_ms(result.get("finished")) or _ms(None)
        step = int(result.get("epochs") or 0)
        latest = run.data.metrics
        points = [
            Metric(k, v, ts, step)
            for k, v in final_metrics(result).items()
            if not _same(latest.get(k), v)
        ]
        sel = result.get("selection") or {}
        tags = {
            f"selection_{k}": str(v) for k, v in sel.items() if k in ("split", "metric", "epoch")
        }
        tags = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        self._log_batch(metrics=points, tags=[RunTag(k, v) for k, v in tags.items()])
        return len(points)
