"""A stand-in for submitit's LocalExecutor that starts nothing: `from support.executors import
RecordingExecutor`, then `monkeypatch.setattr(submitit, "LocalExecutor", RecordingExecutor)`."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace


class RecordingExecutor:
    """Keeps the environment seen at each submit (submitit copies ``os.environ`` then)."""

    seen: list[dict[str, str]] = []

    def __init__(self, folder: Path, max_num_timeout: int) -> None:
        self.folder = folder

    def update_parameters(self, **params) -> None:
        self.params = params

    def submit(self, fn) -> SimpleNamespace:
        RecordingExecutor.seen.append(dict(os.environ))
        # A job that has already ended, with a pid no process has (above PID_MAX_LIMIT).
        return SimpleNamespace(
            job_id=str(2**22 + 1),
            done=lambda: True,
            state="FAILED",
            paths=SimpleNamespace(stderr=self.folder / "job.err"),
        )
