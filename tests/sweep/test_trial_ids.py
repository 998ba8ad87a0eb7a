"""The trial ids of every shipped grid, pinned: a refactor that changes one would strand every
trial directory (and every queued job) of a study in progress.

A change that is meant to change them (a preset that follows a paper, a new grid): check the
difference, then regenerate and name the grids whose ids changed in the commit message:

    BILMA_REGEN_GOLDEN=1 PYTHONPATH=$PWD .venv/bin/python -m pytest -q tests/sweep/test_trial_ids.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bilma.fileio import atomic_write_text
from bilma.sweep.expand import GRIDS_DIR, expand, load_grid

GOLDEN = Path(__file__).with_name("golden") / "trial_ids.json"


def grid_ids(name: str) -> list[list]:
    """[variant label, seed, trial id] of each trial of the shipped grid `name`, in order."""
    return [[t.variant, t.seed, t.trial_id] for t in expand(load_grid(name))]


if os.environ.get("BILMA_REGEN_GOLDEN"):  # rewrite the pins before the tests read them
    atomic_write_text(
        GOLDEN,
        json.dumps({p.stem: grid_ids(p.stem) for p in sorted(GRIDS_DIR.glob("*.yaml"))}, indent=1)
        + "\n",
    )


@pytest.mark.parametrize("name", sorted(json.loads(GOLDEN.read_text())))
def test_shipped_grid_trial_ids_are_pinned(name):
    assert grid_ids(name) == json.loads(GOLDEN.read_text())[name]


def test_every_shipped_grid_is_pinned():
    assert sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")) == sorted(
        json.loads(GOLDEN.read_text())
    )


def test_a_key_added_later_changes_no_existing_id():
    """mim.feature_temperature came after studies existed (hash="nondefault"): at its default
    it leaves every id as it was; any other value is another experiment."""
    from bilma.config import canonical, load_config, trial_id

    base = load_config(None, ["mim.target=feature"])
    assert "mim.feature_temperature" not in canonical(base)
    warmer = load_config(None, ["mim.target=feature", "mim.feature_temperature=2.0"])
    assert trial_id(warmer) != trial_id(base)
    assert '"mim.feature_temperature":2.0' in canonical(warmer)
