"""Orchestration overhead of the local backend, per trial.

N trivial trials (tiny model, one training step, tiny synthetic data) run twice:
  baseline: one `python -m bilma train` process after another (no launcher);
  launcher: `python sweeps/launch.py --grid ... --max-parallel 1` (submitit jobs, planning,
            MLflow parent run, progress view).
Overhead per trial = (launcher wall - baseline wall) / N.

    .venv/bin/python benchmarks/bench_launch.py [--trials 6]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def trial_overrides(root: Path, runs: Path, db: Path) -> dict:
    return {
        "data.root": str(root),
        "data.synth_ids": 30,
        "data.synth_images_per_id": 2,
        "data.image_size": [128, 64],
        "data.text_length": 48,
        "data.num_workers": 0,
        "model.embed_dim": 64,
        "model.cross_depth": 1,
        "model.cross_heads": 4,
        "mim.depth": 1,
        "train.epochs": 1,
        "train.batch_size": 8,
        "train.max_steps_per_epoch": 1,
        "eval.batch_size": 64,
        "paths.runs": str(runs),
        "tracking.uri": f"sqlite:///{db}",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    n = args.trials
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = REPO / "configs" / "synth_tiny.yaml"
        seeds = list(range(1, n + 1))
        # data and MLflow stores made once, outside the timings
        warm = trial_overrides(tmp / "synth", tmp / "warm", tmp / "warm.db")
        cmd = [sys.executable, "-m", "bilma", "train", "--config", str(base)]
        subprocess.run(
            cmd + [f"{k}={v}" for k, v in warm.items()], check=True, env=env, capture_output=True
        )

        o = trial_overrides(tmp / "synth", tmp / "runs_a", tmp / "a.db")
        t0 = time.perf_counter()
        for s in seeds:
            subprocess.run(
                cmd
                + [f"{k}={v}" for k, v in o.items()]
                + [f"train.seed={s}", "tracking.study=bench"],
                check=True,
                env=env,
                capture_output=True,
            )
        baseline = time.perf_counter() - t0

        o = trial_overrides(tmp / "synth", tmp / "runs_b", tmp / "b.db")
        grid = {"study": "bench", "base": str(base), "seeds": seeds, "set": o}
        (tmp / "grid.yaml").write_text(yaml.safe_dump(grid))
        t0 = time.perf_counter()
        launch = [
            sys.executable,
            str(REPO / "sweeps" / "launch.py"),
            "--grid",
            str(tmp / "grid.yaml"),
            "--max-parallel",
            "1",
        ]
        subprocess.run(launch, check=True, env=env, capture_output=True)
        swept = time.perf_counter() - t0

    print(
        f"# orchestration overhead, {datetime.date.today()}, {platform.platform()}, nproc={os.cpu_count()}"
    )
    print(
        "| trials | sequential `bilma train` s | launcher (local, 1 at a time) s | overhead per trial s |"
    )
    print("|---|---|---|---|")
    print(f"| {n} | {baseline:.1f} | {swept:.1f} | {(swept - baseline) / n:.2f} |")


if __name__ == "__main__":
    main()
