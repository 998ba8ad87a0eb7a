"""What every backend needs before its trials start, and the sweep's end in MLflow.

`prepare`: the shared synthetic data (made once, not by every trial at once), the MLflow
experiment and the sweep's parent run, each trial's directory with its config.yaml and its
launch.json (`Trial.launch` + `bilma.runs.launch.write_launch`). The parent run gets the
grid's params and the grid file when the sweep starts, and the sweep's summary and mean curves
with its final status at the end (`finish_parent`); `bilma.tracking.parent` says what each is.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from bilma.config import Config
from bilma.errors import first_line
from bilma.fileio import in_threads
from bilma.runs.launch import rename_launch, write_launch
from bilma.runs.lock import claim
from bilma.runs.schema import MLFLOW_STATUS, TAG_GRID, TrialState
from bilma.sweep.expand import Grid
from bilma.sweep.plan import Planned

log = logging.getLogger(__name__)


def prepare(
    grid: Grid, planned: list[Planned], tracking: bool = True, code: str | None = None
) -> str | None:
    """Shared data, the MLflow experiment and parent run, each trial's directory (`code`: the
    id of the code snapshot its jobs import, recorded in launch.json). Returns the parent run
    id (None without MLflow)."""
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
            parent = _parent_run(grid, cfg0, planned)

    def folder(p: Planned) -> None:
        p.dir.init(p.trial.config)
        # this command's tracking settings win over the ones frozen in config.yaml
        settings = {
            "enabled": p.trial.config.tracking.enabled and tracking,
            "uri": p.trial.config.tracking.uri,
        }
        launch = p.trial.launch(str(grid.path), parent, settings)
        write_launch(p.dir.path, dataclasses.replace(launch, code=code))

    in_threads(folder, to_run)  # each file fsynced: 1,000 folders in ~2 s, not 22 s
    return parent


def rename_skipped(grid: Grid, planned: list[Planned]) -> list[str]:
    """The trials this launch does not run keep the names it gives them (a variant renamed
    in the grid after its trials finished): their launch.json, read by the tables and by
    `sync` for MLflow, gets the new name, as `--status` shows it. One line per renaming."""
    from collections import Counter

    renamed: Counter[tuple[str, str]] = Counter()
    refused: list[str] = []
    for p in planned:
        if p.action.runs():
            continue  # prepare writes its launch.json
        try:
            old = rename_launch(p.dir.path, p.trial.launch(str(grid.path), None, {}))
        except OSError as e:  # a read-only runs folder: the old name stays, say so
            refused.append(f"{p.dir.launch_path} ({e.strerror or first_line(e)})")
            continue
        if old is not None and old.variant != p.trial.variant:
            renamed[(old.variant, p.trial.variant)] += 1
    runs = planned[0].dir.path.parent.parent if planned else ""
    lines = [
        f"{n} trial{'s' if n > 1 else ''} renamed {old!r} -> {new!r} in launch.json; "
        f"`python -m bilma sync --runs {runs}` renames their MLflow runs"
        for (old, new), n in renamed.items()
    ]
    if refused:
        lines.append(
            f"{len(refused)} trials keep their old names in the tables: {refused[0]} cannot be "
            "written; relaunch where the runs folder is writable to rename them"
        )
    return lines


def _parent_run(grid: Grid, cfg: Config, planned: list[Planned]) -> str | None:
    from bilma.tracking.parent import setup_parent
    from bilma.tracking.store import ensure_experiment, ensure_parent_run

    try:
        # The experiment exists before any trial starts: concurrent creation of a fresh
        # SQLite store or experiment corrupts it or files runs under "Default" (STACK.md).
        ensure_experiment(cfg.tracking.uri, grid.study)
        parent = ensure_parent_run(
            cfg.tracking.uri, grid.study, grid.path.stem, {TAG_GRID: str(grid.path)}
        )
    except Exception as e:  # MLflow down: trials still run; `python -m bilma sync` later
        log.warning(
            "MLflow at %s unavailable (%s): trials run without a parent run; run "
            "`python -m bilma sync --runs %s` to mirror them later",
            cfg.tracking.uri,
            first_line(e),
            cfg.paths.runs,
        )
        return None
    try:
        setup_parent(cfg.tracking.uri, parent, grid.path, grid_params(grid, planned))
    except Exception as e:  # the trials have their parent; its params can wait for nothing
        log.warning("MLflow parent run %s: params not logged (%s)", parent, first_line(e))
    return parent


def grid_params(grid: Grid, planned: list[Planned]) -> dict[str, str]:
    """The parent run's params: what the trials tell (`sweep_params`), the grid's base and
    fixed settings (`set.<key>`, the launch's --set included), its Ray Tune search."""
    from bilma.tracking.mirror import param_value
    from bilma.tracking.parent import sweep_params

    params = sweep_params([p.trial.launch(str(grid.path), None, {}) for p in planned])
    if grid.base is not None:
        params["base"] = str(grid.base)
    fixed = {**grid.set, **grid.extra_set}
    params.update({f"set.{k}": param_value(v) for k, v in fixed.items()})
    for name, section in (("search", grid.search), ("scheduler", grid.scheduler)):
        if dataclasses.is_dataclass(section) and section != type(section)():  # not the default
            values = dataclasses.asdict(section)
            params.update({f"{name}.{k}": param_value(v) for k, v in values.items() if v})
    return params


def finish_parent(cfg: Config, parent: str | None, failed: bool, stopped: bool = False) -> None:
    """The sweep's summary and mean curves on its parent run (from the trial directories),
    then its final status (`stopped`: the launch was stopped, trials are left to resume).
    Never raises: a server gone since the start costs a warning."""
    if not parent:
        return
    from bilma.tracking.parent import update_parent

    state = TrialState.INTERRUPTED if stopped else TrialState.FAILED if failed else TrialState.DONE
    status = MLFLOW_STATUS[state]
    try:
        study_dir = Path(cfg.paths.runs) / cfg.tracking.study
        update_parent(cfg.tracking.uri, parent, [study_dir], status=status)
    except Exception as e:
        log.warning(
            "MLflow parent run %s not updated (%s); `python -m bilma sync --runs %s` does it",
            parent,
            first_line(e),
            cfg.paths.runs,
        )
