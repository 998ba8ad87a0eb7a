"""analysis/published.yaml: the papers' numbers with their sources (METHOD.md, "Published
numbers"), and which published row each variant of the paper's grids reproduces."""

from __future__ import annotations

import yaml

from bilma.analysis.aggregate import PUBLISHED_FILE, load_published

DATA = yaml.safe_load(PUBLISHED_FILE.read_text())
DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid")


def _r1(table: str) -> dict[str, tuple[float, ...]]:
    rows = DATA["tables"][table]["rows"]
    return {name: tuple(row[d]["R1"] for d in DATASETS if d in row) for name, row in rows.items()}


def test_bilma_table2_rows() -> None:
    """BiLMa's component ablation (its own runs), R1 on CUHK / ICFG / RSTP."""
    assert _r1("bilma-table2") == {
        "SDM+ID": (73.01, 63.09, 59.50),
        "+MLM": (73.16, 63.60, 59.05),
        "+SemMIM": (73.55, 63.08, 59.40),
        "+MLM+SemMIM": (74.03, 63.83, 61.20),
    }
    assert "Table 2" in DATA["tables"]["bilma-table2"]["what"]


def test_bilma_appendix_table5_rows() -> None:
    """The MIM targets on CUHK-PEDES at mask 0.15, beta = 1: R1 / mAP."""
    rows = DATA["tables"]["bilma-table5"]["rows"]
    assert {k: (v["cuhk-pedes"]["R1"], v["cuhk-pedes"]["mAP"]) for k, v in rows.items()} == {
        "no MIM (IRRA as published)": (73.38, 66.13),
        "pixel": (72.86, 65.61),
        "patch-mean RGB": (73.07, 66.01),
        "feature (KL)": (73.52, 66.20),
        "SemMIM": (74.03, 66.57),
    }
    what = DATA["tables"]["bilma-table5"]["what"]
    assert "Appendix Table 5" in what and "0.15" in what and "beta = 1" in what


def test_modern_anchors_and_every_source_named() -> None:
    methods, sources = load_published()
    by_name = {m["name"]: m for m in methods}
    assert by_name["RDE"]["results"] == {"cuhk-pedes": {"R1": 75.94, "mAP": 67.56}}
    assert by_name["ITSELF"]["results"] == {"cuhk-pedes": {"R1": 76.95, "mAP": 69.38}}
    assert "CVPR 2024" in sources["rde"] and "WACV 2026" in sources["itself"]
    assert "arXiv 2309.04675" in sources["bilma"]
    cited = [m["citation"] for m in methods] + [t["citation"] for t in DATA["tables"].values()]
    assert set(cited) <= set(sources)
    # Not in our sources, so not invented: CLIP fine-tuned has only R1 and mAP off CUHK-PEDES.
    clip = by_name["CLIP fine-tuned"]["results"]
    assert set(clip["icfg-pedes"]) == set(clip["rstpreid"]) == {"R1", "mAP"}
