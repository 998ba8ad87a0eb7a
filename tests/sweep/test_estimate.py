"""The study's cost before launch (GPU-hours, checkpoint disk, the preflight's disk check) and
after (the totals under --status)."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

import pytest

from bilma.config import dump_yaml, load_config, trial_id
from bilma.runs.trial_dir import TrialDir
from bilma.sweep import estimate
from bilma.sweep.cli import main as launch
from bilma.sweep.expand import expand, load_grid
from bilma.sweep.plan import plan
from bilma.sweep.preflight import preflight
from bilma.sweep.report import status_table

# CUHK-PEDES as recorded: 68,126 training pairs, 1,064 steps of 64 a epoch, 60 epochs.
CUHK_SAMPLES = 60 * (68126 // 64) * 64
Usage = namedtuple("Usage", "total used free")


def cuhk(tmp_path: Path, *extra: str):
    """A ViT-B/16 trial on CUHK-PEDES, which is not on this machine."""
    return load_config(
        None,
        [
            "model.name=vitb16",
            "data.dataset=cuhk-pedes",
            f"data.root={tmp_path / 'no-data-here'}",
            "train.epochs=60",
            "train.batch_size=64",
            f"paths.runs={tmp_path / 'runs'}",
            *extra,
        ],
    )


def finished(runs: Path, cfg, study: str, gpu_hours: float, samples: int, sizes=(600e6, 200e6)):
    """A done trial of `cfg` under runs/<study>/: result.json with its usage, ckpt files of
    `sizes` bytes (last.pt, best.pt; None: absent)."""
    trial = TrialDir(runs / study / trial_id(cfg))
    trial.ckpt_dir.mkdir(parents=True)
    trial.config_path.write_text(dump_yaml(cfg))
    trial.result_path.write_text(
        json.dumps({"gpu_hours": gpu_hours, "cpu_hours": 16 * gpu_hours, "train_samples": samples})
    )
    for path, size in zip((trial.last_ckpt, trial.best_ckpt), sizes, strict=True):
        if size is not None:
            with open(path, "wb") as f:
                f.truncate(int(size))  # sparse: the size without the bytes


def test_the_recorded_figures_without_data_or_finished_trials(tmp_path):
    irra = cuhk(tmp_path, "loss.mim_weight=0")
    bilma = cuhk(tmp_path)
    lines = estimate.estimate_lines([irra, bilma, bilma])
    mim_h = CUHK_SAMPLES * 0.0025 / 3600  # 2.84 GPU-hours each (usage.yaml: 2.5 ms/sample)
    assert mim_h == pytest.approx(2.837, abs=1e-3)
    # last.pt 2,386 MB + best.pt 795 MB, recorded at CUHK-PEDES's 11,003 identities
    assert lines == [
        "estimate: 1 vitb16 trial x ~1.4 GPU-h = 1.4 GPU-hours (recorded figure: derived from "
        "FLOPs, not measured); checkpoints ~3.2 GB each, 3.2 GB in all (recorded figure: "
        "vitb16's sizes for the dataset's identities)",
        "estimate: 2 vitb16 +MIM trials x ~2.8 GPU-h = 5.7 GPU-hours (recorded figure: derived "
        "from FLOPs, not measured); checkpoints ~3.2 GB each, 6.4 GB in all (recorded figure: "
        "vitb16's sizes for the dataset's identities)",
        "estimate in all: 3 trials, 7.1 GPU-hours, 9.5 GB of checkpoints "
        "(train.keep_checkpoints=last_and_best)",
        "recorded figures: bilma/resources/usage.yaml (each with its source)",
    ]
    # ICFG-PEDES (3,102 identities, recorded): a smaller ID classifier, 512 x 4 bytes an id
    icfg = estimate.Estimator(tmp_path).cost(cuhk(tmp_path, "data.dataset=icfg-pedes"))
    assert icfg.best_bytes == 795e6 - 2048 * (11003 - 3102)
    assert icfg.last_bytes == 2386e6 - 3 * 2048 * (11003 - 3102)


def test_finished_trials_of_the_same_workload_win(tmp_path):
    runs = tmp_path / "runs"
    bilma = cuhk(tmp_path)
    for seed, hours in enumerate((1.0, 2.0, 3.0, 2.0)):  # 4 done trials of another study
        finished(runs, cuhk(tmp_path, f"train.seed={seed + 10}"), "old", hours, 1_000_000)
    finished(runs, cuhk(tmp_path, "loss.mim_weight=0", "train.seed=9"), "old", 50.0, 1000)
    lines = estimate.estimate_lines([bilma] * 3)
    # 2 GPU-hours per million samples (the mean of the four) x 4,085,760 samples
    each = 2.0 * CUHK_SAMPLES / 1e6
    assert each == pytest.approx(8.17, abs=0.01)
    assert lines == [
        "estimate: 3 vitb16 +MIM trials x ~8.2 GPU-h = 25 GPU-hours (from 4 finished vitb16 "
        "+MIM trials); checkpoints ~0.8 GB each, 2.4 GB in all (the size of 4 finished vitb16 "
        "+MIM trials on cuhk-pedes)"
    ]


def test_finished_trials_sizes_and_the_policy(tmp_path):
    runs = tmp_path / "runs"
    finished(runs, cuhk(tmp_path, "train.seed=10"), "old", 2.0, 1_000_000, (600e6, 200e6))
    # kept under keep_checkpoints=best: no last.pt left; it is taken as 3 x best.pt
    finished(runs, cuhk(tmp_path, "train.seed=11"), "old", 2.0, 1_000_000, (None, 200e6))
    est = estimate.Estimator(runs)
    cost = est.cost(cuhk(tmp_path))
    assert (cost.last_bytes, cost.best_bytes) == (600e6, 200e6)
    assert cost.size_source == "the size of 2 finished vitb16 +MIM trials on cuhk-pedes"
    assert cost.footprint() == (800e6, 1000e6)
    assert est.cost(cuhk(tmp_path, "train.keep_checkpoints=best")).kept_bytes == 200e6
    every = est.cost(cuhk(tmp_path, "train.keep_checkpoints=every:20"))
    assert every.kept_bytes == 800e6 + 2 * 600e6  # epochs 20 and 40 (60 is last.pt itself)


def test_a_synthetic_trial_counts_its_own_split(tmp_path):
    from bilma.data.splits import synth_counts

    cfg = load_config(None, ["data.synth_ids=100", "train.batch_size=8", "train.epochs=3",
                             f"paths.runs={tmp_path}"])  # fmt: skip
    pairs = synth_counts(cfg)["train"].pairs
    assert estimate.samples_trained(cfg, pairs) == 3 * (pairs // 8) * 8
    cost = estimate.Estimator(tmp_path).cost(cfg)
    # tiny with MIM on the CPU: 0.061 core-seconds a sample (usage.yaml)
    assert cost.device == "cpu"
    assert cost.hours == pytest.approx(3 * (pairs // 8) * 8 * 0.061 / 3600)


def test_the_disk_check_refuses_with_the_numbers(tmp_path, monkeypatch):
    cfgs = [cuhk(tmp_path, f"train.seed={s}") for s in range(3)]
    free = {"bytes": 5e9}
    monkeypatch.setattr(
        estimate.shutil, "disk_usage", lambda p: Usage(100e9, 100e9 - free["bytes"], free["bytes"])
    )
    (problem,) = [p for p in preflight(cfgs) if p.key == "paths.runs"]
    # Refused by the recorded sizes, then counted: ViT-B/16 with its heads and CUHK-PEDES's
    # 11,003 identities. A done trial keeps 16 bytes a parameter (last.pt 12, best.pt 4),
    # one training holds 4 more (best.next.pt): 3 x 16 + 4 = 52 bytes a parameter.
    n = 208_473_359
    assert estimate.Estimator(tmp_path / "runs").cost(cfgs[0], counted=True).best_bytes == 4 * n
    assert problem.line() == (
        f"paths.runs={tmp_path / 'runs'} (3 trials): the checkpoints of 3 trials need ~11 GB "
        f"and {tmp_path} has 5.0 GB free; --set train.keep_checkpoints=best (best.pt only, "
        "~5.8 GB), point paths.runs at a larger disk, or pass --no-disk-check"
    )
    assert 52 * n == pytest.approx(10.84e9, rel=1e-3) and 28 * n == pytest.approx(5.84e9, rel=1e-3)
    assert not [p for p in preflight(cfgs, disk_check=False) if p.key == "paths.runs"]
    free["bytes"] = 11e9
    assert not [p for p in preflight(cfgs) if p.key == "paths.runs"]


def test_dry_run_of_the_real_ablation_grid_prints_the_estimate(tmp_path, monkeypatch, capsys):
    """Without its dataset or weights: the preflight fails (exit 2), the estimate prints."""
    monkeypatch.chdir(tmp_path)
    assert launch(["--grid", "ablation", "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "estimate: 3 vitb16 trials x ~1.4 GPU-h = 4.2 GPU-hours" in out
    assert "estimate: 6 vitb16 +MIM trials x ~2.8 GPU-h = 17 GPU-hours" in out
    assert "estimate in all: 9 trials, 21 GPU-hours, 29 GB of checkpoints" in out
    assert list(tmp_path.iterdir()) == []


def test_status_table_ends_with_the_study_totals(tmp_path):
    grid = load_grid("smoke", [f"paths.runs={tmp_path}"])
    planned = plan(expand(grid))
    assert "used:" not in status_table(planned)
    for p, (gpu, cpu) in zip(planned, ((0.0, 0.5), (2.0, 1.25)), strict=False):
        p.dir.path.mkdir(parents=True)
        result = {"metrics": {"R1": 50.0}, "gpu_hours": gpu, "cpu_hours": cpu}
        p.dir.result_path.write_text(json.dumps(result))
    table = status_table(planned)
    assert table.splitlines()[-1] == "used: 2 GPU-hours, 1.8 CPU-hours (2 trials)"
    assert os.path.basename(str(planned[0].dir.path.parent)) == grid.study
