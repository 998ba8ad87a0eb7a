"""The trainer's own step, timed: `Trainer._step` (the code a run uses: its optimizer and
parameter groups, its autocast and scaler, its logging, its compiled network) on random
batches with realistic caption lengths, so the model and the step alone are measured (the
loader has its own benchmark).

Reports per configuration (model x recipe x eager/compiled):
- host_ms: wall time of one `_step` call as the host sees it (on a GPU: the time to issue the
  step's work, which the device must not outrun; on a CPU: the whole step);
- cpu_ms: the process's CPU time in that call, all threads (on a shared CPU less disturbed
  by other load than the wall time);
- opt_ms: of which the optimizer step (wall, host side);
- syncs: device-to-host syncs per step, counted by `bilma.training.syncs.SyncCounter` over
  `--log-every` steps (so one logging read is in the window); on CUDA also cuda_syncs, the
  warnings of `torch.cuda.set_sync_debug_mode("warn")` over as many steps;
- samples/s (wall, device synchronised), GFLOP/sample (FlopCounterMode over one forward and
  backward), MFU against `--peak-tflops` (or the card's dense bf16 peak when known);
- peak memory (GPU) or peak RSS (CPU).

    .venv/bin/python benchmarks/bench_train.py                    # tiny + vitb16, batch 8, CPU
    python3 benchmarks/bench_train.py --models vitb16 --batch 64 --device cuda --amp bf16 \\
        --modes eager compiled --peak-tflops 989
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peaks (TFLOP/s) of the GPUs this project meets; CPU utilisation is not reported.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
RECIPES = {"bilma": "configs/cuhk_pedes.yaml", "irra": "configs/irra_parity.yaml"}
SIZE = (384, 128)


def make_batches(n: int, count: int, vocab: int, classes: int, length: int = 77) -> list[dict]:
    """`count` random batches; caption lengths drawn from 12-60 tokens (CUHK-PEDES: ~30 on
    average), so the longest caption differs from batch to batch as in a real epoch; MLM
    masking as the loader does it."""
    from bilma.data.datasets import mask_tokens

    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    h, w = SIZE
    out = []
    for _ in range(count):
        ids = np.zeros((n, length), dtype=np.int64)
        mlm, labels = np.zeros_like(ids), np.zeros_like(ids)
        for i, k in enumerate(rng.integers(12, 61, n)):
            ids[i, 0], ids[i, 1 : k - 1], ids[i, k - 1] = (
                vocab - 2,
                rng.integers(1, vocab - 3, k - 2),
                vocab - 1,
            )
            mlm[i], labels[i] = mask_tokens(ids[i], rng, 0.15, vocab - 3)
        out.append(
            {
                # As the loader ships them: uint8 images, an erasing box each (height 0:
                # none), uint8 parse maps; the trainer finishes them on the device.
                "images": torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8),
                "erase": erase_boxes(n, h, w, g),
                "parse_maps": torch.randint(0, classes, (n, h, w), generator=g, dtype=torch.uint8),
                "caption_ids": torch.from_numpy(ids),
                "mlm_ids": torch.from_numpy(mlm),
                "mlm_labels": torch.from_numpy(labels),
                "pids": torch.arange(n) // 2,
                "index": torch.arange(n),
            }
        )
    return out


def erase_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """int [n, 4] (top, left, height, width): half the images get a box, as IRRA's p = 0.5."""
    bh = torch.randint(h // 8, h // 2, (n,), generator=g) * (torch.rand(n, generator=g) < 0.5)
    bw = torch.randint(w // 8, w // 2, (n,), generator=g)
    top = torch.randint(0, h // 2, (n,), generator=g)
    left = torch.randint(0, w // 2, (n,), generator=g)
    return torch.stack([top, left, bh, bw], 1)


def make_trainer(cfg, vocab: int, device: torch.device, runs: str):
    """A Trainer set up as a run sets it up, with a stand-in for the dataset (no files)."""
    from bilma.device import Dist
    from bilma.runs.trial_dir import TrialDir
    from bilma.training import trainer as tr
    from bilma.training.sinks import FanOutSink

    data = SimpleNamespace(
        tokenizer=SimpleNamespace(vocab_size=vocab, eot_id=vocab - 1, mask_id=vocab - 3),
        num_train_ids=1000,
    )
    tr.load_data = lambda *a, **k: data
    tr.TrainSet = lambda *a, **k: None
    t = tr.Trainer(cfg, TrialDir.for_config(cfg), Dist(), device, FanOutSink(), progress=False)
    t.setup()
    if hasattr(t, "build_net"):
        t.build_net()  # DDP (not here: one process) and torch.compile, as fit() does
    else:
        t.net = t.model  # before issue 21
    t.net.train()
    # The float half of the loader's augmentation, on the device, as `_setup_loop` sets it.
    from bilma.data.parsing import get_label_set
    from bilma.data.transforms import TrainTransform

    transform = TrainTransform(tuple(cfg.data.image_size), erase=cfg.data.erase)
    t.augment = transform.on_device(get_label_set(cfg.mim.labels).num_classes, cfg.mim.label_rule)
    t.steps = 10**9
    return t


def begin_epoch(t, log_every: int):
    """The trainer's progress bar (and device-side loss sums) for an epoch of steps."""
    from bilma.training.progress import Progress

    if hasattr(t, "_begin_epoch"):
        t.sampler = SimpleNamespace(set_epoch=lambda *a, **k: None)
        return t._begin_epoch()
    return Progress(0, 1, 10**9, log_every, enabled=False)  # before issue 21


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from bilma.config import load_config
    from bilma.training.syncs import SyncCounter

    dev = torch.device(args.device)
    vocab = 49408 if args.model == "vitb16" else 1024
    overrides = [
        "model.pretrained=null",
        f"model.name={args.model}",
        f"model.embed_dim={512 if args.model == 'vitb16' else 128}",
        "data.num_workers=0",
        f"train.batch_size={args.batch}",
        f"train.amp='{args.amp}'",  # quoted: older code took only a quoted off
        f"train.log_every={args.log_every}",
        "tracking.enabled=false",
        f"paths.runs={tempfile.mkdtemp(prefix='bench_train_')}",
    ]
    if args.mode == "compiled":
        overrides.append("train.compile=true")
    cfg = load_config(ROOT / RECIPES[args.recipe], overrides)
    t = make_trainer(cfg, vocab, dev, cfg.paths.runs)
    batches = make_batches(args.batch, 4, vocab, 20, cfg.data.text_length)
    bar = begin_epoch(t, cfg.train.log_every)
    opt_s = [0.0]
    t0_opt = [0.0]
    t.optimizer.register_step_pre_hook(lambda *_: t0_opt.__setitem__(0, time.perf_counter()))
    t.optimizer.register_step_post_hook(
        lambda *_: opt_s.__setitem__(0, opt_s[0] + time.perf_counter() - t0_opt[0])
    )
    i = [0]

    cpu = [0.0]

    def step() -> float:
        b = batches[i[0] % len(batches)]
        i[0] += 1
        t0, c0 = time.perf_counter(), time.process_time()
        t._step(dict(b), bar)
        cpu[0] += time.process_time() - c0
        return time.perf_counter() - t0

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # compiles, and every caption-length bucket once
        step()
    sync()
    first_s = time.perf_counter() - t0
    model = t.model

    # the batch as the step gives it to the model (captions in their length bucket, images
    # finished on the device)
    def prepare(b: dict) -> dict:
        return t.augment(t._prepare(b))

    with (
        FlopCounterMode(display=False) as counter,
        torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"),
    ):
        model(prepare(dict(batches[0])))["loss"].backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops() / args.batch
    with SyncCounter(optimizers=[t.optimizer], trace=args.trace) as syncs:
        for _ in range(args.log_every):
            step()
    sync()
    cuda_syncs = None
    if dev.type == "cuda":  # the device's own count, as a check of the counter's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(args.log_every):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        cuda_syncs = sum("synchroniz" in str(w.message) for w in caught) / args.log_every
    opt_s[0] = cpu[0] = 0.0
    host = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        host.append(step())
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    out: dict[str, Any] = {
        "model": args.model,
        "recipe": args.recipe,
        "mode": args.mode,
        "batch": args.batch,
        "amp": args.amp,
        "device": torch.cuda.get_device_name()
        if dev.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "groups": len(t.optimizer.param_groups),
        "host_ms": round(1000 * sum(host) / len(host), 1),
        "cpu_ms": round(1000 * cpu[0] / args.steps, 1),
        "opt_ms": round(1000 * opt_s[0] / args.steps, 1),
        "syncs": round(syncs.count / args.log_every, 2),
        **({"cuda_syncs": cuda_syncs} if cuda_syncs is not None else {}),
        "samples_per_s": round(args.batch / seconds, 1),
        "gflop_per_sample": round(flops / 1e9, 1),
        "warmup_s": round(first_s, 1),
    }
    name = out["device"]
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak:
        out["mfu_percent"] = round(100 * flops * args.batch / seconds / (peak * 1e12), 1)
    if dev.type == "cuda":
        out["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        out["peak_rss_GiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if args.trace:
        out["sync_sites"] = dict(syncs.where.most_common())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "vitb16"], choices=("tiny", "vitb16"))
    ap.add_argument("--recipes", nargs="+", default=["bilma", "irra"], choices=tuple(RECIPES))
    ap.add_argument("--modes", nargs="+", default=["eager"], choices=("eager", "compiled"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    ap.add_argument("--steps", type=int, help="timed steps (default: tiny 10, vitb16 2)")
    ap.add_argument(
        "--warmup", type=int, help="untimed steps first (default: eager 1, compiled 4: the buckets)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads on a CPU (1: no spinning threads)"
    )
    ap.add_argument("--log-every", type=int, default=4, help="train.log_every; syncs window")
    ap.add_argument("--peak-tflops", type=float, help="device peak for the MFU (TFLOP/s)")
    ap.add_argument("--trace", action="store_true", help="name the lines that synced")
    ap.add_argument(
        "--backend", help="torch.compile backend (default inductor; aot_eager: capture only)"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a driver's child
    args = ap.parse_args()
    if args.one:
        args.model, args.recipe, args.mode = args.models[0], args.recipes[0], args.modes[0]
        args.steps = args.steps or (10 if args.model == "tiny" else 2)
        args.warmup = args.warmup or (4 if args.mode == "compiled" else 1)
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        if args.backend:  # the trainer's torch.compile calls, with this backend
            torch.compile = functools.partial(torch.compile, backend=args.backend)
        print(json.dumps(measure(args)))
        return 0
    print(
        f"# the trainer's step, {datetime.date.today()}, {platform.platform()}, "
        f"nproc={os.cpu_count()}, torch {torch.__version__}"
    )
    rows = []
    for model in args.models:
        for recipe in args.recipes:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--one", "--models", model, "--recipes", recipe]
                cmd += ["--modes", mode, "--batch", str(args.batch), "--device", args.device]
                cmd += ["--amp", args.amp, "--threads", str(args.threads)]
                cmd += ["--warmup", str(args.warmup)] if args.warmup else []
                cmd += ["--log-every", str(args.log_every)]
                cmd += ["--steps", str(args.steps)] if args.steps else []
                cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
                cmd += ["--trace"] if args.trace else []
                cmd += ["--backend", args.backend] if args.backend else []
                row = {"model": model, "recipe": recipe, "mode": mode}
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    if p.returncode == 0:
                        row = json.loads(p.stdout.strip().splitlines()[-1])
                    else:
                        row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:120]
                except subprocess.TimeoutExpired:
                    row["error"] = f"timed out after {args.timeout:.0f} s"
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    keys = [k for k in rows[0] if k != "sync_sites"]
    for r in rows:
        keys += [k for k in r if k not in keys and k != "sync_sites"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    # A row that failed fails the command (gpu_check.sh then says the part failed).
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
