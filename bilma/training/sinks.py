"""Where a run's records go: one interface, fanned out to the trial directory and MLflow.

The trainer writes each metrics record, its result and its end state ONCE, to a `FanOutSink`
(after torchtune's MetricLoggerInterface); the fan-out hands it to every sink in order, the
trial directory first (the source of truth), then the MLflow mirror (which never raises).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from bilma.config import Config
from bilma.runs.schema import MLFLOW_STATUS, TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.tracking.mirror import STOPPED_TAGS, MlflowMirror

log = logging.getLogger(__name__)


class RunSink(Protocol):
    """What a run writes: metrics records, the result (once), the end state (once)."""

    def log_record(self, record: dict[str, Any]) -> None:
        """One metrics record: {"epoch", "step", "split", "time", <metric>: number, ...}."""

    def log_result(self, result: dict[str, Any]) -> None:
        """The result.json content (`bilma.runs.trial_dir.make_result`) of a finished trial."""

    def close(self, state: TrialState, **fields: Any) -> None:
        """The run ended in trial state `state` (done, failed, interrupted, stopped);
        `fields` go to status.json (e.g. error=, traceback=)."""


class TrialSink:
    """The trial directory: metrics.jsonl, result.json, status.json."""

    def __init__(self, trial: TrialDir):
        self.trial = trial

    def log_record(self, record: dict[str, Any]) -> None:
        self.trial.append_metrics(record)

    def log_result(self, result: dict[str, Any]) -> None:
        self.trial.write_result(result)

    def close(self, state: TrialState, **fields: Any) -> None:
        self.trial.end_attempt(state, **fields)


class MlflowSink:
    """The trial's MLflow run, through `MlflowMirror` (warns once and goes on if MLflow fails)."""

    def __init__(self, mirror: MlflowMirror):
        self.mirror = mirror
        self._result: dict[str, Any] | None = None

    @classmethod
    def start(cls, trial: TrialDir, cfg: Config, parent_run_id: str | None = None) -> MlflowSink:
        """Create or continue the trial's run and mark it RUNNING."""
        mirror = MlflowMirror(trial, cfg, parent_run_id)
        mirror.start()
        return cls(mirror)

    def log_record(self, record: dict[str, Any]) -> None:
        self.mirror.log_record(record)

    def log_result(self, result: dict[str, Any]) -> None:
        self._result = result  # logged with the final status in close()

    def close(self, state: TrialState, **fields: Any) -> None:
        state = TrialState(state)
        tags = STOPPED_TAGS if state is TrialState.STOPPED else None
        self.mirror.finish(MLFLOW_STATUS[state], tags=tags, result=self._result)


class FanOutSink:
    """Every sink in order; `log_record` stamps "time" (in place) so that all agree on it."""

    def __init__(self, sinks: list[RunSink] | None = None):
        self.sinks: list[RunSink] = list(sinks or [])

    def add(self, sink: RunSink) -> None:
        self.sinks.append(sink)

    def log_record(self, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        for sink in self.sinks:
            sink.log_record(record)

    def log_result(self, result: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log_result(result)

    def close(self, state: TrialState, **fields: Any) -> None:
        """Every sink learns the end state; one failing (a full disk) does not stop the
        others, nor hide the error that ended the run."""
        for sink in self.sinks:
            try:
                sink.close(state, **fields)
            except Exception as e:
                log.warning("could not record the end state %r: %s", state, e)
