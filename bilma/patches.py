"""Image patches: the ViT patch size and the pixel layout of a patch.

Shared by the data pipeline (SemMIM patch labels), the model (pixel MIM targets) and the
encoders; it sits below `bilma.data` and `bilma.model` so that neither imports the other.
"""

from __future__ import annotations

import torch

__all__ = ["PATCH", "patchify"]

PATCH = 16  # pixels per side of a ViT-B/16 patch (and of the tiny model's)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[3, H, W]`` or ``[B, 3, H, W]`` -> ``[..., P, patch*patch*3]`` in MAE order.

    Patches are row-major over the grid (the ViT token order); each is flattened as
    ``(patch, patch, 3)``, i.e. pixel by pixel with the channels innermost.
    """
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"patchify expects [3, H, W] or [B, 3, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if patch <= 0 or h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} (H x W) is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    lead = images.shape[:-3]
    x = images.reshape(*lead, 3, gh, patch, gw, patch)
    x = x.movedim(-5, -1)  # [..., gh, p, gw, p, 3]
    x = x.transpose(-4, -3)  # [..., gh, gw, p, p, 3]
    return x.reshape(*lead, gh * gw, patch * patch * 3)
