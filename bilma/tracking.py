"""Trial directories and their MLflow mirror: the one module that knows the run schema.

The trial directory `runs/<study>/<trial_id>/` is the source of truth; MLflow is a mirror that
`sync` can always rebuild from it. A directory holds:

    config.yaml       the resolved config (written once; a different experiment is refused)
    status.json       {"state": pending|running|done|failed|interrupted|stopped, "attempts", "updated"
                       (unix time), "host", "pid", "slurm_job_id", "slurm_array_job_id",
                       "slurm_array_task_id", "started", "error", "traceback"}
    metrics.jsonl     append-only, one JSON object per line: {"epoch", "step", "split", "time"
                       (unix time, added if missing), <metric>: number, ...}
    result.json       exists only when the trial is done (schema below)
    ckpt/last.pt, ckpt/best.pt   written with `atomic_torch_save`
    train.log, provenance.json   (git commit + dirty flag, host, versions, SLURM id, command)
    mlflow.json       {"run_id", "experiment_id", "tracking_uri", "parent_run_id", "by_uri":
                       {uri: {...}}}: a resumed trial continues its own MLflow run

result.json (what the analysis code reads)::

    {"trial_id": str, "study": str, "variant": str, "seed": int, "dataset": str,
     "metrics": {"R1", "R5", "R10", "mAP", "mINP"}   # test split, selected checkpoint
     "selection": {"split": "val"|"test", "metric": "R1", "epoch": int, "value": float},
     "val_metrics": {"R1", ...} | null,              # val split, selected checkpoint
     "epochs": int, "train_seconds": float, "finished": ISO 8601 time with offset}

MLflow schema: one experiment per study (artifacts under `<dir of the sqlite file>/mlartifacts/
<study>` for SQLite stores); one run per trial with the tags study, trial_id, variant, seed,
dataset, git_commit, slurm_job_id, kind=trial (parent runs: kind=sweep, tag sweep=<name>),
mlflow.runName "<variant or trial> seed=<seed>" and mlflow.parentRunId under a sweep; params =
the flattened resolved config (strings as they are, everything else as JSON: `true`, `null`,
`[384, 128]`, so `yaml.safe_load(param)` gives the value back); per-record metrics
"<split>/<name>" at step = epoch with the record's time; final metrics "test/R1".. (and
"train_seconds") from result.json at step = epochs; config.yaml as an artifact; run status
FINISHED / FAILED / KILLED (interrupted) / RUNNING / SCHEDULED (pending).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bilma.config import (
    Config,
    ConfigError,
    canonical,
    dump_yaml,
    flatten,
    load_config,
    to_dict,
    trial_id,
)
from bilma.fileio import atomic_torch_save, atomic_write_json, atomic_write_text, json_default

log = logging.getLogger(__name__)

STATES = ("pending", "running", "done", "failed", "interrupted", "stopped")
RESULT_METRICS = ("R1", "R5", "R10", "mAP", "mINP")
DEFAULT_URI = "sqlite:///mlflow.db"
# Trial state -> MLflow run status.
MLFLOW_STATUS = {
    "pending": "SCHEDULED",
    "running": "RUNNING",
    "done": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "stopped": "KILLED",  # ended early by a scheduler (ASHA); tag stopped_early=true
}
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
# Fields of a metrics record that are not metrics.
RECORD_FIELDS = ("epoch", "step", "split", "time")
# MLflow's log_batch limits (per request).
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100


class TrackingError(RuntimeError):
    """MLflow could not be brought up to date (sync, parent runs): names the URI and the fix."""


class TrialConflictError(ConfigError):
    """A trial directory holds a different experiment than the config being run."""


# ----------------------------------------------------------------------------- files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        # Written atomically, so this is a hand edit or a foreign file: say which.
        raise ConfigError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None


# ----------------------------------------------------------------------------- provenance


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_info(folder: str | Path | None = None) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the checkout holding the code; None if not a checkout."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return {"git_commit": None, "git_dirty": None}
    status = _git(folder, "status", "--porcelain")
    return {"git_commit": commit.strip(), "git_dirty": None if status is None else bool(status)}


def slurm_job_id() -> str | None:
    """The id `squeue`/`sacct` show: "<array job>_<task>" inside an array, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def collect_provenance() -> dict[str, Any]:
    """Where and with what this process runs: never fails, fields it cannot learn are None."""
    return {
        **git_info(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "mlflow": _version("mlflow"),
        "slurm_job_id": slurm_job_id(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "start_time": _now_iso(),
    }


# ----------------------------------------------------------------------------- trial dir


class TrialDir:
    """One trial's directory `runs/<study>/<trial_id>/`: the source of truth of a run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: Config) -> TrialDir:
        return cls(Path(cfg.paths.runs) / cfg.tracking.study / trial_id(cfg))

    def __repr__(self) -> str:
        return f"TrialDir({str(self.path)!r})"

    # -- layout
    @property
    def trial_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def best_ckpt(self) -> Path:
        return self.ckpt_dir / "best.pt"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def provenance_path(self) -> Path:
        return self.path / "provenance.json"

    @property
    def mlflow_path(self) -> Path:
        return self.path / "mlflow.json"

    # -- config
    def init(self, cfg: Config) -> None:
        """Create the directory and its config.yaml; refuse a different experiment."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        if not self.config_path.exists():
            atomic_write_text(self.config_path, dump_yaml(cfg))
            return
        old = self.read_config()
        if canonical(old) != canonical(cfg):
            a, b = json.loads(canonical(old)), json.loads(canonical(cfg))
            diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in a if a[k] != b.get(k)]
            more = f" (+{len(diff) - 5} more)" if len(diff) > 5 else ""
            raise TrialConflictError(
                f"{self.config_path} holds a different experiment than the config being run "
                f"({'; '.join(diff[:5])}{more}); use another paths.runs or remove {self.path}"
            )

    def read_config(self) -> Config:
        """The trial's resolved config, validated (errors name config.yaml)."""
        return load_config(self.config_path)

    # -- status
    def status(self) -> dict[str, Any]:
        return _read_json(self.status_path) or {}

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Update status.json (keeping every earlier field, e.g. the last error) atomically."""
        if state not in STATES:
            raise ValueError(f"unknown trial state {state!r}; expected one of {', '.join(STATES)}")
        st = self.status()
        st.setdefault("attempts", 0)
        st.update(fields)
        st["state"] = state
        st["updated"] = time.time()
        atomic_write_json(self.status_path, st)
        return st

    def start_attempt(self) -> int:
        """Count one more attempt (first run, resume, requeue) and mark the trial running."""
        attempts = int(self.status().get("attempts", 0)) + 1
        env = os.environ.get
        self.set_status(
            "running",
            attempts=attempts,
            host=socket.gethostname(),
            pid=os.getpid(),
            slurm_job_id=env("SLURM_JOB_ID"),
            slurm_array_job_id=env("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=env("SLURM_ARRAY_TASK_ID"),
            started=time.time(),
        )
        return attempts

    def is_done(self) -> bool:
        return self.result_path.exists()

    # -- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line, flushed and fsync'd; adds "time" if missing."""
        rec = dict(record)
        rec.setdefault("time", time.time())
        line = json.dumps(rec, default=json_default).encode("utf-8") + b"\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a+b") as f:
            # A kill mid-write leaves a line with no newline: end it first, or this record
            # would be glued onto the torn one and lost with it.
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record; a torn line (a kill mid-write) is skipped with a warning."""
        try:
            raw = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(raw.decode("utf-8", errors="replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                log.warning("%s:%d: skipping a torn or unreadable line", self.metrics_path, n)
                continue
            out.append(rec)
        return out

    # -- result
    def write_result(self, result: dict[str, Any]) -> None:
        """Write result.json (atomically): from now on the trial counts as done."""
        atomic_write_json(self.result_path, result)

    def read_result(self) -> dict[str, Any] | None:
        return _read_json(self.result_path)

    # -- provenance
    def write_provenance(self) -> dict[str, Any]:
        """Record this attempt's provenance; earlier attempts are kept under "previous"."""
        info = collect_provenance()
        old = _read_json(self.provenance_path)
        if isinstance(old, dict):
            info["previous"] = [*old.pop("previous", []), old]
        atomic_write_json(self.provenance_path, info)
        return info

    def read_provenance(self) -> dict[str, Any]:
        return _read_json(self.provenance_path) or {}


