"""A trial's directory `runs/<study>/<trial_id>/`: the source of truth of a run.

The id is `bilma.config.trial_id`; MLflow is only a mirror (`bilma.tracking.mirror`) that
`bilma sync` can always rebuild. Names of files, states and fields are `bilma.runs.schema`'s
(docs/architecture.md has the table); this module reads and writes them:

    config.yaml       the resolved config (written once; a different experiment is refused)
    status.json       {"state": a TrialState, "attempts", "updated", "host", "pid", ...}
    metrics.jsonl     append-only (records past last.pt's epoch are dropped on resume), one
                      JSON object per line: {"epoch", "step", "split", "time", <metric>: ...}
    result.json       exists only when the trial is done (`make_result`)
    launch.json       the sweep's part of the identity (`bilma.runs.launch`)
    ckpt/last.pt, ckpt/best.pt   written with `atomic_torch_save`; a new best is written to
                      ckpt/best.next.pt and renamed to best.pt once last.pt names its epoch
    train.log, provenance.json, mlflow.json (the trial's MLflow run, continued on resume)

A stopped trial (ended early on purpose, e.g. by ASHA through `train(on_eval=...)`) has
ckpt/last.pt of its last evaluated epoch and no result.json; neither `train` nor a relaunch
runs it again: `TrialDir.is_finished()`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from bilma.config import Config, ConfigError, canonical, dump_yaml, load_config, trial_id
from bilma.errors import TrialConflictError  # noqa: F401  (importable from here too)
from bilma.fileio import (
    DiskFull,
    atomic_write_json,
    atomic_write_text,
    disk_full_message,
    is_disk_full,
    json_default,
    replace_json,
)
from bilma.runs import schema
from bilma.runs.causes import end_fields, previous_attempt
from bilma.runs.launch import Launch, read_launch
from bilma.runs.provenance import collect_provenance, now_iso, slurm_env
from bilma.runs.schema import (  # noqa: F401  (importable from here too)
    GROUP_METRICS,
    LAUNCH_FILE,
    RECORD_FIELDS,
    RESULT_METRICS,
    STATES,
    TrialState,
)

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    """A JSON file's content; None if it does not exist, a ConfigError naming it if bad."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        # Written atomically, so this is a hand edit or a foreign file: say which.
        raise ConfigError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None


def state_of(status: dict[str, Any], done: bool) -> TrialState | None:
    """A trial's state from its status.json and whether result.json exists (it wins)."""
    return TrialState.DONE if done else TrialState.parse(status.get("state"))


