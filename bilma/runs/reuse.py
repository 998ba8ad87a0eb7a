"""Reusing a trial directory made elsewhere: what the trial id leaves out can differ.

Another study (`link_reused`, below): a trial finished under one study is recorded, not
retrained, in a second study that plans the same trial id. A moved data root: data.root is not part of the trial id (the same experiment on any machine), so a trial run on
one data folder is found again when the config names another; its result and checkpoint come
from the recorded folder. The trainer and the launcher say so in one line.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import yaml

from bilma.config import Config, ConfigError
from bilma.fileio import atomic_write_bytes
from bilma.runs.launch import Launch, write_launch
from bilma.runs.schema import CKPT_DIR, METRICS_FILE, PROVENANCE_FILE, REUSED_FROM, TrialState
from bilma.runs.trial_dir import TrialDir


def moved_data_root(config_path: str | Path, cfg: Config) -> str | None:
    """The data.root recorded in an existing trial's config.yaml when it names another folder
    than cfg's; None when they agree or there is no readable file."""
    try:
        tree = yaml.safe_load(Path(config_path).read_text())
        old = tree["data"]["root"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return None
    new = cfg.data.root
    if not isinstance(old, str) or old == new:
        return None
    if os.path.realpath(old) == os.path.realpath(new):  # "data/x" and "./data/x/"
        return None
    return old


def data_root_warning(config_path: str | Path, cfg: Config) -> str | None:
    """One warning line naming both roots (see `moved_data_root`), or None."""
    old = moved_data_root(config_path, cfg)
    if old is None:
        return None
    return (
        f"{Path(config_path).parent} was run on data.root={old}, not {cfg.data.root}: its result "
        f"and checkpoint come from {old}; data.root is not part of the trial id, so use another "
        "paths.runs to train on the new root"
    )


# ----------------------------------------------------------------------------- another study's
# A trial id leaves the study out: the same experiment finished in study A is the trial that
# study B plans. B's folder then gets a trial directory of its own that records the reuse
# (`link_reused`) instead of training it again:
#
#   config.yaml, launch.json   B's (its study, its variant name and grid point, its parent run)
#   metrics.jsonl, provenance.json   copies of A's (the curves, and the code that trained it)
#   status.json                done, attempts 0, "reused_from": "A"
#   result.json                A's numbers, "study": "B", "reused_from": "A"
#   ckpt -> ../../A/<id>/ckpt  a relative symlink: checkpoints are never copied
#
# So B's table, `--status`, `bilma sync` (a run in B's experiment tagged reused_from=A) and a
# relaunch of B read an ordinary finished trial; A's directory is never written.


def reused_from(trial: TrialDir) -> str | None:
    """The study a reused trial's result comes from (status.json, else result.json), or None
    for a trial trained in its own directory."""
    for read in (trial.status, trial.read_result):
        try:
            data = read()
        except (ConfigError, OSError, UnicodeDecodeError):
            continue
        study = data.get(REUSED_FROM) if isinstance(data, dict) else None
        if isinstance(study, str) and study:
            return study
    return None


def origin(source: TrialDir) -> TrialDir:
    """The directory that trained `source`'s result: `source` itself, or (a reused trial) the
    one it names, when that still holds a result."""
    study = reused_from(source)
    if study is None:
        return source
    first = TrialDir(source.path.parent.parent / study / source.trial_id)
    return first if first.result_path.is_file() else source


def link_reused(source: TrialDir, dest: TrialDir, cfg: Config, launch: Launch) -> None:
    """Record in `dest` (B's directory, config `cfg`, launch.json `launch`) that its trial is
    `source`'s finished one (see above). Written so that a kill at any point leaves `dest`
    either not finished (a relaunch reuses it again) or finished: result.json comes after
    every file it needs, the checkpoint link after result.json (a directory with the link and
    no result would otherwise resume from another study's checkpoint)."""
    source = origin(source)
    dest.init(cfg)  # refuses a config.yaml of another experiment
    for name in (METRICS_FILE, PROVENANCE_FILE):
        with contextlib.suppress(FileNotFoundError):
            atomic_write_bytes(dest.path / name, (source.path / name).read_bytes())
    write_launch(dest.path, launch)
    result = source.read_result()
    if not isinstance(result, dict):
        raise ConfigError(f"{source.result_path}: no result to reuse")
    study = result.get(REUSED_FROM) or source.path.parent.name
    old = source.status()
    dest.set_status(
        TrialState.DONE,
        **{REUSED_FROM: study},
        attempts=0,
        started=old.get("started"),
        host=old.get("host"),
    )
    dest.write_result({**result, "study": cfg.tracking.study, REUSED_FROM: study})
    _link_ckpt(source, dest)


def _link_ckpt(source: TrialDir, dest: TrialDir) -> None:
    """dest/ckpt -> source's checkpoint folder (a relative link: the runs root can move), in
    place of dest's empty one. Nothing when the source has none, or it is dest's own."""
    target = Path(os.path.realpath(source.ckpt_dir))
    if not target.is_dir() or target == Path(os.path.realpath(dest.path)) / CKPT_DIR:
        return
    if dest.ckpt_dir.is_symlink():
        dest.ckpt_dir.unlink()
    elif dest.ckpt_dir.is_dir():
        if any(dest.ckpt_dir.iterdir()):
            return  # dest's own files (an earlier attempt): left alone, nothing linked
        dest.ckpt_dir.rmdir()
    os.symlink(os.path.relpath(target, dest.path), dest.ckpt_dir)


def unlink_reused_ckpt(trial: TrialDir) -> bool:
    """Remove a reused trial's checkpoint link before the trial trains in its own directory
    (its result.json deleted to rerun it): the trainer would write into the other study's
    checkpoints. True when there was one."""
    if trial.ckpt_dir.is_symlink():
        trial.ckpt_dir.unlink()
        return True
    return False
