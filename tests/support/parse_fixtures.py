"""A randomly initialised tiny SegFormer saved as a parser folder, with a chosen id2label."""

from __future__ import annotations

from pathlib import Path

from support.data_fixtures import make_cuhk, make_icfg, make_rstpreid

__all__ = ["ATR18_NAMES", "make_cuhk", "make_icfg", "make_parser", "make_rstpreid"]

ATR18_NAMES = [
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
"""mattmdjaga/segformer_b2_clothes's id2label, as its config.json spells it."""


def make_parser(
    folder: Path, names: list[str] = ATR18_NAMES, size: int = 32, seed: int = 0
) -> Path:
    """Save a tiny random SegFormer and its image processor (`size` x `size` input) in `folder`."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from transformers.models.segformer.image_processing_pil_segformer import (
        SegformerImageProcessorPil,
    )

    torch.manual_seed(seed)
    config = SegformerConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)
    return folder
