"""Which checkpoints a trial keeps: `train.keep_checkpoints` (not part of the trial id).

    last_and_best  ckpt/last.pt and ckpt/best.pt (the default)
    best           ckpt/best.pt only: last.pt is deleted once the trial is done (result.json
                   written); a trial that is not done keeps its last.pt, which resumes it
    every:N        last and best, plus ckpt/epoch_<E>.pt for each committed epoch E that is a
                   multiple of N (N >= 1): a hard link to that epoch's last.pt, so nothing is
                   copied; it holds its own space once last.pt moves on (a file system without
                   hard links gets a copy)

The trainer applies it at the end of a trial (`apply`) and takes the snapshots of every:N
when an epoch's last.pt is on disk (`after_commit`). The dry-run's disk estimate counts the
files each policy leaves (`footprint`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from bilma.fileio import fsync_dir
from bilma.runs import schema

log = logging.getLogger(__name__)

# The values and their parsing live with the config, which validates them (bilma.config
# sits below bilma.runs); importable from here too.
from bilma.config.keep import DEFAULT, FORMAT, Policy, parse, problem  # noqa: E402, F401


def snapshot_path(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"{schema.EPOCH_CKPT_PREFIX}{epoch:04d}.pt"


def snapshots(ckpt_dir: Path) -> list[Path]:
    """The epoch snapshots in a trial's ckpt/, oldest first."""
    return sorted(ckpt_dir.glob(f"{schema.EPOCH_CKPT_PREFIX}*.pt"))


def after_commit(
    value: str, last: Path, epoch: int, step_in_epoch: int, then: Callable[[], None]
) -> Callable[[], None]:
    """What runs once a last.pt is on disk: `then` (best.pt's promotion), and with every:N
    the snapshot of a finished epoch (`epoch` epochs done, none in progress) that is due."""
    every = parse(value).every
    if not every or step_in_epoch or epoch % every:
        return then

    def run() -> None:
        then()
        snapshot(last, epoch)

    return run


def snapshot(last: Path, epoch: int) -> Path:
    """ckpt/epoch_<E>.pt of `last` (a hard link, else a copy), made complete then renamed."""
    target = snapshot_path(last.parent, epoch)
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:  # no hard links here (some network file systems)
        shutil.copyfile(last, tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return target


def apply(trial_path: Path, value: str) -> list[Path]:
    """Delete what the policy does not keep of a done trial; the files removed (a failure to
    delete is a warning). A trial without result.json is left whole: its last.pt is what
    resumes it."""
    policy = parse(value)
    if policy.keep_last or not (trial_path / schema.RESULT_FILE).is_file():
        return []
    ckpt = trial_path / schema.CKPT_DIR
    if not (ckpt / schema.BEST_CKPT).is_file():  # never leave a done trial without weights
        return []
    removed = []
    try:
        for path in (ckpt / schema.LAST_CKPT, *snapshots(ckpt)):
            if path.exists():
                path.unlink()
                removed.append(path)
        if removed:
            fsync_dir(ckpt)
    except OSError as e:  # the trial is done all the same; the files only take space
        log.warning("train.keep_checkpoints=%s: could not delete in %s: %s", value, ckpt, e)
        log.info("train.keep_checkpoints=%s: removed %s", value, ", ".join(p.name for p in removed))
    return removed


def footprint(value: str, epochs: int, last_bytes: float, best_bytes: float) -> tuple[float, float]:
    """(bytes a done trial keeps, bytes it holds at most while it trains) under the policy."""
    policy = parse(value)
    running = last_bytes + 2 * best_bytes  # best.next.pt beside best.pt for a moment
    if not policy.keep_last:
        return best_bytes, running
    extra = 0.0
    if policy.every:
        # The snapshot of the last epoch is last.pt itself (a hard link) when it is due.
        extra = (epochs // policy.every - (epochs % policy.every == 0)) * last_bytes
    return last_bytes + best_bytes + extra, running + extra
