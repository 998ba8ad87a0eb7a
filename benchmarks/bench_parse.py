"""Human-parsing speed: a SegFormer-B2-sized parser (random weights, the real architecture of
mattmdjaga/segformer_b2_clothes: hidden sizes 64/128/320/512, depths 3/4/6/3, decoder 768,
18 ATR classes) at its processor's 512x512 input, in images/s.

Two figures: the model's forward pass alone on random pixels, and `python -m bilma parse`
end to end on synthetic 384x128 pedestrians (JPEG decode, processor, forward, upsampling to
each image's size, argmax, label mapping, atomic PNG writes).

    .venv/bin/python benchmarks/bench_parse.py                       # CPU, fp32, batch 4
    .venv/bin/python benchmarks/bench_parse.py --device cuda --dtype bf16 --batch-size 32 \
        --batches 20 --images 2000 --workers 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ATR18 = [
    "Background",
    "Hat",
    "Hair",
    "Sunglasses",
    "Upper-clothes",
    "Skirt",
    "Pants",
    "Dress",
    "Belt",
    "Left-shoe",
    "Right-shoe",
    "Face",
    "Left-leg",
    "Right-leg",
    "Left-arm",
    "Right-arm",
    "Bag",
    "Scarf",
]


def b2_parser(folder: Path, size: int) -> Path:
    """Save a random SegFormer-B2 with ATR-18 labels and a `size` x `size` processor."""
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    config = SegformerConfig(
        hidden_sizes=[64, 128, 320, 512],
        depths=[3, 4, 6, 3],
        num_attention_heads=[1, 2, 5, 8],
        decoder_hidden_size=768,
        id2label=dict(enumerate(ATR18)),
        label2id={n: i for i, n in enumerate(ATR18)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def forward_rate(folder: Path, device: str, dtype: str, batch: int, batches: int, size: int):
    """Images/s of the forward pass alone (after one warm-up batch)."""
    from bilma.parse.run import load_parser

    model, _ = load_parser(folder, torch.device(device))
    x = torch.randn(batch, 3, size, size, device=device)
    bf16 = dtype == "bf16"

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            model(pixel_values=x).logits.float().argmax(1).cpu()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    n = batch * batches
    # CPU seconds per image (all threads): a figure that other load on the cores barely moves.
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n, params


def end_to_end_rate(folder: Path, device: str, batch: int, images: int, workers: int, tmp: Path):
    """Images/s of `parse_dataset` on `images` synthetic pedestrians (bf16 on cuda)."""
    from bilma.data import synth
    from bilma.parse.run import ParseOptions, parse_dataset

    ids = max(3, images // 4)
    synth.generate(tmp / "synth", ids=ids, images_per_id=4, seed=0, workers=2, progress=False)
    out = parse_dataset(
        ParseOptions(
            dataset="synth",
            root=tmp / "synth",
            model=folder,
            labels="ppp7",
            batch_size=batch,
            device=device,
            parsing_root=tmp / "parsed",
            workers=workers,
            progress=False,
        )
    )
    return out["images_per_s"], out["parsed"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="parser input, pixels per side")
    ap.add_argument("--images", type=int, default=16, help="end to end: synthetic images")
    ap.add_argument("--workers", type=int, default=2, help="end to end: decoding processes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = b2_parser(Path(tmp) / "b2", args.size)
        fwd, cpu_s, params = forward_rate(
            folder, args.device, args.dtype, args.batch_size, args.batches, args.size
        )
        e2e, n = end_to_end_rate(
            folder, args.device, args.batch_size, args.images, args.workers, Path(tmp)
        )
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "-"
    print(
        f"{datetime.date.today()} {platform.processor() or platform.machine()} "
        f"{os.cpu_count()} cpus, torch {torch.__version__} threads {torch.get_num_threads()}, "
        f"gpu {gpu}"
    )
    print(f"SegFormer-B2 parser, {params:.1f}M parameters, input {args.size}x{args.size}")
    print(
        f"forward  {args.device} {args.dtype} batch {args.batch_size} x {args.batches}: "
        f"{fwd:.2f} images/s, {cpu_s:.2f} CPU s/image"
    )
    print(
        f"end to end (python -m bilma parse, {n} images 384x128, workers {args.workers}"
        f"{', bf16' if args.device == 'cuda' else ', fp32'}): {e2e:.2f} images/s"
    )


if __name__ == "__main__":
    main()