def find_trials(runs_root: str | Path) -> list[Path]:
    """Every trial directory (one holding config.yaml) under runs_root, at any depth, sorted."""
    root = Path(runs_root)
    if (root / "config.yaml").is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a trial's own folders (ckpt/) hold no trials
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found)


def make_result(
    cfg: Config,
    test_metrics: dict[str, float],
    selection: dict[str, Any],
    val_metrics: dict[str, float] | None,
    epochs: int,
    seconds: float,
) -> dict[str, Any]:
    """A result.json dict (schema in the module docstring), identity fields from cfg."""
    missing = [k for k in RESULT_METRICS if k not in test_metrics]
    if missing:
        raise ValueError(f"test metrics lack {', '.join(missing)}")
    missing = [k for k in ("split", "metric", "epoch", "value") if k not in selection]
    if missing:
        raise ValueError(f"selection lacks {', '.join(missing)}")
    return {
        "trial_id": trial_id(cfg),
        "study": cfg.tracking.study,
        "variant": cfg.tracking.variant,
        "seed": cfg.train.seed,
        "dataset": cfg.data.dataset,
        "metrics": {k: float(v) for k, v in test_metrics.items()},
        "selection": {
            "split": str(selection["split"]),
            "metric": str(selection["metric"]),
            "epoch": int(selection["epoch"]),
            "value": float(selection["value"]),
        },
        "val_metrics": None
        if val_metrics is None
        else {k: float(v) for k, v in val_metrics.items()},
        "epochs": int(epochs),
        "train_seconds": float(seconds),
        "finished": _now_iso(),
    }


