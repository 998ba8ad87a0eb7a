"""Splits that cannot train or rank a model are refused before any work, naming the key."""

from __future__ import annotations

import json

import pytest
from support.data_fixtures import cuhk_entries
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.data import formats
from bilma.data.splits import SplitCount, counts_of, split_problems, synth_counts
from bilma.data.synth import generate


def synth_cfg(ids: int, *extra: str):
    return load_config(None, [f"data.synth_ids={ids}", "data.synth_images_per_id=2", *extra])


@pytest.mark.parametrize("ids", [3, 5, 9, 20, 31])
def test_synth_counts_are_what_generation_makes(tmp_path, ids):
    made = generate(tmp_path, ids=ids, images_per_id=2, seed=1, height=64, width=32)
    counts = synth_counts(synth_cfg(ids))
    assert {s: (c.ids, c.pairs) for s, c in counts.items()} == {
        s: (v["ids"], v["captions"]) for s, v in made["splits"].items()
    }
    records = formats.read_annotations("synth", tmp_path)
    assert counts_of(records) == counts


@pytest.mark.parametrize(
    "ids, expected",
    [
        (5, "the test split has 1 identity; ranking needs at least 2 (with one, R1 = mAP = 100"),
        (9, "splits are train/val/test = 7/1/1 identities; raise data.synth_ids to 20 or more"),
    ],
)
def test_a_one_identity_test_split_is_refused(ids, expected):
    cfg = synth_cfg(ids, "train.batch_size=4", "eval.select_split=test")
    problems = split_problems(synth_counts(cfg), cfg)
    assert len(problems) == 1 and problems[0].key == "data.synth_ids"
    assert expected in problems[0].line()
    assert problems[0].line().startswith(f"data.synth_ids = {ids}: ")


def test_twenty_synthetic_identities_are_enough():
    cfg = synth_cfg(20, "train.batch_size=32")
    assert split_problems(synth_counts(cfg), cfg) == []


def test_one_training_identity_and_a_batch_past_the_split():
    cfg = load_config(None, ["data.dataset=cuhk-pedes", "data.root=/d/cuhk", "train.batch_size=8"])
    counts = {
        "train": SplitCount(1, 6),
        "val": SplitCount(2, 4),
        "test": SplitCount(3, 6),
    }
    lines = [p.line() for p in split_problems(counts, cfg)]
    assert lines == [
        "data.root = /d/cuhk: the train split has 1 identity; training needs at least 2 (check "
        "the split labels of the cuhk-pedes annotation file)",
        "train.batch_size = 8: larger than the 6 training pairs of /d/cuhk; set "
        "train.batch_size to at most 6",
    ]
    # Under DDP each process draws its share of the pairs.
    counts["train"] = SplitCount(5, 12)
    lines = [p.line() for p in split_problems(counts, cfg, world=4)]
    assert lines == [
        "train.batch_size = 8: larger than the 3 training pairs per process of /d/cuhk; set "
        "train.batch_size to at most 3"
    ]


def test_a_one_identity_val_split_only_matters_when_it_selects():
    counts = {"train": SplitCount(5, 40), "val": SplitCount(1, 4), "test": SplitCount(3, 6)}
    on_val = load_config(None, ["data.dataset=cuhk-pedes", "train.batch_size=8"])
    assert "every epoch scores 100" in split_problems(counts, on_val)[0].message
    on_test = load_config(None, ["data.dataset=cuhk-pedes", "train.batch_size=8",
                                 "eval.select_split=test"])  # fmt: skip
    assert split_problems(counts, on_test) == []


def test_counts_of_the_cuhk_fixture(tmp_path):
    path = tmp_path / "reid_raw.json"
    path.write_text(json.dumps(cuhk_entries()))
    counts = counts_of(formats.read_annotations("cuhk-pedes", tmp_path))
    assert counts == {
        "train": SplitCount(3, 7),
        "val": SplitCount(2, 4),
        "test": SplitCount(3, 5),
    }


def test_bilma_train_refuses_a_one_identity_test_split_before_making_anything(tmp_path):
    from bilma.__main__ import main

    over = tiny_overrides(tmp_path / "synth", tmp_path / "runs", "data.synth_ids=9")
    assert main(["train", "--config", "/dev/null", *over]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no dataset generated, no trial
