"""The main table's layout (papers' column groups, published rows, bold, n) and the ablation
rules, on trial records whose numbers are chosen here (no training: see test_make_tables for
the real sweep)."""

from __future__ import annotations

import json
import math
import re
import statistics

import pytest

from bilma.analysis.aggregate import build_table, load_published
from bilma.analysis.records import AnalysisError, TrialRecord
from bilma.analysis.tables import csv_text, latex, markdown

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid")


def record(variant, index, dataset, seed, r1, state="finished", point=None, split=None):
    metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 15, "mAP": r1 - 5, "mINP": r1 - 20}
    return TrialRecord(
        study="main",
        trial_id=f"{variant}-{dataset}-{seed}-{json.dumps(point)}",
        variant=variant,
        variant_base=variant,
        variant_index=index,
        # as grids/main.yaml zips them: dataset, its folder and its selection split
        grid_point=point
        or {
            "data.dataset": dataset,
            "data.root": f"datasets/{dataset}",
            "eval.select_split": split or ("test" if dataset == "icfg-pedes" else "val"),
        },
        seed=seed,
        dataset=dataset,
        state=state,
        metrics=metrics if state == "finished" else {},
        selection_split=split or ("test" if dataset == "icfg-pedes" else "val"),
        selection_metric="R1",
        started=float(seed),
    )


def main_records():
    out = []
    for seed in (0, 1, 2):
        for d, base in zip(DATASETS, (72.0, 60.0, 59.0), strict=True):
            # listed BiLMa first: the grid's order (variant_index) must still put IRRA first
            out.append(record("BiLMa", 1, d, seed, base + 2.0 + seed))
            out.append(record("IRRA", 0, d, seed, base + seed * 0.5))
    out.append(record("BiLMa", 1, "cuhk-pedes", 7, 0.0, state="failed"))
    return out


def test_main_table_papers_layout_with_published_rows():
    t = build_table("main", main_records())
    assert t.kind == "main" and t.datasets == list(DATASETS) and t.runs == 18
    md = markdown(t)
    header = next(ln for ln in md.splitlines() if ln.startswith("| method"))
    assert header == (
        "| method | CUHK-PEDES R1 | R5 | R10 | mAP | mINP | n | ICFG-PEDES R1 | R5 | R10 | mAP "
        "| mINP | n | RSTPReid R1 | R5 | R10 | mAP | mINP | n |"
    )
    body = [ln for ln in md.splitlines() if ln.startswith("| ") and ln != header]
    names = [ln.split(" | ")[0][2:] for ln in body]
    methods, _ = load_published()
    assert names == [f"{m['name']} †[{m['citation']}]" for m in methods] + ["IRRA", "BiLMa"]
    # Published numbers as in METHOD.md, "n/a" where a paper gives none.
    irra_pub = body[1].split(" | ")
    assert irra_pub[1:7] == ["73.38", "**89.93**", "**93.71**", "66.13", "50.24", "–"]
    bilma_pub = body[2].split(" | ")
    assert bilma_pub[5] == "n/a" and bilma_pub[7] == "**63.83**"  # best ICFG R1 of all
    # Ours: mean ± sample std over the 3 seeds, n per dataset; BiLMa CUHK R1 74, 75, 76.
    bilma = body[4].split(" | ")
    assert bilma[1] == f"**75.00 ± {statistics.stdev([74, 75, 76]):.2f}**"  # beats 74.03
    assert bilma[6] == "3"
    # The selection rule per dataset, the runs aggregated, the failed run listed, sources.
    assert "R1 on the val split (CUHK-PEDES, RSTPReid); R1 on the test split (ICFG-PEDES)" in md
    assert "Aggregates 18 finished runs" in md
    assert "- BiLMa seed=7, CUHK-PEDES (BiLMa-cuhk-pedes-7-null): failed" in md
    assert "[irra] Jiang & Ye" in md and "[bilma] Fujii & Tarashima" in md


def test_main_table_latex_groups_and_rows():
    tex = latex(build_table("main", main_records()))
    assert tex.count(r"\multicolumn{6}{c}") == 3
    assert r"\cmidrule(lr){2-7} \cmidrule(lr){8-13} \cmidrule(lr){14-19}" in tex
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", tex)
    assert [e for k, e in envs if k == "begin"] == ["table", "tabular"]
    assert [e for k, e in envs if k == "end"] == ["tabular", "table"]
    body = tex.split("\\bottomrule")[0].split("\\midrule\n", 1)[1]
    rows = [ln for ln in body.splitlines() if ln.endswith("\\\\")]
    assert len(rows) == 5 and all(r.count(" & ") == 18 for r in rows)
    assert rows[0].startswith("CLIP fine-tuned $^\\dagger$[irra]")