# ----------------------------------------------------------------------------- MLflow helpers


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


def _client(uri: str) -> Any:
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

    client = _client(uri)
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


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def config_params(cfg: Config) -> dict[str, str]:
    return {k: param_value(v) for k, v in flatten(to_dict(cfg)).items()}


def run_name(cfg: Config) -> str:
    return f"{cfg.tracking.variant or 'trial'} seed={cfg.train.seed}"


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
    """result.json -> the run's final metrics: "test/R1".. and "train_seconds"."""
    out = {f"test/{k}": float(v) for k, v in result.get("metrics", {}).items() if _is_number(v)}
    if _is_number(result.get("train_seconds")):
        out["train_seconds"] = float(result["train_seconds"])
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# ----------------------------------------------------------------------------- the mirror


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
        points = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if _is_number(v)]
        try:
            self._log_batch(metrics=points)
        except Exception as e:
            self._disable(e)

    def log_record(self, record: dict[str, Any]) -> None:
        """Log a metrics.jsonl record exactly as `sync` would (same keys, step and time)."""
        self.log_metrics(
            record_metrics(record), int(record.get("epoch") or 0), timestamp=record.get("time")
        )

    def set_tag(self, key: str, value: str) -> None:
        if not self.active:
            return
        try:
            self._client.set_tag(self.run_id, key, value)
        except Exception as e:
            self._disable(e)

    def finish(self, status: str = "FINISHED") -> None:
        """Log the final metrics from result.json (if any) and end the run with `status`."""
        if status not in _TERMINAL:
            raise ValueError(f"run status {status!r}: expected one of {', '.join(_TERMINAL)}")
        if not self.active:
            return
        try:
            result = self.trial.read_result()
            end = None
            if result is not None:
                self._log_final(result, self._client.get_run(self.run_id))
                end = _iso_ms(result.get("finished")) if status == "FINISHED" else None
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
        state = self.trial.status().get("state") or ("done" if result is not None else None)
        status = MLFLOW_STATUS.get(state)
        if state == "stopped" and run.data.tags.get("stopped_early") != "true":
            client.set_tag(run_id, "stopped_early", "true")
        if status and status != run.info.status:
            if status in _TERMINAL:
                end = _iso_ms(result.get("finished")) if result and state == "done" else None
                updated = self.trial.status().get("updated")
                end = end or (_ms(updated) if _is_number(updated) else None)
                client.set_terminated(run_id, status, end_time=end)
            else:
                client.update_run(run_id, status=status)
        return n

    # -- internals
    def _disable(self, e: BaseException) -> None:
        if not self._failed:
            root = Path(self.cfg.paths.runs)
            log.warning(
                "MLflow at %s failed (%s); training goes on and %s keeps everything: run "
                "`python -m bilma sync --runs %s` to mirror it later",
                self.uri,
                _first_line(e),
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
        data = _read_json(self.trial.mlflow_path) if self.trial.mlflow_path.exists() else None
        if not isinstance(data, dict):
            return {}
        # Entries are per URI: a run id means nothing in another store.
        return dict(data.get("by_uri", {}).get(self.uri) or {})

    def _save(self, parent: str | None) -> None:
        data = _read_json(self.trial.mlflow_path) if self.trial.mlflow_path.exists() else None
        data = data if isinstance(data, dict) else {}
        entry = {"run_id": self.run_id, "experiment_id": self.experiment_id}
        entry["parent_run_id"] = parent
        by_uri = dict(data.get("by_uri", {}))
        by_uri[self.uri] = entry
        atomic_write_json(
            self.trial.mlflow_path, {**entry, "tracking_uri": self.uri, "by_uri": by_uri}
        )

    def _find_saved(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise  # unreachable store and the like: not a reason to create a new run
        tid = run.data.tags.get("trial_id")
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
            job = prov.get("slurm_job_id") or self.trial.status().get("slurm_job_id")
        tags = {
            "study": cfg.tracking.study,
            "trial_id": self.trial.trial_id,
            "variant": cfg.tracking.variant,
            "seed": str(cfg.train.seed),
            "dataset": cfg.data.dataset,
            "git_commit": commit or "",
            "kind": "trial",
            "mlflow.runName": run_name(cfg),
        }
        tags["slurm_job_id"] = job or ""
        if parent:
            tags["mlflow.parentRunId"] = parent
        return tags

    def _open(self, live: bool) -> Any:
        """Find or create the run; bring tags, params and the config artifact up to date."""
        from mlflow.entities import Param, RunTag

        self._client = client = _client(self.uri)
        self.experiment_id = ensure_experiment(self.uri, self.cfg.tracking.study)
        saved = self._saved()
        run = self._find_saved(saved["run_id"]) if saved.get("run_id") else None
        if run is None:
            run = self._find_tagged()
        if run is None:
            run = client.create_run(
                self.experiment_id,
                start_time=None if live else self._start_time(),
                tags={"trial_id": self.trial.trial_id},  # findable even if we die right here
                run_name=run_name(self.cfg),
            )
            self.created = True
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        parent = (
            self.parent_run_id
            or saved.get("parent_run_id")
            or run.data.tags.get("mlflow.parentRunId")
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
            if "config.yaml" not in names:
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


# ----------------------------------------------------------------------------- sweeps, sync


def ensure_parent_run(uri: str, study: str, sweep: str, tags: dict[str, str] | None = None) -> str:
    """The sweep's parent run (tags kind=sweep, sweep=<name>), created once: a relaunch
    of the same sweep gets the same run id. Raises (MlflowException) if MLflow fails."""
    uri = resolve_uri(uri)
    exp_id = ensure_experiment(uri, study)
    client = _client(uri)
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
    all_tags = {"kind": "sweep", "sweep": sweep, "study": study, **(tags or {})}
    return client.create_run(exp_id, tags=all_tags, run_name=sweep).info.run_id


def sync(runs_root: str | Path, uri: str | None = None) -> dict[str, int]:
    """Mirror every trial directory under runs_root into MLflow; idempotent.

    The URI: `uri`, else each trial's tracking.uri (the default one defers to
    $MLFLOW_TRACKING_URI). Raises TrackingError if MLflow fails (nothing is lost: run again).
    """
    counts = {"trials": 0, "runs_created": 0, "points_logged": 0, "skipped": 0}
    for path in find_trials(runs_root):
        trial = TrialDir(path)
        try:
            cfg = trial.read_config()
        except ConfigError as e:
            log.warning("skipping %s: %s", path, e)
            counts["skipped"] += 1
            continue
        mirror = MlflowMirror(trial, cfg, uri=uri or resolve_uri(cfg.tracking.uri))
        try:
            n = mirror.sync()
        except TrackingError:
            raise
        except ConfigError as e:  # a hand-edited status.json or result.json
            log.warning("skipping %s: %s", path, e)
            counts["skipped"] += 1
            continue
        except Exception as e:
            raise TrackingError(
                f"{path}: could not sync to MLflow at {mirror.uri} ({_first_line(e)}); "
                "check the URI or the server, then run sync again"
            ) from e
        counts["trials"] += 1
        counts["runs_created"] += int(mirror.created)
        counts["points_logged"] += n
        log.info(
            "synced %s -> run %s (%s, %d points)",
            path,
            mirror.run_id,
            "new" if mirror.created else "existing",
            n,
        )
    return counts


def add_sync_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m bilma sync`."""
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="trial directories root")
    parser.add_argument(
        "--uri", default=None, help="MLflow tracking URI (default: each trial's tracking.uri)"
    )


def cmd_sync(args: argparse.Namespace) -> int:
    """`python -m bilma sync --runs DIR [--uri URI]`."""
    if not Path(args.runs).is_dir():
        print(f"error: {args.runs}: no such folder of trial directories", file=sys.stderr)
        return 2
    try:
        counts = sync(args.runs, args.uri)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"synced {counts['trials']} trials: {counts['runs_created']} runs created, "
        f"{counts['points_logged']} metric points logged"
        + (f", {counts['skipped']} skipped (bad config.yaml)" if counts["skipped"] else "")
    )
    return 0


__all__ = [
    "DEFAULT_URI",
    "MLFLOW_STATUS",
    "RESULT_METRICS",
    "STATES",
    "MlflowMirror",
    "TrackingError",
    "TrialConflictError",
    "TrialDir",
    "add_sync_args",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "cmd_sync",
    "collect_provenance",
    "config_params",
    "ensure_experiment",
    "ensure_parent_run",
    "final_metrics",
    "find_trials",
    "git_info",
    "make_result",
    "record_metrics",
    "resolve_uri",
    "sync",
]
