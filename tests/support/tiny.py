"""The tiny training setup every test shares: `from support.tiny import tiny_overrides`."""

from __future__ import annotations

# 30 identities x 2 images at 128x64: 24 train, 3 val, 3 test identities.
SYNTH_OVERRIDES = [
    "data.synth_ids=30",
    "data.synth_images_per_id=2",
    "data.synth_seed=5",
    "data.image_size=[128,64]",
]


def tiny_overrides(root, runs, *extra: str) -> list[str]:
    """A tiny model on `synth_small` that trains in seconds on the CPU."""
    return [
        f"data.root={root}",
        *SYNTH_OVERRIDES,
        "data.text_length=48",
        "data.num_workers=0",
        "model.name=tiny",
        "model.embed_dim=64",
        "model.cross_depth=1",
        "model.cross_heads=4",
        "mim.depth=1",
        "optim.lr=0.001",
        "optim.warmup_epochs=1",
        "train.epochs=2",
        "train.batch_size=8",
        "train.max_steps_per_epoch=6",
        "train.deterministic=true",
        "eval.batch_size=64",
        f"paths.runs={runs}",
        "tracking.enabled=false",
        *extra,
    ]


def random_batch(
    n: int = 4,
    size: tuple[int, int] = (128, 64),
    vocab: int = 50,
    length: int = 16,
    classes: int = 20,
    seed: int = 0,
) -> dict:
    """A training batch of random tensors for a model built with `vocab` tokens (EOT the
    largest id, SOT and the MLM mask below it): captions of different lengths, a few MLM
    positions each, per-patch parser classes, two images per identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    eot, sot, mask = vocab - 1, vocab - 2, vocab - 3
    ids = torch.zeros(n, length, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i in range(n):
        k = 4 + (3 * i) % (length - 4)  # caption length, SOT and EOT included
        ids[i, 0], ids[i, k - 1] = sot, eot
        ids[i, 1 : k - 1] = torch.randint(1, mask, (k - 2,), generator=g)
        labels[i, 1 : k - 1 : 2] = ids[i, 1 : k - 1 : 2]
    mlm_ids = torch.where(labels != -100, torch.full_like(ids, mask), ids)
    h, w = size
    return {
        "images": torch.randn(n, 3, h, w, generator=g),
        "caption_ids": ids,
        "mlm_ids": mlm_ids,
        "mlm_labels": labels,
        "patch_labels": torch.randint(0, classes, (n, (h // 16) * (w // 16)), generator=g),
        "pids": torch.arange(n) // 2,
    }
