"""Every shipped grid row trains under DistributedDataParallel, including rows whose losses
leave parts of the full model unused (DDP fails at the second step on a parameter without a
gradient: "Expected to have finished reduction in the prior iteration")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.tiny import tiny_overrides

from bilma.runs.trial_dir import TrialDir


def torchrun_train(overrides: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m bilma train` in `nproc` gloo processes started by torchrun (as in
    tests/test_train.py's DDP test)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bilma",
        "train",
        "--config",
        "/dev/null",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "row",
    [
        ["loss.mim_weight=0"],  # sweeps/grids/ablation.yaml's "IRRA (SDM+ID+MLM)" row
        ["loss.id_weight=0"],
    ],
    ids=["ablation-irra-row", "no-id-loss"],
)
def test_ddp_trains_rows_with_unused_parts(row, synth_small, tmp_path):
    runs = tmp_path / "runs"
    extra = ["train.epochs=1", "train.max_steps_per_epoch=3", "eval.every=1", *row]
    proc = torchrun_train(tiny_overrides(synth_small, runs, *extra), tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Expected to have finished reduction" not in out
    trial = next(runs.glob("*/*"))
    records = [r for r in TrialDir(trial).read_metrics() if r["split"] == "train"]
    assert records[0]["step"] == 3
    assert ("mim" in records[0]) == (row != ["loss.mim_weight=0"])
    assert ("id" in records[0]) == (row != ["loss.id_weight=0"])
    result = json.loads((trial / "result.json").read_text())
    assert set(result["metrics"]) == {"R1", "R5", "R10", "mAP", "mINP"}