def test_ablation_baseline_is_the_grids_first_variant_and_few_seeds_warn():
    recs = [
        record("B", 1, "synth", s, 50.0 + d, point={"mim.mask_ratio": r})
        for s, d in ((1, 3.0), (2, 5.0))
        for r in (0.3, 0.5)
    ]
    recs += [
        record("A", 0, "synth", s, 50.0 + s, point={"mim.mask_ratio": r})
        for s in (1, 2, 3)
        for r in (0.3, 0.5)
    ]
    t = build_table("abl", recs, ["R1"])
    assert [(r.label, dict(r.point)["mim.mask_ratio"]) for r in t.rows] == [
        ("A", 0.3),
        ("A", 0.5),
        ("B", 0.3),
        ("B", 0.5),
    ]
    b = t.rows[2].cells[("synth", "R1")]
    assert b.delta == pytest.approx(54.0 - 52.0)  # difference of the means shown
    assert b.pairs == 2  # seeds 1 and 2 only
    # paired differences 2 and 3: t = 2.5 / (0.7071 / sqrt 2) = 5 with df 1 (Cauchy)
    assert b.p == pytest.approx(1 - 2 * math.atan(5) / math.pi)
    assert t.warnings == [
        "fewer than 3 seeds for: B [mask_ratio=0.3] (n=2); B [mask_ratio=0.5] (n=2)"
    ]
    rows = list(csv_text(t).splitlines())
    assert rows[0].startswith("study,table,source,row") and len(rows) == 5


def test_no_finished_run_is_an_error():
    recs = [
        record("A", 0, "synth", 1, 0.0, state="running"),
        record("A", 0, "synth", 2, 0, "failed"),
    ]
    with pytest.raises(
        AnalysisError, match=r"study 'main' has no finished run \(1 failed, 1 running\)"
    ):
        build_table("main", recs)


def test_main_grid_trials_make_the_main_table(tmp_path):
    """grids/main.yaml's trials, written as trial directories with their results: one row
    per method (the zipped dataset, folder and selection split are no grid point)."""
    from bilma.analysis.records import load_dirs
    from bilma.config import dump_yaml
    from bilma.runs.launch import write_launch
    from bilma.runs.trial_dir import TrialDir, make_result
    from bilma.sweep.expand import expand, load_grid

    trials = expand(load_grid("main"))
    assert len(trials) == 18
    for i, t in enumerate(trials):
        assert t.variant_base in ("IRRA", "BiLMa")
        assert t.axes["data.dataset"] == t.config.data.dataset
        trial = TrialDir(tmp_path / "main" / t.trial_id)
        trial.path.mkdir(parents=True)
        trial.config_path.write_text(dump_yaml(t.config))
        write_launch(trial.path, t.launch("main.yaml", None, {}))
        metrics = {m: 50.0 + i for m in ("R1", "R5", "R10", "mAP", "mINP")}
        split = t.config.eval.select_split
        selection = {"split": split, "metric": "R1", "epoch": 1, "value": 1.0}
        launch = trial.read_launch()
        trial.write_result(make_result(t.config, metrics, selection, None, 1, 1.0, launch=launch))
    table = build_table("main", load_dirs(tmp_path)["main"])
    assert table.kind == "main" and table.runs == 18
    assert [r.label for r in table.rows if not r.published] == ["IRRA", "BiLMa"]
    assert all(r.n == dict.fromkeys(DATASETS, 3) for r in table.rows if not r.published)
    assert "R1 on the val split (CUHK-PEDES, RSTPReid); R1 on the test split (ICFG-PEDES)" in (
        markdown(table)
    )


def test_baseline_option_and_lookalike_metrics():
    """--baseline picks the Δ/p reference; look-alike metrics show where runs have them, and
    twin_errors (lower is better) bolds its smallest mean."""
    recs = []
    for s in (1, 2, 3):
        for name, idx, r1, twins in (("SDM", 0, 40.0, 60.0), ("IRRA", 1, 45.0, 50.0)):
            rec = record(name, idx, "synth", s, r1 + s, point={})
            rec.metrics.update(lookalike_R1=r1 - 10 + s, twin_errors=twins + s)
            recs.append(rec)
        recs.append(record("BiLMa", 2, "synth", s, 47.0 + 2 * s, point={}))  # no look-alikes
    t = build_table("abl", recs, ["R1", "lookalike_R1", "twin_errors"], baseline="IRRA")
    rows = {r.label: r for r in t.rows}
    assert t.baseline == "IRRA" and rows["IRRA"].baseline and not rows["SDM"].baseline
    sdm, bilma = rows["SDM"].cells, rows["BiLMa"].cells
    assert sdm[("synth", "R1")].delta == pytest.approx(-5.0)
    assert bilma[("synth", "R1")].delta == pytest.approx((49 + 51 + 53) / 3 - 47.0)
    assert ("synth", "twin_errors") not in bilma  # BiLMa's runs have no look-alike metric
    assert sdm[("synth", "lookalike_R1")].mean == pytest.approx(32.0)
    assert rows["IRRA"].cells[("synth", "twin_errors")].bold  # 52 < 62: fewer twin errors
    assert not sdm[("synth", "twin_errors")].bold
    assert "twin_errors" in markdown(t)
    with pytest.raises(AnalysisError, match=r"--baseline 'BiLMA' is no variant of study 'abl'"):
        build_table("abl", recs, ["R1"], baseline="BiLMA")
