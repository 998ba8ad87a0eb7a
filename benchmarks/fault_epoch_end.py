"""Fault injection: SIGKILL the trainer shortly after an epoch's evaluation, many times.

Replays the kill-at-epoch-end race (records written, last.pt / best.pt being committed): a tiny
model on tiny synthetic data, 2 steps per epoch, evaluation every epoch, MLflow on a SQLite
store. A watcher sees each new evaluation record in metrics.jsonl, waits a random 0-300 ms and
SIGKILLs the process; the same command is relaunched until the trial is done. Reports what
must all be 0: duplicated (epoch, split) records in metrics.jsonl and in MLflow's history,
unreadable checkpoints, leftover temporary files, best.pt / last.pt disagreements.

    .venv/bin/python benchmarks/fault_epoch_end.py --kills 40
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SYNTH = ["data.synth_ids=30", "data.synth_images_per_id=2", "data.synth_seed=5"]


def overrides(root: Path, runs: Path, epochs: int, uri: str) -> list[str]:
    return [
        f"data.root={root}",
        *SYNTH,
        "data.image_size=[128,64]",
        "data.text_length=48",
        "data.num_workers=0",
        "model.name=tiny",
        "model.embed_dim=64",
        "model.cross_depth=1",
        "model.cross_heads=4",
        "mim.depth=1",
        "optim.lr=0.001",
        "optim.warmup_epochs=1",
        f"train.epochs={epochs}",
        "train.batch_size=8",
        "train.max_steps_per_epoch=2",
        "train.deterministic=true",
        "eval.every=1",
        "eval.batch_size=64",
        f"paths.runs={runs}",
        "tracking.enabled=true",
        f"tracking.uri={uri}",
        "tracking.study=faults",
    ]


def val_count(metrics: Path) -> int:
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return 0
    return text.count('"split": "val"')


def readable(path: Path) -> bool | None:
    if not path.exists():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False


def inspect(trial: Path, counts: collections.Counter) -> None:
    """After a kill: checkpoints readable, best.pt agreeing with last.pt (or a candidate that
    last.pt names, which the next start promotes)."""
    ckpt = trial / "ckpt"
    for name in ("last.pt", "best.pt", "best.next.pt"):
        if readable(ckpt / name) is False:
            counts["unreadable_checkpoints"] += 1
    if readable(ckpt / "last.pt") and readable(ckpt / "best.pt"):
        last_best = torch.load(ckpt / "last.pt", weights_only=True)["state"]["best"]["epoch"]
        best = torch.load(ckpt / "best.pt", weights_only=True)["epoch"]
        cand = ckpt / "best.next.pt"
        pending = readable(cand) and torch.load(cand, weights_only=True)["epoch"] == last_best
        if best != last_best and not pending:
            counts["best_last_disagreements"] += 1


def watch_and_kill(proc, runs: Path, rng, max_delay: float, counts, kills: int) -> float | None:
    """SIGKILL `proc` a random delay after its first new evaluation record; the delay, or
    None if it ran to its end (or enough kills were done)."""
    start_vals = None
    while proc.poll() is None:
        found = list(runs.glob("faults/*")) if runs.exists() else []
        if found and counts["kills"] < kills:
            n = val_count(found[0] / "metrics.jsonl")
            if start_vals is None:
                start_vals = n
            elif n > start_vals:
                delay = rng.uniform(0, max_delay)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                counts["kills"] += 1
                return delay
        time.sleep(0.005)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--max-delay-ms", type=float, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fault_epoch_end_"))
    root, runs = work / "synth", work / "runs"
    uri = f"sqlite:///{work}/mlflow.db"
    epochs = args.kills + 3
    cmd = [sys.executable, "-m", "bilma", "train", "--config", "/dev/null"]
    cmd += overrides(root, runs, epochs, uri)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    counts: collections.Counter = collections.Counter()
    delays, t0, launches = [], time.time(), 0
    work.mkdir(parents=True, exist_ok=True)
    while True:
        launches += 1
        with open(work / f"launch{launches}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
            delay = watch_and_kill(proc, runs, rng, args.max_delay_ms / 1000, counts, args.kills)
        if delay is not None:
            delays.append(delay)
            inspect(next(runs.glob("faults/*")), counts)
            continue
        if proc.returncode != 0:
            print(f"launch {launches} failed (exit {proc.returncode}); see {log.name}")
            return 1
        break
    trial = next(runs.glob("faults/*"))
    inspect(trial, counts)
    recs = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    keys = collections.Counter((r["epoch"], r["split"]) for r in recs)
    counts["duplicated_records"] = sum(n - 1 for n in keys.values())
    counts["missing_records"] = 2 * epochs - len(keys)
    counts["leftover_tmp_files"] = len(list(trial.glob(".*.tmp")) + list(trial.glob("ckpt/.*.tmp")))
    counts["leftover_best_candidates"] = int((trial / "ckpt" / "best.next.pt").exists())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("faults")
    runs_found = client.search_runs([exp.experiment_id])
    counts["mlflow_runs"] = len(runs_found)
    dup = 0
    for run in runs_found:
        for key in ("train/loss", "val/R1", "val/mAP"):
            steps = collections.Counter(
                m.step for m in client.get_metric_history(run.info.run_id, key)
            )
            dup += sum(n - 1 for n in steps.values())
    counts["duplicated_mlflow_points"] = dup
    logs = [p.read_text() for p in work.glob("launch*.log")]
    # How often a kill landed inside the race: records past last.pt, a temp file left behind
    counts["relaunches_dropping_records"] = sum("metrics record(s) past epoch" in t for t in logs)
    counts["relaunches_removing_tmp"] = sum(
        "temporary file(s) a killed run left" in t for t in logs
    )
    counts["relaunches_promoting_best"] = sum("promoting the best checkpoint" in t for t in logs)
    status = json.loads((trial / "status.json").read_text())
    report = {
        "kills": counts["kills"],
        "launches": launches,
        "epochs": epochs,
        "final_state": status["state"],
        "attempts": status["attempts"],
        "delay_ms_range": [round(min(delays) * 1000), round(max(delays) * 1000)] if delays else [],
        "relaunches_dropping_records": counts["relaunches_dropping_records"],
        "relaunches_removing_tmp": counts["relaunches_removing_tmp"],
        "relaunches_promoting_best": counts["relaunches_promoting_best"],
        "duplicated_records": counts["duplicated_records"],
        "missing_records": counts["missing_records"],
        "duplicated_mlflow_points": counts["duplicated_mlflow_points"],
        "mlflow_runs": counts["mlflow_runs"],
        "unreadable_checkpoints": counts["unreadable_checkpoints"],
        "leftover_tmp_files": counts["leftover_tmp_files"],
        "leftover_best_candidates": counts["leftover_best_candidates"],
        "best_last_disagreements": counts["best_last_disagreements"],
        "wall_s": round(time.time() - t0, 1),
        "workdir": str(work),
    }
    print(json.dumps(report, indent=2))
    bad = [
        k
        for k in (
            "duplicated_records",
            "missing_records",
            "duplicated_mlflow_points",
            "unreadable_checkpoints",
            "leftover_tmp_files",
            "best_last_disagreements",
        )
        if report[k]
    ]
    return 1 if bad or report["final_state"] != "done" else 0


if __name__ == "__main__":
    sys.exit(main())
