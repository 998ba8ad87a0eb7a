"""The trial ids of every shipped grid, pinned: a refactor that changes one would strand every
trial directory (and every queued job) of a study in progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bilma.sweep.expand import GRIDS_DIR, expand, load_grid

GOLDEN = Path(__file__).with_name("golden") / "trial_ids.json"


def grid_ids(name: str) -> list[list]:
    """[variant label, seed, trial id] of each trial of the shipped grid `name`, in order."""
    return [[t.variant, t.seed, t.trial_id] for t in expand(load_grid(name))]


@pytest.mark.parametrize("name", sorted(json.loads(GOLDEN.read_text())))
def test_shipped_grid_trial_ids_are_pinned(name):
    assert grid_ids(name) == json.loads(GOLDEN.read_text())[name]


def test_every_shipped_grid_is_pinned():
    assert sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")) == sorted(
        json.loads(GOLDEN.read_text())
    )
