"""The local-matching study's fixed readout: the decision rule, the report, and one real tiny
trial read out on val + test pooled from both checkpoints (cached in readout.json)."""

from __future__ import annotations

import json
import math

import pytest
from support.tiny import tiny_overrides

from bilma.analysis import readout
from bilma.analysis.readout import Comparison, compare, verdict


def _c(mean_diff: float, low: float, high: float, p: float, pairs: int = 8) -> Comparison:
    return Comparison("arm", pairs, mean_diff, low, high, p, 1.0)


def test_the_decision_rule():
    assert verdict(_c(2.5, 1.0, 4.0, 0.01)) == "helps"
    assert verdict(_c(-2.5, -4.0, -1.0, 0.01)) == "hurts"
    assert verdict(_c(0.3, -1.2, 1.8, 0.6)) == "no effect of 2 points or more"
    assert verdict(_c(1.0, -0.5, 2.5, 0.2)) == "inconclusive"  # reaches past +2
    assert verdict(_c(2.5, 1.0, 4.0, 0.01, pairs=2)) != "helps"  # too few seeds for a p


def test_compare_pairs_by_seed():
    c = compare("arm", {0: 50.0, 1: 52.0, 2: 51.0, 9: 99.0}, {0: 53.0, 1: 54.0, 2: 55.0})
    assert c.pairs == 3 and c.mean_diff == pytest.approx(3.0)
    assert c.sd_diff == pytest.approx(1.0)
    assert c.low < 3.0 < c.high and c.p < 0.05


def _fake(values: dict[str, list[float]]) -> dict[str, dict]:
    out = {}
    for arm, xs in values.items():
        out[arm] = {
            s: {
                ck: {"group_R1": x, "lookalike_R1": x / 2, "twin_errors": 50.0}
                for ck in ("last", "best")
            }
            for s, x in enumerate(xs)
        }
    return out


def test_report_names_the_verdicts_the_power_and_the_control():
    readouts = _fake(
        {
            "IRRA": [60.0, 61.0, 59.0, 60.5],
            "BiLMa": [60.2, 61.1, 59.3, 60.4],
            "control": [66.0, 68.0, 65.5, 67.0],
        }
    )
    text = readout.report(readouts, "IRRA", "control")
    assert "| IRRA | 4 | 60.12 ± 0.85" in text and "(baseline)" in text
    assert "no effect of 2 points or more" in text  # BiLMa: +0.12, a narrow interval
    assert "| control | 4 |" in text and "helps" in text
    assert "Power observed" in text and "seeds for 2" in text
    assert "Positive control: control raises within-group Rank-1 by +6.50" in text


def test_a_control_that_does_not_help_says_the_world_is_the_bottleneck():
    readouts = _fake({"IRRA": [60.0, 61.0, 59.0], "control": [60.5, 60.0, 59.5]})
    line = readout.control_line(readouts, "IRRA", "control")
    assert "does not raise" in line and "the bottleneck is the world or the budget" in line


def test_a_tiny_trial_is_read_out_from_both_checkpoints_and_cached(
    synth_small, tmp_path, monkeypatch
):
    """A real trial (with the positive control's loss) on a look-alike world of 2 groups per
    evaluation split: 4 identities x 2 images x 2 captions = 16 look-alike queries per split,
    32 pooled; the second read comes from readout.json."""
    from bilma.config import load_config
    from bilma.runs.trial_dir import TrialDir
    from bilma.training.trainer import train

    overrides = tiny_overrides(
        tmp_path / "world", tmp_path / "runs", "train.epochs=1", "data.synth_ids=24",
        "data.synth_eval_ids=4", "data.synth_lookalike=2", "data.synth_lookalike_share=1.0",
        "loss.attribute_weight=1",
    )  # fmt: skip
    cfg = load_config(None, overrides)
    result = train(cfg, progress=False)
    trial = TrialDir.for_config(cfg)
    parts = {k for r in trial.read_metrics() if r["split"] == "train" for k in r}
    assert "attribute" in parts
    assert 0.0 <= result["metrics"]["group_R1"] <= 100.0
    got = readout.read_trial(trial.path)
    for ck in ("last", "best"):
        assert got[ck]["queries"] == 32
        assert got[ck]["splits"]["val"]["queries"] == got[ck]["splits"]["test"]["queries"] == 16
        assert 0.0 <= got[ck]["group_R1"] <= 100.0
        pooled = (got[ck]["splits"]["val"]["group_R1"] + got[ck]["splits"]["test"]["group_R1"]) / 2
        assert got[ck]["group_R1"] == pytest.approx(pooled)  # equal query counts: the mean
    assert json.loads((trial.path / readout.READOUT_FILE).read_text())["last"] == got["last"]
    monkeypatch.setattr(readout, "read_checkpoint", lambda *a, **k: pytest.fail("recomputed"))
    assert readout.read_trial(trial.path)["best"] == got["best"]
    assert not math.isnan(got["last"]["twin_errors"])
    by_part = got["last"]["by_part"]  # 4 groups (2 per split), each differing in one part
    assert sum(p["queries"] for p in by_part.values()) == 32
    assert set(by_part) <= {"shoes", "bag", "hat", "scarf"}
    weighted = sum(p["queries"] * p["group_R1"] for p in by_part.values()) / 32
    assert weighted == pytest.approx(got["last"]["group_R1"])
    # the untrained starting point of the same config, read out the same way
    zero = readout.read_zero_shot(None, overrides)
    assert zero["queries"] == 32 and zero["splits"]["test"]["queries"] == 16
    assert zero["source"] == "random tiny weights"
    text = readout.report({"IRRA": {0: got}}, "IRRA", zero_shot=zero)
    assert (
        f"Zero-shot (no fine-tuning; random tiny weights, None): group_R1 {zero['group_R1']:.2f}"
        in text
    )
    assert "within-group Rank-1 by the distinguishing part" in text
    part = sorted(by_part)[0]
    assert f"| IRRA | 1 | {by_part[part]['group_R1']:.2f} ± n/a" in text
    assert "| zero-shot (not fine-tuned) | 1 | " in text
