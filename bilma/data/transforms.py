"""Image transforms (IRRA's recipe) with the parse map moved in lockstep; no torchvision.

Train: resize to (H, W), horizontal flip, pad + random crop back to (H, W), to [0, 1], CLIP
normalisation, random erasing. The parse map follows every geometric step (nearest resize;
on a flip its left/right classes swap through the label set's ``flip_lut``; padding is
background 0) and ignores the photometric ones (erasing). Test: resize, to [0, 1], normalise.

The recipe runs in two halves so that a fast GPU is fed uint8 (issue 21): `TrainTransform.draw`
(in a DataLoader worker) does the geometry on uint8 and draws every random number, the erasing
box included; `DeviceAugment` (in the trainer, on the device, per batch) does the float work:
normalisation, filling the erased boxes, and the parse maps' patch labels. `TrainTransform`
called as a function runs both halves on the CPU, one image at a time: the same numbers.

Parity with IRRA's ``build_transforms`` (``datasets/build.py``; read in its code):
``T.Resize((h, w))`` uses torchvision's default interpolation, BILINEAR (PIL's, on a PIL
image); ``T.RandomErasing(scale=(0.02, 0.4), value=mean)`` comes after ``Normalize``, so
erased pixels hold the CLIP mean numbers in normalised units. Those are the defaults here;
each is a constructor argument.

Randomness comes only from the ``numpy.random.Generator`` passed to each call, so a
dataloader worker seeded once gives a reproducible stream. Per-image work is PIL resize +
numpy slicing on uint8 + one float pass; no large temporaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from bilma.data.parsing import patch_labels
from bilma.patches import PATCH, patchify

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DeviceAugment",
    "Drawn",
    "Normalize",
    "TestTransform",
    "TrainTransform",
    "fill_boxes",
    "patchify",
    "unnormalize",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _resample(interpolation: str | int) -> Image.Resampling:
    if isinstance(interpolation, str):
        try:
            return _RESAMPLE[interpolation.lower()]
        except KeyError:
            raise ValueError(
                f"unknown interpolation {interpolation!r}; use one of {', '.join(_RESAMPLE)}"
            ) from None
    return Image.Resampling(interpolation)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be a positive (H, W), got {tuple(size)}")
    return h, w


class Normalize:
    """uint8 ``[..., 3, H, W]`` -> float32 ``(x / 255 - mean) / std``, on the input's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        if m.shape != (3,) or s.shape != (3,) or bool((s <= 0).any()):
            raise ValueError("mean and std need 3 values each, std > 0")
        # Fold /255, -mean and /std into one multiply-add.
        self.scale = (1.0 / (255.0 * s)).to(torch.float32).view(3, 1, 1)
        self.bias = (-m / s).to(torch.float32).view(3, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:  # copied once per device, not per batch
            self._on[device] = (self.scale.to(device), self.bias.to(device))
        return self._on[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # One conversion and two in-place passes (measured faster than strided float ops);
        # the same operations in the same order on any device, so the same numbers.
        scale, bias = self._constants(x.device)
        return x.to(torch.float32).mul_(scale).add_(bias)


def fill_boxes(images: torch.Tensor, boxes: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Fill one box per image of float ``[B, C, H, W]`` with ``value`` (``[C, 1, 1]`` or one
    number); ``boxes`` is int ``[B, 4]`` (top, left, height, width), height 0 for none.

    One mask for the whole batch: no per-image loop and no device-to-host read.
    """
    _, _, h, w = images.shape
    dev = images.device
    top, left, bh, bw = (b.view(-1, 1, 1) for b in boxes.to(dev, torch.int64).unbind(1))
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)
    return torch.where(inside[:, None], value.to(dev, images.dtype), images)


def to_rgb_array(
    image: Image.Image | np.ndarray, size_wh: tuple[int, int], resample: int
) -> np.ndarray:
    """Resize (skipped when already the size) and return uint8 ``[H, W, 3]``. An array is
    taken as uint8 ``[H, W, 3]`` RGB (an image of the uint8 cache, already at the size)."""
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (size_wh[1], size_wh[0]):
            return image
        image = Image.fromarray(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != size_wh:
        image = image.resize(size_wh, resample)
    return np.asarray(image)


def resize_map(parse_map: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """A parse map at ``(W, H)``: nearest neighbour, so no new class ids (skipped when already
    the size)."""
    pmap = np.asarray(parse_map, dtype=np.uint8)
    if pmap.shape != (size_wh[1], size_wh[0]):
        pmap = np.asarray(Image.fromarray(pmap).resize(size_wh, Image.Resampling.NEAREST))
    return pmap


def _shift(src: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = src[y + dy, x + dx]``, zero where that falls outside ``src``.

    Pad-by-p then crop at offset (i, j) equals this with ``dy = i - p, dx = j - p``, without
    building the padded array. ``src`` may be a flipped view: this is the only copy.
    """
    h, w = src.shape[:2]
    out = np.zeros(src.shape, dtype=src.dtype)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = src[
        max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


@dataclass
class Drawn:
    """A training image after the worker's half of the recipe."""

    image: torch.Tensor  # uint8 [3, H, W]
    parse_map: torch.Tensor | None  # uint8 [H, W], moved with the image
    erase: torch.Tensor  # int32 [4]: top, left, height, width of the box to erase (height 0: none)


class DeviceAugment:
    """The float half of the training recipe, on whole batches on the training device.

    ``batch["images"]`` uint8 ``[B, 3, H, W]`` becomes the normalised float32 images with the
    boxes of ``batch["erase"]`` filled; ``batch["parse_maps"]`` uint8 ``[B, H, W]`` (when
    present) becomes ``batch["patch_labels"]``. Elementwise work and no device-to-host read:
    it runs in the stream of the step, the same numbers as the per-image CPU path.
    """

    def __init__(
        self,
        normalize: Normalize,
        erase_value: torch.Tensor,
        num_classes: int | None = None,
        rule: Literal["majority", "soft"] = "majority",
    ) -> None:
        self.normalize, self.erase_value = normalize, erase_value
        self.num_classes, self.rule = num_classes, rule
        self._value_on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        images = self.normalize(out["images"])
        boxes = out.pop("erase", None)
        if boxes is not None:
            dev = images.device
            if dev not in self._value_on:  # copied once per device, not per batch
                self._value_on[dev] = self.erase_value.to(dev)
            images = fill_boxes(images, boxes, self._value_on[dev])
        out["images"] = images
        maps = out.pop("parse_maps", None)
        if maps is not None:
            if self.num_classes is None:
                raise ValueError("parse maps in the batch but no num_classes to label them")
            # The maps were range-checked when read: no check that would read the device.
            out["patch_labels"] = patch_labels(
                maps, PATCH, self.num_classes, self.rule, check=False
            )
        return out


class TrainTransform:
    """IRRA's train augmentation; the optional parse map follows the geometric steps.

    ``size`` is ``(H, W)``. ``hflip``/``erase`` are probabilities, ``pad`` the pad before the
    random crop (0 disables both). Erasing follows torchvision's ``RandomErasing`` (up to 10
    attempts at an area fraction in ``erase_scale`` and a log-uniform aspect ratio in
    ``erase_ratio``) and fills with ``erase_value`` in normalised units (a scalar or one value
    per channel). The defaults are IRRA's; torchvision's own are ``erase_scale=(0.02, 0.33),
    erase_value=0``.
    """

    def __init__(
        self,
        size: tuple[int, int],
        hflip: float = 0.5,
        pad: int = 10,
        erase: float = 0.5,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        *,
        interpolation: str | int = "bilinear",
        erase_scale: tuple[float, float] = (0.02, 0.4),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
        erase_value: float | Sequence[float] = CLIP_MEAN,
    ) -> None:
        self.size = _check_size(size)
        for name, p in (("hflip", hflip), ("erase", erase)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if not (0 < erase_scale[0] <= erase_scale[1] <= 1 and 0 < erase_ratio[0] <= erase_ratio[1]):
            raise ValueError(f"bad erase_scale {erase_scale} or erase_ratio {erase_ratio}")
        self.hflip, self.pad, self.erase = float(hflip), int(pad), float(erase)
        self.resample = _resample(interpolation)
        self.erase_scale = (float(erase_scale[0]), float(erase_scale[1]))
        self.log_ratio = (math.log(erase_ratio[0]), math.log(erase_ratio[1]))
        v = torch.as_tensor(erase_value, dtype=torch.float32).reshape(-1)
        if v.numel() not in (1, 3):
            raise ValueError(f"erase_value must be a scalar or 3 values, got {erase_value}")
        self.erase_value = v.view(-1, 1, 1)
        self.normalize = Normalize(mean, std)

    def __call__(
        self,
        image: Image.Image,
        parse_map: np.ndarray | None,
        rng: np.random.Generator,
        flip_lut: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both halves on the CPU: float32 ``[3, H, W]`` and, if a map was given, uint8
        ``[H, W]`` (the same numbers as `draw` followed by `DeviceAugment`)."""
        d = self.draw(image, parse_map, rng, flip_lut)
        img = self.normalize(d.image)
        if int(d.erase[2]):
            img = fill_boxes(img[None], d.erase[None], self.erase_value)[0]
        return img, d.parse_map

    def draw(
        self,
        image: Image.Image | np.ndarray,
        parse_map: np.ndarray | None,
        rng: np.random.Generator,
        flip_lut: np.ndarray | None = None,
    ) -> Drawn:
        """The worker's half: resize, flip, pad + crop on uint8, and every random draw.

        ``parse_map`` is uint8 ``[h, w]`` at the image's own size; ``flip_lut`` is its label
        set's (required with a map: a flip without it would leave left/right classes wrong).
        """
        h, w = self.size
        arr = to_rgb_array(image, (w, h), self.resample)
        pmap = None
        if parse_map is not None:
            if flip_lut is None:
                raise ValueError(
                    "a parse map needs its label set's flip_lut (identity for sets without "
                    "left/right classes) so that flips swap left and right"
                )
            ih, iw = image.shape[:2] if isinstance(image, np.ndarray) else image.size[::-1]
            if parse_map.shape != (ih, iw):
                raise ValueError(
                    f"parse map is {parse_map.shape[1]}x{parse_map.shape[0]} but the image is "
                    f"{iw}x{ih} (W x H)"
                )
            pmap = resize_map(parse_map, (w, h))

        # Random draws in torchvision's order: flip, crop offsets, erasing.
        flip = rng.random() < self.hflip
        if flip:
            arr = arr[:, ::-1]  # views; the copy happens in _shift / below
            if pmap is not None:
                pmap = pmap[:, ::-1]
        if self.pad > 0:
            # RandomCrop on the padded image: top/left offset uniform in 0..2*pad.
            dy = int(rng.integers(0, 2 * self.pad + 1)) - self.pad
            dx = int(rng.integers(0, 2 * self.pad + 1)) - self.pad
            arr = _shift(arr, dy, dx)
            if pmap is not None:
                pmap = _shift(pmap, dy, dx)
        if pmap is not None and flip:
            # After the flip a left arm sits where a right arm was: relabel it.
            pmap = np.asarray(flip_lut, dtype=np.uint8)[pmap]

        # The uint8 CHW copy is the only copy of the image (a quarter of the float one).
        img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        box = (0, 0, 0, 0)
        if self.erase > 0 and rng.random() < self.erase:
            box = self._erase_box(h, w, rng)
        target = None
        if pmap is not None:
            # Never hand back the caller's array or PIL's read-only buffer.
            fresh = (
                pmap.flags.owndata
                and pmap.flags.writeable
                and pmap.flags.c_contiguous
                and not np.may_share_memory(pmap, parse_map)
            )
            target = torch.from_numpy(pmap if fresh else pmap.copy())
        return Drawn(img, target, torch.tensor(box, dtype=torch.int32))

    def _erase_box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """torchvision ``RandomErasing.get_params``: (top, left, height, width), all 0 when
        10 attempts find no box that fits."""
        area = h * w
        for _ in range(10):
            erase_area = area * rng.uniform(*self.erase_scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            eh = int(round(math.sqrt(erase_area * aspect)))
            ew = int(round(math.sqrt(erase_area / aspect)))
            if not (eh < h and ew < w):
                continue
            i = int(rng.integers(0, h - eh + 1))
            j = int(rng.integers(0, w - ew + 1))
            return i, j, eh, ew
        return 0, 0, 0, 0

    def on_device(
        self, num_classes: int | None = None, rule: Literal["majority", "soft"] = "majority"
    ) -> DeviceAugment:
        """The float half of this recipe for batches of `draw`'s output (see DeviceAugment)."""
        return DeviceAugment(self.normalize, self.erase_value, num_classes, rule)


class TestTransform:
    """Resize to ``size`` ``(H, W)``, to [0, 1], normalise: float32 ``[3, H, W]``."""

    # Not a test class, whatever its name: keep pytest from collecting it.
    __test__ = False

    def __init__(
        self,
        size: tuple[int, int],
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        *,
        interpolation: str | int = "bilinear",
    ) -> None:
        self.size = _check_size(size)
        self.resample = _resample(interpolation)
        self.normalize = Normalize(mean, std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.draw(image))

    def draw(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """The worker's half: uint8 ``[3, H, W]``; `normalize` (on the device) finishes it."""
        h, w = self.size
        arr = to_rgb_array(image, (w, h), self.resample)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def unnormalize(
    t: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Invert the normalisation of ``[..., 3, H, W]`` for display (not clamped to [0, 1])."""
    m = torch.as_tensor(mean, dtype=t.dtype, device=t.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return t * s + m
