"""Look-alike groups: identities that differ in one local attribute, named in the captions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from support.synth_captions import names as _names

from bilma.config import ConfigError, load_config
from bilma.data import synth
from bilma.data.records import DataError
from bilma.data.synth import (
    LOCAL_ATTRIBUTES,
    SYNTH_MARKER,
    describe,
    generate,
    sample_lookalike_identities,
    tokenize,
)


def _differences(a, b) -> set[str]:
    da, db = describe(a), describe(b)
    return {k for k in set(da) | set(db) if da.get(k) != db.get(k)}


@pytest.mark.parametrize("k,share", [(2, 0.5), (3, 0.5), (4, 1.0)])
def test_group_members_differ_in_exactly_one_local_attribute(k: int, share: float) -> None:
    blocks = [160, 20, 20]
    idents, groups = sample_lookalike_identities(blocks, seed=4, k=k, share=share)
    assert len(idents) == sum(blocks)
    assert len({i.key() for i in idents}) == len(idents)  # every identity distinct
    assert len(groups) == sum(int(b * share) // k for b in blocks)
    bounds = list(itertools.accumulate(blocks))
    grouped = set()
    for g in groups:
        assert len(g.indices) == k and g.attribute in LOCAL_ATTRIBUTES
        block = {sum(i >= b for b in bounds) for i in g.indices}
        assert len(block) == 1  # a group never straddles two splits
        for a, b in itertools.combinations(g.indices, 2):
            assert _differences(idents[a], idents[b]) == {g.attribute}
            assert idents[a].skin == idents[b].skin  # the undescribed part is shared too
        grouped.update(g.indices)
    assert {g.attribute for g in groups} == set(LOCAL_ATTRIBUTES)  # 32 to 50 groups: all four
    assert len(grouped) == k * len(groups)


def test_pools_are_disjoint_halves() -> None:
    from bilma.data.synth import in_pool, sample_identities

    a = sample_identities(300, seed=1, pool="pretrain")
    b, groups = sample_lookalike_identities([200, 50, 50], seed=1, k=3, share=0.5, pool="finetune")
    assert all(in_pool(i, "pretrain") and not in_pool(i, "finetune") for i in a)
    assert all(in_pool(i, "finetune") for i in b) and len(groups) == 33 + 8 + 8
    everyone = sample_identities(300, seed=1)
    assert sample_identities(300, seed=1, pool="all") == everyone  # the default draw
    share = sum(in_pool(i, "pretrain") for i in everyone) / len(everyone)
    assert 0.4 < share < 0.6  # about half of all people in each pool
    with pytest.raises(ValueError, match="unknown identity pool"):
        in_pool(everyone[0], "other")


def test_bad_group_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="look-alike groups of 1"):
        sample_lookalike_identities([10], seed=0, k=1, share=0.5)
    with pytest.raises(ConfigError, match="synth_lookalike"):
        load_config(None, ["data.synth_lookalike=1"])


def test_generated_groups_are_listed_and_named_in_the_captions(tmp_path: Path) -> None:
    out = tmp_path / "la"
    generate(
        out,
        ids=20,
        images_per_id=2,
        seed=2,
        height=64,
        width=32,
        lookalike=2,
        lookalike_share=1.0,
        progress=False,
    )
    meta = json.loads((out / SYNTH_MARKER).read_text())
    assert meta["lookalike"] == 2 and meta["lookalike_share"] == 1.0
    groups = meta["lookalike_groups"]
    # 16 train, 2 val, 2 test identities, all in pairs: 8, 1 and 1 groups.
    assert [g["split"] for g in groups] == ["train"] * 8 + ["val", "test"]
    entries = json.loads((out / "reid_raw.json").read_text())
    by_id: dict[int, list[dict]] = {}
    for e in entries:
        by_id.setdefault(e["id"], []).append(e)
    idents, _ = sample_lookalike_identities([16, 2, 2], seed=2, k=2, share=1.0)
    for g in groups:
        a, b = (idents[i - 1] for i in g["ids"])
        assert _differences(a, b) == {g["attribute"]}
        assert {e["split"] for i in g["ids"] for e in by_id[i]} == {g["split"]}
        for ident_id, ident in zip(g["ids"], (a, b), strict=True):
            mention = describe(ident)[g["attribute"]]
            for e in by_id[ident_id]:
                for caption in e["captions"]:
                    assert _names(tokenize(caption), mention), (g, caption)


def test_a_dataset_without_groups_is_refused_for_a_lookalike_config(tmp_path: Path) -> None:
    from bilma.data.datasets import ensure_synthetic

    base = [f"data.root={tmp_path}", "data.synth_ids=6", "data.synth_images_per_id=1"]
    base += ["data.image_size=[64,32]"]
    ensure_synthetic(load_config(None, base).data)
    assert "lookalike" not in json.loads((tmp_path / SYNTH_MARKER).read_text())
    with pytest.raises(DataError, match="lookalike 0 \\(config: 2\\)"):
        ensure_synthetic(load_config(None, [*base, "data.synth_lookalike=2"]).data)
    assert synth.is_complete(tmp_path)


def test_the_study_s_keys_are_checked_and_a_world_of_another_scale_is_refused(tmp_path):
    from bilma.data.synth_cache import synth_mismatch

    with pytest.raises(ConfigError, match=r"data.synth_eval_ids = 20 leaves no training"):
        load_config(None, ["data.synth_ids=40", "data.synth_eval_ids=20"])
    with pytest.raises(
        ConfigError, match=r"loss.attribute_weight needs .* set it to 0 for cuhk-pedes"
    ):
        load_config(None, ["data.dataset=cuhk-pedes", "loss.attribute_weight=1"])
    generate(tmp_path, ids=12, images_per_id=1, height=64, width=32, progress=False)
    base = [f"data.root={tmp_path}", "data.synth_ids=12", "data.synth_images_per_id=1",
            "data.image_size=[64,32]"]  # fmt: skip
    assert synth_mismatch(load_config(None, base).data) is None
    other = load_config(None, [*base, "data.synth_local_scale=2.5", "data.synth_full_chroma=true"])
    problem = synth_mismatch(other.data)
    assert "local_scale 1.0 (config: 2.5)" in problem and "chroma 4:2:0 (config: 4:4:4)" in problem
