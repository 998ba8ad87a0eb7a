"""What every backend needs before its trials start, and the sweep's end in MLflow.

`prepare`: the shared synthetic data (made once, not by every trial at once), the MLflow
experiment and the sweep's parent run, each trial's directory with its config.yaml and its
launch.json (`Trial.launch` + `bilma.runs.launch.write_launch`). `finish_parent`: the parent
run's final status.
"""

from __future__ import annotations

import contextlib
import logging

from bilma.config import Config
from bilma.runs.launch import write_launch
from bilma.runs.lock import claim
from bilma.runs.schema import MLFLOW_STATUS, TrialState
from bilma.sweep.expand import Grid
from bilma.sweep.plan import Planned

log = logging.getLogger(__name__)


def prepare(grid: Grid, planned: list[Planned], tracking: bool = True) -> str | None:
    """Shared data, the MLflow experiment and parent run, each trial's directory. Returns the
    parent run id (None without MLflow)."""
    from bilma.data.synth_cache import ensure_synthetic

    to_run = [p for p in planned if p.action.runs()]
    parent = None
    if not planned:
        return parent
    # The study's claim: two launchers of one grid make one dataset and one parent run.
    with claim(planned[0].dir.path.parent):
        # Several trials reading one missing synthetic dataset would all generate it: here.
        seen = set()
        for p in to_run:
            data = p.trial.config.data
            if data.dataset == "synth" and data.root not in seen:
                seen.add(data.root)
                ensure_synthetic(data)
        cfg0 = planned[0].trial.config
        if tracking and cfg0.tracking.enabled:
            parent = _parent_run(grid, cfg0)
    for p in to_run:
        p.dir.init(p.trial.config)
        # this command's tracking settings win over the ones frozen in config.yaml
        settings = {
            "enabled": p.trial.config.tracking.enabled and tracking,
            "uri": p.trial.config.tracking.uri,
        }
        write_launch(p.dir.path, p.trial.launch(str(grid.path), parent, settings))
    return parent


def _parent_run(grid: Grid, cfg: Config) -> str | None:
    from bilma.tracking.store import ensure_experiment, ensure_parent_run

    try:
        # The experiment exists before any trial starts: concurrent creation of a fresh
        # SQLite store or experiment corrupts it or files runs under "Default" (STACK.md).
        ensure_experiment(cfg.tracking.uri, grid.study)
        return ensure_parent_run(
            cfg.tracking.uri, grid.study, grid.path.stem, {"grid": str(grid.path)}
        )
    except Exception as e:  # MLflow down: trials still run; `python -m bilma sync` later
        log.warning(
            "MLflow at %s unavailable (%s): trials run without a parent run; run "
            "`python -m bilma sync --runs %s` to mirror them later",
            cfg.tracking.uri,
            (str(e).splitlines() or [type(e).__name__])[0],
            cfg.paths.runs,
        )
        return None


def finish_parent(cfg: Config, parent: str | None, failed: bool) -> None:
    if not parent:
        return
    from bilma.tracking.store import mlflow_client, resolve_uri

    # A server gone since the start: fail fast (mlflow_client), never stop the launcher.
    with contextlib.suppress(Exception):
        mlflow_client(resolve_uri(cfg.tracking.uri)).set_terminated(
            parent, MLFLOW_STATUS[TrialState.FAILED if failed else TrialState.DONE]
        )
