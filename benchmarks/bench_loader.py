"""Training loader throughput: images/s at 384x128 with the full augmentation and SemMIM
(JPEG decode, parse-map PNG decode, resize/flip/pad/crop, erasing, patch labels, MLM masking,
collation, the batch handed to the training process), for each worker count given.

Paths (issue 21): `float`, the workers finish each sample (normalise, erase, patch labels)
and ship float32 (as before); `uint8`, the workers ship uint8 images and parse maps plus the
erasing boxes, and the trainer finishes the batch on its device (`DeviceAugment`), whose cost
is measured on its own (images/s of that device, for batches of 64); `cached`, `uint8` with
`data.cache=uint8` (no decoding: the images and maps come resized from a memory map).

    .venv/bin/python benchmarks/bench_loader.py                     # workers 0 1 2, CPU
    .venv/bin/python benchmarks/bench_loader.py --workers 16 8 4    # a GPU node
    .venv/bin/python benchmarks/bench_loader.py --small             # quick: 1 worker, few batches
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import tempfile
import time

import torch

from bilma.config import load_config
from bilma.data import synth
from bilma.data.datasets import TrainSet, load_data, shutdown_workers, train_loader


def loader_rate(ts: TrainSet, batch: int, batches: int, workers: int) -> float:
    """Images/s the training process receives (pinned, on a CUDA machine) after warm-up,
    over as many epochs as `batches` needs (persistent workers carry on)."""
    loader, sampler = train_loader(ts, batch, workers)

    def stream():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    it = stream()
    try:
        for _ in range(3):  # warm-up: worker start and first prefetch
            next(it)
        t0 = time.perf_counter()
        n = sum(len(next(it)["pids"]) for _ in range(batches))
        return n / (time.perf_counter() - t0)
    finally:
        it.close()
        shutdown_workers(loader)


def device_rate(ts: TrainSet, batch: int, device: torch.device, repeats: int) -> float:
    """Images/s of the device half (`DeviceAugment`): normalise, erase, patch labels."""
    samples = [ts[(i % len(ts), 0)] for i in range(batch)]
    cpu = torch.utils.data.default_collate(samples)
    on_device = {k: v.to(device) for k, v in cpu.items()}
    augment = ts.device_augment()
    for _ in range(3):
        augment(on_device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        augment(on_device)
    sync()
    return batch * repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ids", type=int, default=300, help="synthetic identities (4 images each)")
    ap.add_argument("--batches", type=int, default=25, help="batches timed per measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--paths",
        nargs="+",
        default=["float", "uint8", "cached"],
        choices=["float", "uint8", "cached"],
    )
    ap.add_argument("--device", default=None, help="for the device half (default: cuda if any)")
    ap.add_argument("--small", action="store_true", help="quick: 1 worker, 60 ids, 5 batches")
    args = ap.parse_args(argv)
    if args.small:
        args.workers, args.ids, args.batches = [1], 60, 5
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(1)  # the training process's share; each worker is one core
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp, ids=args.ids, images_per_id=4, seed=0, workers=2, progress=False)
        overrides = [
            f"data.root={tmp}",
            f"data.synth_ids={args.ids}",
            "data.image_size=[384,128]",
            f"train.batch_size={args.batch}",
        ]
        cfg = load_config(None, overrides)
        data = load_data(cfg)
        sets = {"float": TrainSet(data, cfg, uint8=False), "uint8": TrainSet(data, cfg)}
        if "cached" in args.paths:  # built here, once, with 2 workers
            cached = load_config(None, [*overrides, "data.cache=uint8", "data.num_workers=2"])
            sets["cached"] = TrainSet(load_data(cached), cached)
        print(
            f"# loader throughput, {datetime.date.today()}, {platform.platform()}, nproc={cores}, "
            f"python {sys.version.split()[0]}, torch {torch.__version__}, batch {args.batch}"
        )
        print(
            "| path | workers | images/s | per worker | per core used | MB per batch |",
        )
        print("|---|---|---|---|---|---|")
        for workers in args.workers:
            for path in args.paths:
                ts = sets[path]
                rate = loader_rate(ts, args.batch, args.batches, workers)
                used = max(1, min(workers, cores))
                mb = sum(v.numel() * v.element_size() for v in ts[(0, 0)].values()) / 2**20
                print(
                    f"| {path} | {workers} | {rate:.0f} | {rate / max(workers, 1):.0f} | "
                    f"{rate / used:.0f} | {mb * args.batch:.1f} |",
                    flush=True,
                )
        if "uint8" in args.paths:
            rate = device_rate(sets["uint8"], args.batch, device, 5 if args.small else 20)
            print(
                f"\ndevice half (normalise + erase + patch labels) on {device}: {rate:.0f} "
                f"images/s, {1e3 * args.batch / rate:.2f} ms per batch of {args.batch}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
