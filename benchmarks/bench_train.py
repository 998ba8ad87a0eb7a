"""Training throughput of the full BiLMa step (SDM + ID + MLM + SemMIM, forward, backward,
Adam step) on random batches, so the model alone is measured (the loader has its own
benchmark). Prints samples/s, peak memory and, with FLOPs counted by torch's
FlopCounterMode, the model FLOPs utilisation against the device's peak.

    .venv/bin/python benchmarks/bench_train.py                       # tiny and vitb16, batch 8, CPU
    python benchmarks/bench_train.py --model vitb16 --batch 64 --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

# Dense bf16 peaks (TFLOP/s) of the GPUs this project meets; CPU utilisation is not reported.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def make_batch(n: int, size: tuple[int, int], vocab: int, classes: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    h, w = size
    length = 77
    ids = torch.zeros(n, length, dtype=torch.long)
    ids[:, 0] = vocab - 2
    ids[:, 1:30] = torch.randint(1, vocab - 3, (n, 29), generator=g)
    ids[:, 30] = vocab - 1
    labels = torch.full_like(ids, -100)
    labels[:, 3:30:6] = ids[:, 3:30:6]
    mlm = ids.clone()
    mlm[:, 3:30:6] = vocab - 3
    batch = {
        "images": torch.randn(n, 3, h, w, generator=g),
        "caption_ids": ids,
        "mlm_ids": mlm,
        "mlm_labels": labels,
        "patch_labels": torch.randint(0, classes, (n, (h // 16) * (w // 16)), generator=g),
        "pids": torch.arange(n) // 2,
    }
    return {k: v.to(device) for k, v in batch.items()}


def measure(model_name: str, batch_size: int, device: str, amp: str, steps: int) -> dict:
    from bilma.config import load_config
    from bilma.model.bilma import build_model

    size = (384, 128)
    vocab = 49408 if model_name == "vitb16" else 1024
    cfg = load_config(
        None,
        [
            f"model.name={model_name}",
            f"data.image_size={list(size)}",
            f"model.embed_dim={512 if model_name == 'vitb16' else 128}",
        ],
    )
    dev = torch.device(device)
    model = build_model(cfg, vocab, vocab - 1, num_ids=1000).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, eps=1e-3)
    batch = make_batch(batch_size, size, vocab, 20, dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()  # warm-up step, FLOPs counted
    flops = counter.get_total_flops()
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    out = {
        "model": model_name,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "batch": batch_size,
        "device": torch.cuda.get_device_name()
        if dev.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "amp": amp,
        "step_s": round(seconds, 3),
        "samples_per_s": round(batch_size / seconds, 1),
        "gflop_per_step": round(flops / 1e9, 1),
        "achieved_tflops": round(flops / seconds / 1e12, 3),
    }
    if dev.type == "cuda":
        out["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in out["device"]), None)
        if peak:
            out["mfu_percent"] = round(100 * flops / seconds / (peak * 1e12), 1)
    else:
        out["peak_rss_GiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("tiny", "vitb16"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON line (used by the driver)")
    args = ap.parse_args()
    if args.model:
        res = measure(args.model, args.batch, args.device, args.amp, args.steps)
        print(json.dumps(res) if args.json else res)
        return
    # Driver: each model in a fresh process, so peak RSS is that model's alone.
    print(
        f"# training throughput, {datetime.date.today()}, {platform.platform()}, nproc={os.cpu_count()}, torch {torch.__version__}"
    )
    rows = []
    for name, steps in (("tiny", 20), ("vitb16", 3)):
        cmd = [
            sys.executable,
            __file__,
            "--model",
            name,
            "--batch",
            str(args.batch),
            "--steps",
            str(steps),
            "--json",
        ]
        line = (
            subprocess.run(cmd, capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append(json.loads(line))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
