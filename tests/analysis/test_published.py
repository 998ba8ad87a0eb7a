"""analysis/published.yaml: the papers' numbers with their sources (METHOD.md, "Published
numbers"), and which published row each variant of the paper's grids reproduces."""

from __future__ import annotations

import csv
import io

import pytest
import yaml
from support.analysis import columns, record, tabulars

from bilma.analysis.aggregate import PUBLISHED_FILE, build_table, load_published, paper_rows
from bilma.analysis.records import AnalysisError
from bilma.analysis.tables import csv_text, latex, markdown
from bilma.sweep.gridfile import load_grid

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


# ----------------------------------------------------------------------------- paper vs ours

TABLE2 = ["SDM+ID", "+MLM", "+SemMIM", "+MLM+SemMIM (BiLMa)"]
# Our mean R1 per variant on CUHK / ICFG / RSTP (seeds 0, 1, 2 at mean - 1, mean, mean + 1).
OURS = {
    "SDM+ID": (73.0, 63.0, 60.0),
    "+MLM": (73.5, 63.0, 59.0),
    "+SemMIM": (74.0, 62.5, None),  # no run on RSTPReid: "n/a" beside the paper's 59.40
    "+MLM+SemMIM (BiLMa)": (75.0, 64.0, 62.0),
}


def table2_records() -> list:
    out = []
    for i, variant in enumerate(TABLE2):
        for d, r1 in zip(DATASETS, OURS[variant], strict=True):
            if r1 is not None:
                out += [
                    record(variant, i, d, s, r1 + s - 1, study="bilma_table2") for s in (0, 1, 2)
                ]
    return out


def test_table2_prints_the_papers_row_beside_ours() -> None:
    t = build_table("bilma_table2", table2_records())
    md = markdown(t)
    body = md.split("#### bilma_table2: the paper's rows beside ours\n\n", 1)[1]
    lines = body.split("\n\n", 1)[0].splitlines()
    assert lines[0] == "| variant | paper row | dataset | metric | paper | ours | ours - paper |"
    rows = [ln.removeprefix("| ").removesuffix(" |").split(" | ") for ln in lines[2:]]
    got = {(r[0], r[2]): (r[1], r[3], r[4], r[5], r[6]) for r in rows}
    assert len(rows) == 12  # 4 variants x 3 datasets, R1 only (Table 2 gives no other metric)
    assert got[("SDM+ID", "CUHK-PEDES")] == (
        "Table 2: SDM+ID †[bilma]",
        "R1",
        "73.01",
        "73.00 ± 1.00 (n=3)",
        "-0.01",
    )
    diffs = {k: v[4] for k, v in got.items()}
    assert diffs == {
        ("SDM+ID", "CUHK-PEDES"): "-0.01",
        ("SDM+ID", "ICFG-PEDES"): "-0.09",
        ("SDM+ID", "RSTPReid"): "+0.50",
        ("+MLM", "CUHK-PEDES"): "+0.34",
        ("+MLM", "ICFG-PEDES"): "-0.60",
        ("+MLM", "RSTPReid"): "-0.05",
        ("+SemMIM", "CUHK-PEDES"): "+0.45",
        ("+SemMIM", "ICFG-PEDES"): "-0.58",
        ("+SemMIM", "RSTPReid"): "n/a",
        ("+MLM+SemMIM (BiLMa)", "CUHK-PEDES"): "+0.97",
        ("+MLM+SemMIM (BiLMa)", "ICFG-PEDES"): "+0.17",
        ("+MLM+SemMIM (BiLMa)", "RSTPReid"): "+0.80",
    }
    assert got[("+SemMIM", "RSTPReid")][2:4] == ("59.40", "n/a")
    assert "ours - paper: the difference of the means, untested" in md
    assert "Table 2" in md and "[bilma] Fujii & Tarashima" in md


def test_table2_paper_rows_in_latex_and_csv() -> None:
    t = build_table("bilma_table2", table2_records())
    parts = tabulars(latex(t))
    paper = parts[-1]
    assert columns(paper) == 7 and "paper & ours & ours - paper" in paper
    assert r"SDM+ID & Table 2: SDM+ID $^\dagger$[bilma] & CUHK-PEDES & R1 & 73.01 & " in paper
    assert r"75.00 $\pm$ 1.00 (n=3) & +0.97 \\" in paper
    assert r"\label{tab:bilma\_table2-paper}" in latex(t)
    lines = list(csv.DictReader(io.StringIO(csv_text(t))))
    mine = [ln for ln in lines if ln["table"] == "paper"]
    assert len(mine) == 12 and {ln["source"] for ln in mine} == {"published"}
    both = next(
        ln
        for ln in mine
        if ln["variant_base"] == "+MLM+SemMIM (BiLMa)" and ln["dataset"] == "rstpreid"
    )
    assert float(both["mean"]) == 61.20 and float(both["delta"]) == pytest.approx(0.80)
    assert both["row"] == "bilma-table2: +MLM+SemMIM" and both["citation"] == "bilma"


def test_mask_beta_pairs_only_the_papers_setting() -> None:
    """Appendix Table 5's SemMIM row (mask 0.15, beta 1) sits beside that grid point only,
    with R1 and mAP; beta written 1 matches the paper's 1.0."""
    recs = [
        record(
            "BiLMa (SemMIM LIP-20)",
            0,
            "cuhk-pedes",
            0,
            r1,
            point={"mim.mask_ratio": m, "loss.mim_weight": b},
            study="bilma_mask_beta",
        )
        for m, b, r1 in ((0.15, 1, 74.5), (0.3, 1, 73.0), (0.15, 2.0, 72.0))
    ]
    t = build_table("bilma_mask_beta", recs)
    assert [(p.ours.point, p.metric, p.value, p.diff) for p in t.paper] == [
        ((("mim.mask_ratio", 0.15), ("loss.mim_weight", 1)), "R1", 74.03, pytest.approx(0.47)),
        ((("mim.mask_ratio", 0.15), ("loss.mim_weight", 1)), "mAP", 66.57, pytest.approx(2.93)),
    ]
    md = markdown(t)
    assert (
        "| BiLMa (SemMIM LIP-20) | Appendix Table 5: SemMIM †[bilma] | CUHK-PEDES | mAP | 66.57 | 69.50 | +2.93 |"
        in md.replace(" (n=1)", "")
    )


def test_every_reproduction_names_a_variant_of_its_grid() -> None:
    """Renaming a variant of a paper's grid without its published.yaml entry fails here."""
    for study in DATA["reproductions"]:
        rows = paper_rows(study)
        assert rows and set(rows) <= set(load_grid(study).variants), study
        grid = load_grid(study)
        for paper in rows.values():
            assert set(paper.at) <= set(grid.grid), (study, paper.at)


def test_a_reproduction_of_a_missing_row_is_one_line(tmp_path) -> None:
    bad = dict(DATA, reproductions={"s": {"v": {"table": "bilma-table2", "row": "+MIM"}}})
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(AnalysisError) as e:
        paper_rows("s", path)
    assert str(e.value) == (
        f"{path}: reproductions.s.v: row '+MIM' is not a row of table 'bilma-table2' "
        "(SDM+ID, +MLM, +SemMIM, +MLM+SemMIM); name one of them"
    )
