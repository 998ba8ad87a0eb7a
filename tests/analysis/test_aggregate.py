"""Aggregation never drops a run silently: trial directories written by hand (no training)."""

from __future__ import annotations

from support.analysis import trial_on_disk

from bilma.analysis import aggregate, tables
from bilma.analysis.records import load_dirs


def _rows(table) -> dict[str, tuple[int, float]]:
    return {r.label: (r.n["synth"], r.cells[("synth", "R1")].mean) for r in table.rows}


def test_two_grids_with_one_study_name_are_two_rows(tmp_path) -> None:
    """Grid a and grid b both name study 'clash' and a variant IRRA, with different ID-loss
    weights: the same (study, variant, seed) claimed by two configurations."""
    runs = tmp_path / "runs"
    for seed in (1, 2):
        trial_on_disk(runs, "clash", "IRRA", seed, 40.0 + seed, grid="a", **{"loss.id_weight": 1.0})
        trial_on_disk(runs, "clash", "IRRA", seed, 60.0 + seed, grid="b", **{"loss.id_weight": 0.5})
    table = aggregate.build_table("clash", load_dirs(runs)["clash"])
    assert table.runs == 4
    assert _rows(table) == {
        "IRRA (loss.id_weight=1.0)": (2, 41.5),
        "IRRA (loss.id_weight=0.5)": (2, 61.5),
    }
    (note,) = [w for w in table.warnings if "configurations" in w]
    assert "IRRA" in note and "loss.id_weight" in note and "seeds 1, 2" in note
    md = tables.markdown(table)
    assert "IRRA (loss.id_weight=0.5)" in md and "loss.id_weight" in md.split("Warning:")[1]


def test_a_grid_value_changed_between_launches_is_two_rows(tmp_path) -> None:
    """The same grid point launched with train.epochs 2, then (the grid edited) with 3 for
    seed 1 only: seed 2 of the old configuration is no clash, but its row is the old one."""
    runs = tmp_path / "runs"
    point = {"loss.id_weight": 1.0}
    old = [
        trial_on_disk(runs, "edit", "BiLMa", s, 50.0 + s, point=point, **{"train.epochs": 2})
        for s in (1, 2)
    ]
    new = trial_on_disk(runs, "edit", "BiLMa", 1, 70.0, point=point, **{"train.epochs": 3})
    assert new.trial_id != old[0].trial_id
    table = aggregate.build_table("edit", load_dirs(runs)["edit"])
    assert table.runs == 3 and not table.excluded
    assert _rows(table) == {
        "BiLMa (train.epochs=2)": (2, 51.5),
        "BiLMa (train.epochs=3)": (1, 70.0),
    }
    (note,) = [w for w in table.warnings if "configurations" in w]
    assert "seeds 1" in note and old[0].trial_id in note and new.trial_id in note


def test_one_configuration_per_seed_is_one_row(tmp_path) -> None:
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        trial_on_disk(runs, "plain", "IRRA", seed, 40.0 + seed)
    table = aggregate.build_table("plain", load_dirs(runs)["plain"])
    assert _rows(table) == {"IRRA": (3, 42.0)} and table.warnings == []
