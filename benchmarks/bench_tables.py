"""make_tables.py over an MLflow store of 1,000 finished runs (goal: under 10 s).

The store is built like a real one: one experiment, runs with the trainer's params (the
flattened synth_tiny config, ~80 keys), tags, the five final test metrics and 20 epochs of
val/R1 history; 5 variants x 5 grid points x 40 seeds. Then, timed as subprocesses (Python
and MLflow start-up included), median of 3:
  table:  `make_tables.py --study bench` (Markdown on stdout)
  all:    `make_tables.py --study bench --format all --out DIR` (plus LaTeX, CSV and the plots,
          which read every run's per-epoch history)

    .venv/bin/python benchmarks/bench_tables.py [--runs 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_store(db: Path, n_runs: int) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from bilma.config import load_config
    from bilma.tracking.mirror import config_params
    from bilma.tracking.store import ensure_experiment

    uri = f"sqlite:///{db}"
    exp = ensure_experiment(uri, "bench")
    client = MlflowClient(tracking_uri=uri)
    rng = random.Random(0)
    variants = ["IRRA", "+MIM pixel", "+SemMIM LIP-20", "+SemMIM ATR-18", "+SemMIM PPP-7"]
    ratios = [0.15, 0.3, 0.45, 0.6, 0.75]
    seeds = n_runs // (len(variants) * len(ratios))
    t0 = time.time()
    made = 0
    for vi, variant in enumerate(variants):
        for ratio in ratios:
            for seed in range(seeds):
                point = {"mim.mask_ratio": ratio}
                cfg = load_config(
                    REPO / "configs" / "synth_tiny.yaml",
                    {
                        "train.seed": seed,
                        "mim.mask_ratio": ratio,
                        "tracking.study": "bench",
                        "tracking.variant": f"{variant} [mask_ratio={ratio}]",
                        "tracking.variant_base": variant,
                        "tracking.variant_index": vi,
                        "tracking.grid_point": json.dumps(point),
                    },
                )
                tags = {
                    "kind": "trial",
                    "study": "bench",
                    "trial_id": f"t{made:05d}",
                    "variant": cfg.tracking.variant,
                    "variant_base": variant,
                    "grid.mim.mask_ratio": str(ratio),
                    "seed": str(seed),
                    "dataset": "synth",
                    "selection_split": "val",
                    "selection_metric": "R1",
                }
                run = client.create_run(exp, run_name=f"{cfg.tracking.variant} seed={seed}")
                rid = run.info.run_id
                base = 40 + 3 * vi - 20 * abs(ratio - 0.4)
                metrics = [
                    Metric("val/R1", base * (e + 1) / 20 + rng.gauss(0, 1), 0, e + 1)
                    for e in range(20)
                ]
                metrics += [
                    Metric(f"test/{m}", base + off + rng.gauss(0, 1), 0, 20)
                    for m, off in (("R1", 0), ("R5", 25), ("R10", 35), ("mAP", -3), ("mINP", -15))
                ]
                params = [Param(k, v) for k, v in config_params(cfg).items()]
                for i in range(0, len(params), 100):
                    client.log_batch(rid, params=params[i : i + 100])
                client.log_batch(rid, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
                client.set_terminated(rid, "FINISHED")
                made += 1
    print(f"built {made} finished runs in {time.time() - t0:.0f} s: {db}", flush=True)


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "make_tables.py"), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, MLFLOW_TRACKING_URI=""),
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"make_tables failed: {proc.stderr}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--keep", type=Path, default=None, help="build the store here and keep it")
    args = p.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_tables_"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    if not db.exists():
        build_store(db, args.runs)
    uri = f"sqlite:///{db}"
    rows = []
    for name, extra in (
        ("table (Markdown)", []),
        ("all formats + plots", ["--format", "all", "--out", str(folder / "out")]),
    ):
        walls = [timed(["--tracking-uri", uri, "--study", "bench", *extra]) for _ in range(3)]
        rows.append((name, statistics.median(walls), min(walls), max(walls)))
    print(
        f"\n{args.runs} finished runs, {datetime.date.today()}, {platform.node()}, "
        f"{os.cpu_count()} cores"
    )
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for name, med, lo, hi in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} |")


if __name__ == "__main__":
    main()
