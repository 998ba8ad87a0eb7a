"""`python -m bilma sync`: rebuild the MLflow mirror of every trial directory under a folder.

Idempotent: a metric point already in MLflow is not logged again, a run is found again by its
trial id, so it can run after any crash, or against a new server, as often as wanted. The
trials of a sweep (launch.json names its grid file) go under the sweep's parent run, found in
this store or made there; each parent's summary and mean curves are brought up to date from
the trial directories, and a parent all of whose trials ended is ended
(`bilma.tracking.parent`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bilma.config import ConfigError
from bilma.errors import first_line
from bilma.runs.trial_dir import TrialDir, find_trials
from bilma.tracking.mirror import MlflowMirror
from bilma.tracking.parent import FROM_TRIALS, find_parent, update_parent
from bilma.tracking.store import TrackingError, resolve_uri, sqlite_path

log = logging.getLogger(__name__)


def sync(runs_root: str | Path, uri: str | None = None) -> dict[str, int]:
    """Mirror every trial directory under runs_root into MLflow; idempotent.

    The URI: `uri`, else each trial's tracking.uri (the default one defers to
    $MLFLOW_TRACKING_URI). Raises TrackingError if MLflow fails (nothing is lost: run again).
    """
    counts = {"trials": 0, "runs_created": 0, "points_logged": 0, "skipped": 0, "parents": 0}
    # (uri, study, sweep) -> the parent run's id, and the folders holding the sweep's trials
    parents: dict[tuple[str, str, str], str] = {}
    folders: dict[tuple[str, str, str], set[Path]] = {}
    unsaved: list[Path] = []  # trials whose mlflow.json could not be written (read-only)
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
            launch = trial.read_launch()
            if launch.grid:  # a sweep's trial: under the sweep's parent run in this store
                key = (mirror.uri, cfg.tracking.study, Path(launch.grid).stem)
                if key not in parents:
                    parents[key] = find_parent(*key, known=launch.parent_run_id)
                folders.setdefault(key, set()).add(path.parent)
                mirror.parent_run_id = parents[key]
            n = mirror.sync()
        except TrackingError:
            raise
        except ConfigError as e:  # a hand-edited status.json or result.json
            log.warning("skipping %s: %s", path, e)
            counts["skipped"] += 1
            continue
        except OSError as e:
            if not e.filename:  # the network (requests' errors are OSErrors without a file)
                raise TrackingError(_failed(path, mirror.uri, e)) from e
            # A local file: the trial folder's, not the server's fault.
            raise TrackingError(
                f"{e.filename}: {e.strerror or first_line(e)}; sync reads the trial "
                f"directories (and writes only their mlflow.json): fix the permissions under "
                f"{runs_root}, then run sync again"
            ) from None
        except Exception as e:
            raise TrackingError(_failed(path, mirror.uri, e)) from e
        if mirror.unsaved is not None:
            unsaved.append(path)
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
    if unsaved:
        log.warning(
            "%s is read-only: %d trials' mlflow.json (their MLflow run ids) not written there; "
            "nothing is lost: sync finds their runs again by their trial_id tags",
            runs_root,
            len(unsaved),
        )
    for (store, study, sweep), run_id in parents.items():
        try:
            update_parent(store, run_id, sorted(folders[(store, study, sweep)]), FROM_TRIALS)
        except Exception as e:
            raise TrackingError(
                f"{study}: could not update the parent run {run_id} of sweep {sweep} in MLflow "
                f"at {store} ({first_line(e)}); check the URI or the server, then run sync again"
            ) from e
        counts["parents"] += 1
    return counts


def _failed(path: Path, uri: str, e: BaseException) -> str:
    """Sync of a trial failed in MLflow: the store or server to check."""
    db = sqlite_path(uri)
    check = (
        f"check that {db} and its folder can be written"
        if db is not None
        else "check the URI or the server"
    )
    return (
        f"{path}: could not sync to MLflow at {uri} ({first_line(e)}); {check}, then run sync again"
    )


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
        + (f", {counts['parents']} sweep parent runs updated" if counts["parents"] else "")
        + (f", {counts['skipped']} skipped (see the warnings)" if counts["skipped"] else "")
    )
    return 0