def _is_record(rec: Any) -> bool:
    """A metrics.jsonl record: an object whose epoch, step and time (when there) are numbers
    (a hand-edited line with "epoch": "x" would stop every reader)."""
    if not isinstance(rec, dict):
        return False
    return all(
        isinstance(rec.get(k, 0), (int, float)) and not isinstance(rec.get(k), bool)
        for k in ("epoch", "step", "time")
    )


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
        return self.path / schema.CONFIG_FILE

    @property
    def status_path(self) -> Path:
        return self.path / schema.STATUS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / schema.METRICS_FILE

    @property
    def result_path(self) -> Path:
        return self.path / schema.RESULT_FILE

    @property
    def ckpt_dir(self) -> Path:
        return self.path / schema.CKPT_DIR

    @property
    def last_ckpt(self) -> Path:
        return self.ckpt_dir / schema.LAST_CKPT

    @property
    def best_ckpt(self) -> Path:
        return self.ckpt_dir / schema.BEST_CKPT

    @property
    def best_candidate(self) -> Path:
        """The new best checkpoint, until last.pt naming its epoch is committed."""
        return self.ckpt_dir / schema.BEST_CANDIDATE

    @property
    def progress_path(self) -> Path:
        return self.path / schema.PROGRESS_FILE

    @property
    def log_path(self) -> Path:
        return self.path / schema.LOG_FILE

    @property
    def provenance_path(self) -> Path:
        return self.path / schema.PROVENANCE_FILE

    @property
    def mlflow_path(self) -> Path:
        return self.path / schema.MLFLOW_FILE

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
        """status.json ({} when missing); a ConfigError naming it when it is no JSON object."""
        status = read_json(self.status_path)
        if status is not None and not isinstance(status, dict):
            raise ConfigError(
                f"{self.status_path}: holds a JSON {type(status).__name__}, not an object; "
                "delete it (the trial's state then comes from its other files) or fix it"
            )
        return status or {}

    def state(self) -> TrialState | None:
        """The state status.json names (None: no status yet, or a state this code does not
        know). A trial with result.json is done whatever status.json says."""
        done = self.is_done()
        return state_of({} if done else self.status(), done)

    def set_status(self, state: TrialState | str, **fields: Any) -> dict[str, Any]:
        """Update status.json (keeping every earlier field, e.g. the last error) atomically."""
        known = TrialState.parse(state)
        if known is None:
            raise ValueError(f"unknown trial state {state!r}; expected one of {', '.join(STATES)}")
        st = self.status()
        st.setdefault("attempts", 0)
        st.update(fields)
        st["state"] = known.value
        st["updated"] = time.time()
        atomic_write_json(self.status_path, st)
        return st

    def start_attempt(self) -> int:
        """Count one more attempt (first run, resume, requeue) and mark the trial running."""
        status = self.status()
        attempts = int(status.get("attempts", 0)) + 1
        self.set_status(
            TrialState.RUNNING,
            **previous_attempt(status),  # killed without a word: its record, SLURM's cause
            attempts=attempts,
            host=socket.gethostname(),
            pid=os.getpid(),
            **slurm_env(),
            started=time.time(),
        )
        return attempts

    def end_attempt(
        self, state: TrialState | str, cause: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Record how the current attempt ended: its state, "cause" (a schema.CAUSES value, or
        None) and a record in "attempt_log" (bilma.runs.causes.end_fields), with `fields`."""
        ended = end_fields(self.status(), str(TrialState(state)), cause, fields.get("error"))
        return self.set_status(state, **fields, **ended)

    def is_done(self) -> bool:
        return self.result_path.exists()

    def is_finished(self) -> bool:
        """Done, or stopped early on purpose: a relaunch must not run it again."""
        state = self.state()
        return state is not None and state.is_finished()

    # -- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line, flushed and fsync'd; adds "time" if missing."""
        rec = dict(record)
        rec.setdefault("time", time.time())
        line = json.dumps(rec, default=json_default).encode("utf-8") + b"\n"
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._append(line)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(disk_full_message(self.metrics_path)) from None
            raise

    def _append(self, line: bytes) -> None:
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
            if not _is_record(rec):
                log.warning("%s:%d: skipping a torn or unreadable line", self.metrics_path, n)
                continue
            out.append(rec)
        return out

    def truncate_metrics(self, epochs: int) -> int:
        """Keep only the records of the first `epochs` epochs (those ckpt/last.pt committed);
        rewrites metrics.jsonl atomically; the number of records (or torn lines) dropped.

        A kill between an epoch's records and its last.pt would otherwise repeat the epoch."""
        try:
            raw = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return 0
        keep, dropped = [], 0
        for line in raw.decode("utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if _is_record(rec) and int(rec.get("epoch") or 0) <= epochs:
                keep.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            atomic_write_text(self.metrics_path, "".join(keep))
        return dropped

    # -- result
    def write_result(self, result: dict[str, Any]) -> None:
        """Write result.json (atomically): from now on the trial counts as done."""
        atomic_write_json(self.result_path, result)

    def read_result(self) -> dict[str, Any] | None:
        return read_json(self.result_path)

    # -- progress (a view for the launcher; never read to resume)
    def write_progress(self, progress: dict[str, Any]) -> None:
        """Replace progress.json; a failure to write it (a full disk) never stops training."""
        try:
            replace_json(self.progress_path, {**progress, "updated": time.time()})
        except OSError as e:
            log.debug("progress.json not written: %s", e)

    def read_progress(self) -> dict[str, Any] | None:
        """progress.json, or None when it is missing or cannot be read."""
        try:
            progress = read_json(self.progress_path)
        except (ConfigError, OSError, UnicodeDecodeError):
            return None
        return progress if isinstance(progress, dict) else None

    # -- provenance
    def write_provenance(self) -> dict[str, Any]:
        """Record this attempt's provenance; earlier attempts are kept under "previous"."""
        info = collect_provenance()
        old = read_json(self.provenance_path)
        if isinstance(old, dict):
            info["previous"] = [*old.pop("previous", []), old]
        atomic_write_json(self.provenance_path, info)
        return info

    def read_provenance(self) -> dict[str, Any]:
        return read_json(self.provenance_path) or {}

    # -- launch
    @property
    def launch_path(self) -> Path:
        return self.path / LAUNCH_FILE

    def read_launch(self) -> Launch:
        """The sweep's part of the trial's identity (bilma.runs.launch)."""
        return read_launch(self.path)


def find_trials(runs_root: str | Path) -> list[Path]:
    """Every trial directory (one holding config.yaml) under runs_root, at any depth, sorted."""
    root = Path(runs_root)
    if (root / schema.CONFIG_FILE).is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if schema.CONFIG_FILE in filenames:
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
    launch: Launch | None = None,
    chance_R1: float | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result.json dict (schema in the module docstring): identity fields from cfg, the
    sweep's (variant name, grid point) from the trial's launch.json, and `usage`
    (`bilma.training.usage.result_fields`; None each when not measured)."""
    launch = launch or Launch()
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
        "variant_base": launch.variant_base,
        "grid_point": dict(launch.grid_point),
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
        "chance_R1": None if chance_R1 is None else float(chance_R1),
        "finished": now_iso(),
        **{k: (usage or {}).get(k) for k in schema.USAGE_FIELDS},
    }
