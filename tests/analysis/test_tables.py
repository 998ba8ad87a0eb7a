"""The main table's layout (papers' column groups, published rows, bold, n), the ablation
rules, what bold means (a paired test against the baseline over >= 3 seeds), the chance
level and LaTeX that fits a column, on trial records whose numbers are chosen here (no
training: see test_make_tables for the real sweep)."""

from __future__ import annotations

import re
import statistics

import pytest
from support.analysis import columns, record, tabulars

from bilma.analysis.aggregate import build_table, load_published
from bilma.analysis.records import ALL_METRICS, AnalysisError
from bilma.analysis.tables import TEX_MAX_COLUMNS, csv_text, latex, markdown

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid")


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
    # Published numbers as in METHOD.md, "n/a" where a paper gives none; never bold (no
    # seeds to pair), though 89.93 and 63.83 are the best of their columns.
    irra_pub = body[1].split(" | ")
    assert irra_pub[1:7] == ["73.38", "89.93", "93.71", "66.13", "50.24", "–"]
    bilma_pub = body[2].split(" | ")
    assert bilma_pub[5] == "n/a" and bilma_pub[7] == "63.83"
    assert "**" not in "".join(body[:-2])
    # The modern anchors (RDE, ITSELF) give CUHK-PEDES R1 and mAP only.
    assert [ln.split(" | ")[1:7] for ln in body[3:5]] == [
        ["75.94", "n/a", "n/a", "67.56", "n/a", "–"],
        ["76.95", "n/a", "n/a", "69.38", "n/a", "–"],
    ]
    # Ours: mean ± sample std over the 3 seeds, n per dataset; BiLMa CUHK R1 74, 75, 76 against
    # IRRA's 72, 72.5, 73: paired differences 2, 2.5, 3, p = 0.0131 (scipy) -> bold.
    irra, bilma = body[-2].split(" | "), body[-1].split(" | ")
    assert bilma[1] == f"**75.00 ± {statistics.stdev([74, 75, 76]):.2f}**"
    assert irra[1] == "72.50 ± 0.50"  # the baseline itself is never bold
    assert bilma[6] == "3"
    cell = t.rows[-1].cells[("cuhk-pedes", "R1")]
    assert cell.pairs == 3 and cell.p == pytest.approx(0.013072457560346515, rel=1e-9)
    assert (
        'Bold: differs from "IRRA" with paired p < 0.05 over >= 3 seeds (on the same dataset); '
        "published† numbers have no seeds to pair and are never bold." in md
    )
    assert "Chance" not in md  # these trials recorded no chance level
    # The selection rule per dataset, the runs aggregated, the failed run listed, sources.
    assert "R1 on the val split (CUHK-PEDES, RSTPReid); R1 on the test split (ICFG-PEDES)" in md
    assert "Aggregates 18 finished runs" in md
    assert "- BiLMa seed=7, CUHK-PEDES (BiLMa-cuhk-pedes-7-null): failed" in md
    assert "[irra] Jiang & Ye" in md and "[bilma] Fujii & Tarashima" in md
    assert "[rde] RDE, CVPR 2024" in md and "[itself] ITSELF, WACV 2026" in md
    assert "paper row" not in md  # the study "main" reproduces no paper's rows one by one


def test_main_table_latex_groups_and_rows():
    """R1/R5/R10 on one dataset per tabular (method, 3 metrics, n); mAP/mINP on two."""
    tex = latex(build_table("main", main_records()))
    parts = tabulars(tex)
    assert [columns(p) for p in parts] == [5, 5, 5, 7, 4]
    assert tex.count("\\begin{table}") == 5 and tex.count("\\caption{") == 5
    labels = re.findall(r"\\label\{(.*?)\}", tex)
    assert labels == [f"tab:main-{i}" for i in range(1, 6)]
    assert "\\caption{main: CUHK-PEDES, ICFG-PEDES, RSTPReid (R1, R5, R10 on CUHK-PEDES)." in tex
    assert parts[0].count(r"\multicolumn{4}{c}{CUHK-PEDES}") == 1
    assert r"\multicolumn{3}{c}{CUHK-PEDES} & \multicolumn{3}{c}{ICFG-PEDES}" in parts[3]
    assert r"\cmidrule(lr){2-4} \cmidrule(lr){5-7}" in parts[3]
    body = parts[0].split("\\bottomrule")[0].split("\\midrule\n", 1)[1]
    rows = [ln for ln in body.splitlines() if ln.endswith("\\\\")]
    assert len(rows) == 7 and all(r.count(" & ") == 4 for r in rows)  # 5 published, 2 ours
    assert rows[0].startswith("CLIP fine-tuned $^\\dagger$[irra]")
    assert rows[-1].startswith("BiLMa & \\textbf{75.00 $\\pm$ 1.00}")


