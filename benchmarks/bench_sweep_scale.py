"""The launcher's phases on a 1,000-trial grid, without training anything.

A grid of 4 variants x 5 mask ratios x 50 seeds = 1,000 trials of the tiny config on a small
synthetic dataset (made once, outside the timings). Timed in this process, phase by phase,
as `python sweeps/launch.py` runs them:

  count       the grid's size from the grid file (bilma.sweep.size), before expansion
  expansion   load_grid + expand_report: one resolved, validated config per trial
  plan        each trial's directory read and classified (new here)
  preflight   the inputs of the trials to run (dataset, splits, tokenizer, runs folder)
  prepare     trial folders, config.yaml and launch.json (and the MLflow parent run):
              once with tracking off, once on a fresh sqlite store
  submit      each trial's claim and `mark_submitted` (what every backend does per trial
              before its job starts; no job is started)
  status      plan + the status table of 1,000 submitted trials
  mark        the SLURM backend's marking of a submitted array: one trial after another
              (before) and in `bilma.fileio.in_threads` (now)

then the whole commands, as a user runs them (Python start-up and imports included):
`--dry-run --yes` and `--status --yes` (above --max-trials 500, the size check asks for
--yes), and finally the follow loop's file opens per second on a 1,000-trial study
(benchmarks/bench_follow.py, the local backend's real loop).

    .venv/bin/python benchmarks/bench_sweep_scale.py [--seconds 10] [--profile PHASE]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import importlib.util
import io
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks run from a checkout
sys.path.insert(0, str(REPO / "tests"))

# Code before the size check (commit 8d02d85 and earlier) has no count and no --yes.
SIZED = importlib.util.find_spec("bilma.sweep.size") is not None
YES = ["--yes"] if SIZED else []
SEEDS = 50
MASK_RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7]
VARIANTS = {
    "IRRA": {"loss.mim_weight": 0.0},
    "+MIM": {"loss.mim_weight": 1.0},
    "+MIM 0.5": {"loss.mim_weight": 0.5},
    "+MIM 2": {"loss.mim_weight": 2.0},
}


def write_grid(tmp: Path, name: str, data: Path, tracking: bool) -> Path:
    from support.tiny import tiny_overrides

    from bilma.config import parse_override

    overrides = tiny_overrides(data, tmp / f"runs_{name}")
    settings = dict(parse_override(o) for o in overrides)
    settings["tracking.enabled"] = tracking
    settings["tracking.uri"] = f"sqlite:///{tmp}/{name}.db"
    grid = {
        "study": name,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": list(range(SEEDS)),
        "set": settings,
        "variants": VARIANTS,
        "grid": {"mim.mask_ratio": MASK_RATIOS},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def timed(label: str, fn: Callable[[], Any], rows: list, profile: str | None) -> Any:
    prof = cProfile.Profile() if profile == label else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    out = fn()
    if prof:
        prof.disable()
    rows.append((label, time.perf_counter() - t0))
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    return out


def phases(grid_path: Path, tracking: bool, profile: str | None) -> list[tuple[str, float]]:
    from bilma import fileio
    from bilma.sweep import report
    from bilma.sweep.expand import expand_report, load_grid
    from bilma.sweep.plan import claimed, mark_submitted, plan
    from bilma.sweep.preflight import preflight
    from bilma.sweep.prepare import prepare

    rows: list[tuple[str, float]] = []
    grid = load_grid(grid_path)
    if SIZED:
        from bilma.sweep.size import grid_size

        size = timed("count", lambda: grid_size(grid), rows, profile)
        assert size.count == len(VARIANTS) * len(MASK_RATIOS) * SEEDS
    trials, _ = timed("expansion", lambda: expand_report(load_grid(grid_path)), rows, profile)
    planned = timed("plan", lambda: plan(trials), rows, profile)
    problems = timed("preflight", lambda: preflight(p.trial.config for p in planned), rows, profile)
    assert not problems, problems
    prep = "prepare (MLflow sqlite)" if tracking else "prepare (no MLflow)"
    timed(prep, lambda: prepare(grid, planned), rows, profile)

    def submit() -> None:
        for p in planned:
            with claimed([p]) as still:
                if still:
                    mark_submitted(p.dir, "local", "0", None)

    timed("submit (claim + mark)", submit, rows, profile)
    timed("status", lambda: report.status_table(plan(trials)), rows, profile)

    # The SLURM backend marks a whole array after sbatch: one after another before, in
    # `bilma.fileio.in_threads` now (the same two fsyncs per trial either way).
    def mark(p) -> None:
        mark_submitted(p.dir, "local", "0", None)  # the status commands below stay local

    timed("mark an array, one after another", lambda: [mark(p) for p in planned], rows, profile)
    if hasattr(fileio, "in_threads"):
        timed("mark an array, in threads", lambda: fileio.in_threads(mark, planned), rows, profile)
    return rows


def command(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    return time.perf_counter() - t0


def follow_rate(seconds: float) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_follow.py"), "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    return out.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="the follow loop's run")
    ap.add_argument("--profile", default=None, help="print a profile of this phase")
    args = ap.parse_args()
    from support.tiny import SYNTH_OVERRIDES

    from bilma.config import load_config
    from bilma.data import datasets

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "synth"
        datasets.ensure_synthetic(load_config(None, [f"data.root={data}", *SYNTH_OVERRIDES]).data)
        off = phases(write_grid(tmp, "off", data, tracking=False), False, args.profile)
        on = phases(write_grid(tmp, "on", data, tracking=True), True, args.profile)
        grid = write_grid(tmp, "cmd", data, tracking=True)
        dry = command(["--grid", str(grid), "--dry-run", *YES], tmp)
        status_new = command(["--grid", str(grid), "--status", *YES], tmp)
        status_off = command(["--grid", str(tmp / "off.yaml"), "--status", *YES], tmp)
    follow = follow_rate(args.seconds)
    print(
        f"# {len(VARIANTS) * len(MASK_RATIOS) * SEEDS} trials, {datetime.date.today()}, "
        f"{platform.platform()}, nproc={os.cpu_count()}"
    )
    print("| phase | tracking off s | MLflow sqlite s |")
    print("|---|---|---|")
    for (label, a), (_label, b) in zip(off, on, strict=True):
        print(f"| {label.split(' (')[0]} | {a:.3f} | {b:.3f} |")
    yes = " ".join(YES)
    print(f"\ncommand `--dry-run {yes}` (1,000 new trials): {dry:.1f} s")
    print(f"command `--status {yes}` (1,000 new trials): {status_new:.1f} s")
    print(f"command `--status {yes}` (1,000 submitted trials): {status_off:.1f} s")
    print(f"follow loop: {follow}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
