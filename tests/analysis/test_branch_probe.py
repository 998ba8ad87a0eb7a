"""analysis/branch_probe.py and analysis/branches.py: the branch measurements of trials."""

from __future__ import annotations

import json

import pytest
import torch
from support.tiny import tiny_overrides

from bilma.analysis.branch_probe import main
from bilma.analysis.probe import _Counts, probe_trial, train_loss_parts
from bilma.config import load_config
from bilma.runs.trial_dir import TrialDir
from bilma.training.trainer import train


def test_counts_by_hand():
    c = _Counts()
    c.add("acc", torch.tensor([True, False, True, True]))
    c.add("acc", torch.tensor([False]))
    c.add_mean("mse", 0.5, 2)
    c.add_mean("mse", 2.0, 1)
    # positions 0 and 1, 3 classes; masked targets: pos 0 -> 0, 0, 2; pos 1 -> 1
    target = torch.tensor([[0, 1], [0, 5], [2, 0]])
    valid = torch.tensor([[True, True], [True, False], [True, False]])
    c.add_prior(target.clamp(max=2), valid, 3)
    out = c.result()
    assert out["acc"] == pytest.approx(60.0)
    assert out["mse"] == pytest.approx(1.0)
    assert out["mim_prior"] == pytest.approx(100.0 * (2 + 1) / 4)


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    out = {}
    for name, extra in (
        ("semantic", ["mim.target=semantic", "tracking.variant=sem"]),
        ("pixel", ["mim.target=pixel", "tracking.variant=pix"]),
        ("plain", ["loss.mlm_weight=0", "loss.mim_weight=0", "tracking.variant=plain"]),
    ):
        over = tiny_overrides(tmp / "data", tmp / "runs", "tracking.study=probe", *extra)
        cfg = load_config(None, [*over, "train.epochs=1"])
        train(cfg)
        out[name] = TrialDir.for_config(cfg)
    return tmp, out


def test_probe_measures_each_branch(trials):
    _, t = trials
    sem = probe_trial(t["semantic"].path, max_pairs=24, batch_size=8)
    assert set(sem) == {"mlm_acc", "mlm_acc_other", "mim_acc", "mim_acc_other", "mim_prior"}
    assert all(0.0 <= v <= 100.0 for v in sem.values())
    assert probe_trial(t["semantic"].path, max_pairs=24, batch_size=8) == sem  # fixed masks
    pix = probe_trial(t["pixel"].path, max_pairs=24, batch_size=8)
    assert set(pix) == {"mlm_acc", "mlm_acc_other", "mim_mse", "mim_mse_other", "mim_mse_zero"}
    # normalised pixels: predicting each patch's mean costs (D - 1) / D of the unit variance
    d = 16 * 16 * 3
    assert pix["mim_mse_zero"] == pytest.approx((d - 1) / d, rel=1e-3)
    assert probe_trial(t["plain"].path) == {}


def test_loss_parts_and_cli(trials, capsys):
    tmp, t = trials
    parts = train_loss_parts(t["semantic"].path)
    assert set(parts) == {"sdm", "id", "mlm", "mim"} and set(parts["mim"]) == {1}
    record = next(r for r in t["semantic"].read_metrics() if r["split"] == "train")
    assert parts["mlm"][1] == record["mlm"]
    out = tmp / "tables"
    argv = ["--study", "probe", "--runs", str(tmp / "runs"), "--max-pairs", "16", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| sem |" in text and "| pix |" in text and "| plain |" in text
    per_trial = json.loads((out / "probe_branch_probe.json").read_text())
    assert {v["variant"] for v in per_trial.values()} == {"sem", "pix", "plain"}
    assert (out / "probe_loss_parts.png").stat().st_size > 1000
    assert main(["--study", "nothing", "--runs", str(tmp / "runs")]) == 1
    assert "no finished trial of study 'nothing'" in capsys.readouterr().err
