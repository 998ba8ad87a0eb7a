"""Shared fixtures: one small synthetic dataset per session and tiny training configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYNTH_KW = dict(ids=30, images_per_id=2, seed=5, height=128, width=64, progress=False)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """30 identities x 2 images at 128x64 (24 train ids), with its tokenizer."""
    from bilma.config import load_config
    from bilma.data import datasets, synth

    root = tmp_path_factory.mktemp("synth_small")
    synth.generate(root, **SYNTH_KW)
    datasets.ensure_synthetic(load_config(None, [f"data.root={root}"]).data)
    return root


def tiny_overrides(root, runs, *extra: str) -> list[str]:
    """A tiny model on `synth_small` that trains in seconds on the CPU."""
    return [
        f"data.root={root}",
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
        "train.epochs=2",
        "train.batch_size=8",
        "train.max_steps_per_epoch=6",
        "train.deterministic=true",
        "eval.batch_size=64",
        f"paths.runs={runs}",
        "tracking.enabled=false",
        *extra,
    ]
