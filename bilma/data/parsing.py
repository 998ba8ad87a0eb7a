"""Human-parsing label sets, parse-map loading and SemMIM patch labels.

SemMIM (METHOD.md, "SemMIM") predicts, for every masked image patch, the body-part class that
an offline human parser gave it. This module reads the parse maps from disk with actionable
errors and reduces a (transformed) parse map to one label per patch. The parsers' label sets
(SCHP conventions) live in `bilma.labels` (shared with the model) and are re-exported here.

Where parse maps live (the user-facing contract)
-------------------------------------------------
For an image at ``<dataset root>/<images folder>/<relpath>`` (for CUHK-PEDES the images folder
is ``imgs``, so ``relpath`` is e.g. ``CUHK01/0001001.png``) the parse map is::

    <parsing_root>/<labelset>/<relpath with its extension replaced by .png>

``parsing_root`` defaults to ``<dataset root>/parsing`` and ``labelset`` is one of
``lip20``, ``atr18``, ``ppp7``. Each map is an 8-bit single-channel PNG (mode ``L`` or ``P``;
the raw class indices are read, never an RGB rendering of a palette), has exactly the size of
its image, and holds class ids ``0..num_classes-1`` of its label set (0 = background). SCHP's
``simple_extractor.py`` writes exactly this (palette PNGs) when run per folder with
``--dataset lip|atr|pascal``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bilma.data.formats import parse_map_path  # the layout above; torch-free for launchers
from bilma.data.records import DataError
from bilma.labels import LABEL_SETS, LabelSet, get_label_set

__all__ = [
    "LABEL_SETS",
    "LabelSet",
    "get_label_set",
    "load_parse_map",
    "parse_map_path",
    "patch_labels",
]


def load_parse_map(
    path: str | Path,
    label_set: str | LabelSet,
    expected_size: tuple[int, int] | None = None,
    *,
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Read a parse map as uint8 ``[H, W]`` class ids and check it against its image.

    ``expected_size`` is the image's ``(W, H)`` (PIL order); ``image_path`` only improves the
    messages. Every problem raises `DataError` naming the file and the fix.
    """
    ls = get_label_set(label_set)
    path = Path(path)
    for_image = f" for image {image_path}" if image_path is not None else ""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in ("L", "P"):
                raise DataError(
                    f"parse map {path} is a mode-{mode} image, expected an 8-bit single-channel "
                    "PNG (mode L or P) of class ids: save the parser's raw label map, not a "
                    "colour visualisation"
                )
            # On an L or P image this gives the stored indices (no palette lookup); a copy,
            # so callers get a writable array.
            arr = np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(
            f"no parse map at {path}{for_image}: run your parser ({ls.name} labels, e.g. SCHP) "
            "over the images into that layout (see bilma/data/parsing.py), "
            "or set mim.target to pixel/none"
        ) from None
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(
            f"cannot read parse map {path}{for_image} ({type(e).__name__}: {e}): "
            "regenerate it as an 8-bit PNG"
        ) from None
    h, w = arr.shape
    if expected_size is not None and (w, h) != tuple(expected_size):
        ew, eh = expected_size
        its_image = f"its image {image_path}" if image_path is not None else "its image"
        raise DataError(
            f"parse map {path} is {w}x{h} but {its_image} is {ew}x{eh} (W x H): "
            "regenerate it from the original image, without resizing"
        )
    top = int(arr.max()) if arr.size else 0
    if top >= ls.num_classes:
        raise DataError(
            f"parse map {path} has label {top}, outside {ls.name} (0..{ls.num_classes - 1}): "
            "was it made with another label set? set mim.labels to the one it was made with "
            f"({', '.join(LABEL_SETS)})"
        )
    return arr


@lru_cache(maxsize=16)
def _patch_offsets(h: int, w: int, patch: int, num_classes: int, device: str) -> torch.Tensor:
    """``patch_index * num_classes`` for every pixel, int64 ``[H, W]`` (cached per shape and
    device, so the trainer's per-batch call copies nothing to the device)."""
    gw = w // patch
    idx = (torch.arange(h) // patch)[:, None] * gw + (torch.arange(w) // patch)[None, :]
    return (idx * num_classes).to(device)


def patch_labels(
    label_map: torch.Tensor | np.ndarray,
    patch: int,
    num_classes: int,
    rule: Literal["majority", "soft"] = "majority",
    check: bool = True,
) -> torch.Tensor:
    """Reduce a ``[H, W]`` (or batched ``[B, H, W]``) class-id map to one target per
    ``patch x patch`` patch, on the map's device.

    Patches are ordered row-major over the ``H/patch x W/patch`` grid (the ViT token order).
    ``"majority"``: int64 ``[P]``, the most frequent class; a tie goes to the SMALLER class id
    (so background, id 0, wins ties). ``"soft"``: float32 ``[P, num_classes]`` class
    histograms normalised to sum to 1 (a leading ``B`` when batched). One ``scatter_add`` over
    ``patch_index * C + label``, no loop over patches. Ids are range-checked on the CPU only
    (on a GPU that check would stall the step), and not at all with ``check=False``: the
    trainer's batches, whose maps were checked when read.
    """
    arr = (
        torch.from_numpy(np.asarray(label_map)) if isinstance(label_map, np.ndarray) else label_map
    )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"patch_labels expects one [H, W] map (or a [B, H, W] batch), got shape {tuple(arr.shape)}"
        )
    if arr.dtype.is_floating_point or arr.dtype.is_complex:
        raise ValueError(f"patch_labels expects integer class ids, got dtype {arr.dtype}")
    h, w = arr.shape[-2:]
    if patch <= 0 or h % patch or w % patch:
        raise ValueError(f"map size {h}x{w} (H x W) is not a multiple of the patch size {patch}")
    if rule not in ("majority", "soft"):
        raise ValueError(f"unknown patch label rule {rule!r}; use 'majority' or 'soft'")
    # An out-of-range id would be counted in a neighbouring patch's bins: check, it is cheap.
    if check and arr.device.type == "cpu" and arr.numel():
        lo, hi = int(arr.min()), int(arr.max())
        if hi >= num_classes or lo < 0:
            raise ValueError(
                f"label map holds ids outside 0..{num_classes - 1} (min {lo}, max {hi})"
            )
    batch = arr.reshape(-1, h * w)
    n_patches = (h // patch) * (w // patch)
    offsets = _patch_offsets(h, w, patch, num_classes, str(arr.device)).view(1, -1)
    keys = offsets + batch.to(torch.int64)
    counts = torch.zeros(len(batch), n_patches * num_classes, dtype=torch.int32, device=arr.device)
    counts.scatter_add_(1, keys, torch.ones_like(keys, dtype=torch.int32))
    counts = counts.view(*arr.shape[:-2], n_patches, num_classes)
    if rule == "majority":
        # argmax returns the first maximum, i.e. the smallest class id on ties.
        return counts.argmax(dim=-1)
    return counts.to(torch.float32) / float(patch * patch)