def all_metric_records(datasets, point):
    out = []
    for seed in (1, 2, 3):
        for d in datasets:
            for name, idx in (("IRRA", 0), ("BiLMa", 1)):
                rec = record(name, idx, d, seed, 50.0 + seed + idx, point=point)
                rec.metrics.update({m: 10.0 + seed for m in ALL_METRICS[5:]})
                out.append(rec)
    return out


def test_every_tabular_fits_a_column_with_all_metrics():
    """Every metric, main and ablation layouts (two swept axes; and five, which go into the
    row label): no tabular wider than TEX_MAX_COLUMNS, each metric shown exactly once."""
    tex = latex(build_table("main", all_metric_records(DATASETS, None), list(ALL_METRICS)))
    shown = []
    for part in tabulars(tex):
        assert columns(part) <= TEX_MAX_COLUMNS == 7
        names = re.findall(r"\\multicolumn\{\d+\}\{c\}\{(.*?)\}", part)
        sub = part.split("\\cmidrule", 1)[1].splitlines()[1].removesuffix(" \\\\")
        cells = sub.split(" & ")[1:]
        per = len(cells) // len(names)
        for i, name in enumerate(names):
            assert cells[i * per + per - 1] == "n"
            shown += [(name, m) for m in cells[i * per : i * per + per - 1]]
    want = [(d, tex_name(m)) for d in ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid") for m in ALL_METRICS]
    assert sorted(shown) == sorted(want)
    for axes in (("mim.mask_ratio", "loss.id_weight"), ("a", "b", "c", "d", "e")):
        recs = all_metric_records(("synth",), dict.fromkeys(axes, 1))
        parts = tabulars(latex(build_table("abl", recs, list(ALL_METRICS))))
        assert max(columns(p) for p in parts) <= TEX_MAX_COLUMNS
        headers = [p.split("\\toprule\n", 1)[1].splitlines()[0] for p in parts]
        metrics = [
            h.removesuffix(" \\\\").split(" & ")[2 + (len(axes) < 5) * len(axes) :] for h in headers
        ]
        assert [m for ms in metrics for m in ms[::2]] == [tex_name(m) for m in ALL_METRICS]
        assert all(ms[1::2] == [f"$\\Delta${m}" for m in ms[::2]] for ms in metrics)
        cells = "".join(parts)
        if len(axes) == 5:  # no room for the axes as columns: they are in the row label
            assert "\nBiLMa [a=1, b=1, c=1, d=1, e=1] & 3 & " in cells
        else:
            assert "\nBiLMa & 1 & 1 & 3 & " in cells


def tex_name(metric: str) -> str:
    return metric.replace("_", "\\_")


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
    # Paired differences 2 and 3 would give t = 5 with df 1, p = 0.126 (Cauchy): with two
    # seeds no p is reported, and nothing is bold.
    assert b.p is None and not any(c.bold for r in t.rows for c in r.cells.values())
    md = markdown(t)
    assert "| B | 0.3 | 2 | 54.00 ± 1.41 | +2.00 |" in md and "p=" not in md
    assert "p-values need >= 3 paired seeds; this table has n = 2." in md
    assert t.warnings == [
        "fewer than 3 seeds for: B [mask_ratio=0.3] (n=2); B [mask_ratio=0.5] (n=2)"
    ]
    rows = list(csv_text(t).splitlines())
    assert rows[0].startswith("study,table,source,row") and len(rows) == 5
    assert rows[3].endswith(",2.0,,2,,,")  # Δ 2.0, no p, 2 pairs, no chance level recorded


def test_bold_only_where_a_paired_test_over_three_seeds_clears():
    """Against A (50, 52, 49 on seeds 1-3): B differs by 4, 6, 5 (p = 0.0131, scipy's
    ttest_rel) -> bold with its p; C by 0.5, -1, 0.8 (p = 0.874) -> plain; D by 5.0 and 5.01
    on two seeds only (df 1 would say p = 0.0006) -> no p, not bold."""
    runs = {
        "A": {1: 50.0, 2: 52.0, 3: 49.0},
        "B": {1: 54.0, 2: 58.0, 3: 54.0},
        "C": {1: 50.5, 2: 51.0, 3: 49.8},
        "D": {1: 55.0, 2: 57.01},
    }
    recs = [
        record(name, i, "synth", seed, r1, point={})
        for i, (name, by_seed) in enumerate(runs.items())
        for seed, r1 in by_seed.items()
    ]
    t = build_table("abl", recs, ["R1"])
    cells = {r.label: r.cells[("synth", "R1")] for r in t.rows}
    assert cells["B"].p == pytest.approx(0.013072457560346515, rel=1e-9) and cells["B"].bold
    assert cells["C"].p == pytest.approx(0.8740118423302586, rel=1e-9) and not cells["C"].bold
    assert cells["D"].p is None and cells["D"].pairs == 2 and not cells["D"].bold
    assert not cells["A"].bold  # the baseline
    md = markdown(t)
    assert "| A | 3 | 50.33 ± 1.53 | baseline |" in md
    assert "| B | 3 | **55.33 ± 2.31** | +5.00 (p=0.013) |" in md
    assert "| C | 3 | 50.43 ± 0.60 | +0.10 (p=0.874) |" in md
    assert "| D | 2 | 56.00 ± 1.42 | +5.67 |" in md  # Δ: of the means, as everywhere
    assert 'Bold: differs from "A" with paired p < 0.05 over >= 3 seeds.' in md
    assert "p-values need >= 3 paired seeds; none for cells with n = 2." in md
    tex = latex(t)
    assert "B & 3 & \\textbf{55.33 $\\pm$ 2.31} & +5.00 (p=0.013) \\\\" in tex
    assert "\\textbf" not in tex.replace("\\textbf{55.33", "")
    assert 'differs from "A" with paired p $<$ 0.05 over $\\geq$ 3 seeds' in tex


def test_chance_level_in_the_notes():
    """chance_R1 as the trials recorded it: one value, per dataset when they differ, nothing
    when no trial recorded one (runs from before it was recorded)."""
    recs = [record("A", 0, "synth", s, 50.0 + s, point={}) for s in (1, 2, 3)]
    for r in recs:
        r.chance_r1 = 100 / 3
    t = build_table("abl", recs, ["R1"])
    md = markdown(t)
    assert "Chance R1: 33.33 (100 / identities in the test gallery)." in md
    assert csv_text(t).splitlines()[1].endswith(f",{100 / 3!r}")
    assert "Chance R1: 33.33 (100 / identities in the test gallery)." in latex(t)

    main = main_records()
    for r in main:
        r.chance_r1 = {"cuhk-pedes": 0.1, "icfg-pedes": 0.1, "rstpreid": 0.5}[r.dataset]
    md = markdown(build_table("main", main))
    assert (
        "Chance R1 (100 / identities in the test gallery): 0.10 (CUHK-PEDES), 0.10 (ICFG-PEDES), "
        "0.50 (RSTPReid)." in md
    )
    for r in main:
        r.chance_r1 = 0.1 if r.dataset == "cuhk-pedes" else None  # the others: older runs
    assert "Chance R1 (100 / identities in the test gallery): 0.10 (CUHK-PEDES)." in markdown(
        build_table("main", main)
    )


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
    """--baseline picks the Δ/p reference; look-alike metrics show where runs have them;
    bold is a difference to the baseline (also for twin_errors, where less is better), never
    the best mean."""
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
    # SDM's twin errors are 10 above IRRA's on every seed (p = 0: identical differences);
    # IRRA has the fewest, but it is the baseline, which is never bold.
    assert sdm[("synth", "twin_errors")].bold and sdm[("synth", "twin_errors")].p == 0.0
    assert not rows["IRRA"].cells[("synth", "twin_errors")].bold
    assert "twin_errors" in markdown(t)
    with pytest.raises(AnalysisError, match=r"--baseline 'BiLMA' is no variant of study 'abl'"):
        build_table("abl", recs, ["R1"], baseline="BiLMA")
