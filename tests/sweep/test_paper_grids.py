"""The BiLMa paper's grids: its Table 2 on three datasets, and its mask rate x beta search."""

from __future__ import annotations

import re

from bilma.sweep.cli import main as launch
from bilma.sweep.expand import expand, load_grid

DATASETS = ["cuhk-pedes", "icfg-pedes", "rstpreid"]


def test_bilma_table2_is_four_variants_on_three_datasets_with_three_seeds() -> None:
    trials = expand(load_grid("bilma_table2"))
    assert len(trials) == 36 and len({t.trial_id for t in trials}) == 36
    variants = list(dict.fromkeys(t.variant.split(" [")[0] for t in trials))
    assert variants == ["SDM+ID", "+MLM", "+SemMIM", "+MLM+SemMIM (BiLMa)"]
    # (mlm weight, mim weight) per variant, in Table 2's order: each branch on or off
    first = [t.config for t in trials[::9]]
    assert [(c.loss.mlm_weight, c.loss.mim_weight) for c in first] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
    ]
    for t in trials:
        c = t.config
        assert (c.mim.cross_module, c.mim.mask_ratio, c.mim.target) == ("shared", 0.15, "semantic")
    assert [t.config.data.dataset for t in trials[:9:3]] == DATASETS
    assert sorted(t.seed for t in trials[:3]) == [0, 1, 2]
    icfg = [t.config for t in trials if t.config.data.dataset == "icfg-pedes"]
    assert {c.eval.select_split for c in icfg} == {"test"}  # ICFG-PEDES has no val split


def test_bilma_mask_beta_crosses_three_rates_with_three_weights_per_dataset() -> None:
    trials = expand(load_grid("bilma_mask_beta"))
    assert len(trials) == 27 and len({t.trial_id for t in trials}) == 27
    points = {
        (t.config.data.dataset, t.config.mim.mask_ratio, t.config.loss.mim_weight) for t in trials
    }
    assert points == {
        (d, m, b) for d in DATASETS for m in (0.15, 0.3, 0.5) for b in (0.5, 1.0, 2.0)
    }
    assert {t.seed for t in trials} == {0}
    assert {t.config.mim.cross_module for t in trials} == {"shared"}


def test_paper_grids_dry_run(tmp_path, monkeypatch, capsys) -> None:
    """`python sweeps/launch.py --grid bilma_table2 --dry-run --no-preflight` plans 36
    trials (and bilma_mask_beta 27) without data, weights or a GPU, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    for grid, n in (("bilma_table2", 36), ("bilma_mask_beta", 27), ("bilma_mim_targets", 15)):
        assert launch(["--grid", grid, "--dry-run", "--no-preflight"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"\b{n} to start\b", out), out[-300:]
        # the GPU-hours and checkpoint disk, from the recorded figures (no data here)
        assert re.search(r"^estimate: \d+ vitb16 \+MIM trials x ~[\d.]+ GPU-h = ", out, re.M)
    assert list(tmp_path.iterdir()) == []


def test_bilma_mim_targets_is_table_5_on_cuhk_pedes_with_three_seeds() -> None:
    trials = expand(load_grid("bilma_mim_targets"))
    assert len(trials) == 15 and len({t.trial_id for t in trials}) == 15
    kinds = [(t.config.mim.target, t.config.loss.mim_weight) for t in trials[::3]]
    assert kinds == [("semantic", 0), ("pixel", 1), ("mean_rgb", 1), ("feature", 1),
                     ("semantic", 1)]  # fmt: skip
    for c in (t.config for t in trials):
        assert (c.data.dataset, c.mim.mask_ratio, c.mim.cross_module) == (
            "cuhk-pedes",
            0.15,
            "shared",
        )
        assert c.loss.mlm_weight == 1.0
