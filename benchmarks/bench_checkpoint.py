"""Checkpoint stall: how long the training loop is blocked by one `ckpt/last.pt` save, before
(the synchronous `checkpoint.save`: serialise, fsync, rename) and after issue 21 (the
`BackgroundSaver`: a host copy of the state in the training thread, the write on a thread).

The state is the trainer's: model, Adam moments, RNG, position; random weights of the tiny
model and of the ViT-B/16 one (no download). Also reported: how long the background write
takes, and how much a loop of matmuls on the device slows down while it runs (its CPU share
and the GIL; on a machine with few cores this is mostly CPU contention).

    .venv/bin/python benchmarks/bench_checkpoint.py                  # tiny and vitb16, CPU
    .venv/bin/python benchmarks/bench_checkpoint.py --small          # tiny only, 2 repeats
    python benchmarks/bench_checkpoint.py --device cuda              # on a GPU machine
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bilma.config import load_config
from bilma.model.bilma import build_model
from bilma.training import checkpoint


def trainer_state(model_name: str, device: torch.device) -> dict:
    """A last.pt payload as the trainer builds it, Adam moments filled by one step."""
    vitb16 = model_name == "vitb16"
    cfg = load_config(None, [f"model.name={model_name}", "data.image_size=[384,128]"])
    torch.manual_seed(0)
    # CUHK-PEDES sizes: CLIP's vocabulary, 11,003 training identities
    model = build_model(cfg, 49408 if vitb16 else 1024, 49407 if vitb16 else 1023, 11003)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return checkpoint.payload(
        model,
        cfg,
        optimizer=opt.state_dict(),
        scaler=None,
        rng=checkpoint.rng_state(),
        state={"epoch": 1, "step_in_epoch": 0, "global_step": 100, "best": {}},
        epoch=1,
        step=100,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loop_rate(device: torch.device, until, seconds: float | None = None) -> float:
    """Steps/s of a stand-in training loop (matmuls on the device, Python in between)."""
    x = torch.randn(512, 512, device=device)
    n, t0 = 0, time.perf_counter()
    while (seconds is not None and time.perf_counter() - t0 < seconds) or (
        seconds is None and until()
    ):
        y = x
        for _ in range(4):
            y = torch.tanh(y @ x)
        sync(device)
        n += 1
    return n / (time.perf_counter() - t0)


def measure(model_name: str, device: torch.device, repeats: int, folder: Path) -> dict:
    state = trainer_state(model_name, device)
    path = folder / f"{model_name}-last.pt"
    nbytes = checkpoint._nbytes(state)

    old = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        checkpoint.write(path, state)  # what the trainer did before issue 21
        old.append(time.perf_counter() - t0)

    saver = checkpoint.BackgroundSaver()
    stall, stall_synced, background, slowdown = [], [], [], []
    base = loop_rate(device, None, seconds=1.0)
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        saver.submit([(path, state)])
        t1 = time.perf_counter()
        sync(device)  # on a GPU: the host copies are queued in the stream; when are they done
        t2 = time.perf_counter()
        during = loop_rate(device, lambda: saver.busy)
        saver.wait()
        t3 = time.perf_counter()
        stall.append(t1 - t0)
        stall_synced.append(t2 - t0)
        background.append(t3 - t0)
        slowdown.append(1 - during / base if during else float("nan"))
    saver.close()
    path.unlink(missing_ok=True)
    return {
        "model": model_name,
        "MB": nbytes / 2**20,
        "old_s": statistics.median(old),
        "first_stall_s": stall[0],  # allocates the host buffers (pinned on a GPU)
        "stall_s": statistics.median(stall[1:] or stall),
        "stall_synced_s": statistics.median(stall_synced[1:] or stall_synced),
        "background_s": statistics.median(background),
        "slowdown": statistics.median(slowdown),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", nargs="+", default=["tiny", "vitb16"], choices=["tiny", "vitb16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="quick: tiny model, 2 repeats")
    ap.add_argument("--dir", default=None, help="folder to write in (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.small:
        args.models, args.repeats = ["tiny"], 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"# checkpoint stall, {datetime.date.today()}, {platform.platform()}, "
        f"nproc={os.cpu_count()}, device {device} ({name}), python {sys.version.split()[0]}, "
        f"torch {torch.__version__}"
    )
    print(
        "| model | last.pt MB | stall before (sync save) s | stall after s (first save) | "
        "after, copies done s | background write s | loop slowdown during it | stall ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for model in args.models:
            r = measure(model, device, args.repeats, Path(tmp))
            print(
                f"| {r['model']} | {r['MB']:.0f} | {r['old_s']:.3f} | {r['stall_s']:.3f} "
                f"({r['first_stall_s']:.3f}) | {r['stall_synced_s']:.3f} | "
                f"{r['background_s']:.3f} | {r['slowdown']:.0%} | "
                f"{r['old_s'] / max(r['stall_s'], 1e-9):.0f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
