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
