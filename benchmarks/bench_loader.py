"""Training loader throughput: images/s at 384x128 with the full augmentation and SemMIM
patch labels (JPEG decode, parse-map PNG decode, resize/flip/pad/crop/erase, majority vote,
MLM masking, collation), for 0, 1 and 2 worker processes.

    .venv/bin/python benchmarks/bench_loader.py [--ids 300] [--batches 25]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

import torch

from bilma.config import load_config
from bilma.data import synth
from bilma.data.datasets import TrainSet, load_data, train_loader


def run(cfg, batches: int, workers: int) -> float:
    ts = TrainSet(load_data(cfg), cfg)
    loader, sampler = train_loader(ts, cfg.train.batch_size, workers)
    sampler.set_epoch(0)
    it = iter(loader)
    for _ in range(3):  # warm-up: worker start and first prefetch
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["pids"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", type=int, default=300)
    ap.add_argument("--batches", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp, ids=args.ids, images_per_id=4, seed=0, workers=2, progress=False)
        cfg = load_config(
            None,
            [
                f"data.root={tmp}",
                f"data.synth_ids={args.ids}",
                "data.image_size=[384,128]",
                "train.batch_size=64",
            ],
        )
        print(
            f"# loader throughput, {datetime.date.today()}, {platform.platform()}, nproc={os.cpu_count()}, "
            f"python {sys.version.split()[0]}, torch {torch.__version__}"
        )
        print("| workers | images/s (384x128, full augmentation, SemMIM labels, MLM) |")
        print("|---|---|")
        for workers in (0, 1, 2):
            rate = run(cfg, args.batches, workers)
            print(f"| {workers} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
