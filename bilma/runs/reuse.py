"""Reusing a trial directory made elsewhere: what the trial id leaves out can differ.

data.root is not part of the trial id (the same experiment on any machine), so a trial run on
one data folder is found again when the config names another; its result and checkpoint come
from the recorded folder. The trainer and the launcher say so in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bilma.config import Config


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
