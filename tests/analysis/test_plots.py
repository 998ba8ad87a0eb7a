"""The chance line of the R1 plots, on trial records whose numbers are chosen here (no
training; test_make_tables checks the PNG files of a real sweep)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from support.analysis import record

from bilma.analysis import plots
from bilma.analysis.aggregate import build_table
from bilma.analysis.records import TrialRecord


def trial(variant: str, index: int, seed: int, ratio: float, chance: float | None, split="val"):
    """A finished trial at mask_ratio `ratio` with a two-epoch R1 curve on `split`."""
    rec = record(variant, index, "synth", seed, 40.0 + seed, point={"mim.mask_ratio": ratio})
    rec.selection_split = rec.curve_split = split
    rec.curve = [(1, 20.0 + seed), (2, 30.0 + seed)]
    rec.chance_r1 = chance
    return rec


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots would save, kept open to be looked at."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig) or path)
    yield kept
    for fig in kept:
        plt.close(fig)


def chance_lines(fig) -> list[tuple[str, float, str]]:
    return [
        (ln.get_label(), ln.get_ydata()[0], ln.get_linestyle())
        for ln in fig.axes[0].get_lines()
        if ln.get_label().startswith("chance")
    ]


def records(chance: float | None, split: str = "val") -> list[TrialRecord]:
    return [
        trial(v, i, s, r, chance, split)
        for i, v in enumerate(("IRRA", "BiLMa"))
        for s in (1, 2, 3)
        for r in (0.3, 0.5)
    ]


def test_r1_plots_draw_the_recorded_chance_level(figures, tmp_path):
    recs = records(100 / 3)
    table = build_table("abl", recs)
    plots.axis_plots(table, "R1", tmp_path)
    plots.epoch_plot("abl", recs, tmp_path)
    axis, epochs = figures
    assert chance_lines(axis) == [("chance", pytest.approx(100 / 3), "--")]
    assert "chance" in [t.get_text() for t in axis.axes[0].get_legend().get_texts()]
    # The curves are on val; the recorded chance level is the test gallery's: said so.
    assert chance_lines(epochs) == [("chance (test gallery)", pytest.approx(100 / 3), "--")]

    figures.clear()
    recs = records(100 / 3, split="test")
    plots.epoch_plot("abl", recs, tmp_path)
    plots.axis_plots(build_table("abl", recs), "mAP", tmp_path)  # not an R1 plot
    epochs, m_ap = figures
    assert chance_lines(epochs) == [("chance", pytest.approx(100 / 3), "--")]
    assert chance_lines(m_ap) == []


def test_no_chance_line_for_runs_that_did_not_record_it(figures, tmp_path):
    recs = records(None)
    plots.axis_plots(build_table("abl", recs), "R1", tmp_path)
    plots.epoch_plot("abl", recs, tmp_path)
    assert len(figures) == 2 and all(chance_lines(f) == [] for f in figures)
