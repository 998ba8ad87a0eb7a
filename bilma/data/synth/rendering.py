"""One image of an identity: placement, pose, colours and background from the image's rng,
the body drawn on a `Canvas`, then `degrade` (brightness, noise, blur) for the written JPEG.

The rng is consumed in a fixed order (placement, pose, colours, background, then `degrade`),
so re-rendering with the same generator reproduces an image and its parse maps exactly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bilma.data.synth.attributes import COLOURS, HAIR_COLOURS, SKIN_TONES, Identity
from bilma.data.synth.body import Palette, Pose, draw_body
from bilma.data.synth.canvas import RGB, Canvas, Rendering


def _jitter(rng: np.random.Generator, rgb: RGB, amount: int = 8) -> RGB:
    """A colour shifted by a small per-image offset (kept small: bigger made colours blur)."""
    shifted = np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return tuple(int(v) for v in shifted)


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A random background colour pulled towards grey, so figures stand out."""
    return 0.55 * rng.uniform(40, 220, 3) + 0.45 * 128


def _background(rng: np.random.Generator, height: int, width: int, ground_top: int) -> np.ndarray:
    """Plain, stripes or blobs, plus a ground band from `ground_top` down."""
    kind = int(rng.integers(3))
    base = _muted(rng)
    if kind == 0:
        bg = np.broadcast_to(base, (height, width, 3)).copy()
    elif kind == 1:
        other = _muted(rng)
        period = max(2, int(rng.integers(6, 31) * height / 384))
        vertical = rng.random() < 0.5
        coord = np.arange(width if vertical else height)
        band = ((coord // period) % 2).astype(bool)
        cols = np.where(band[:, None], other, base)  # [n, 3]
        bg = np.broadcast_to(
            cols[None, :, :] if vertical else cols[:, None, :], (height, width, 3)
        ).copy()
    else:
        img = Image.new("RGB", (width, height), tuple(int(v) for v in base))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(0.1, 0.5) * width, rng.uniform(0.03, 0.2) * height
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tuple(int(v) for v in _muted(rng)))
        bg = np.asarray(img, np.float64).copy()
    ground = 0.6 * rng.uniform(60, 170, 3) + 0.4 * 110
    bg[ground_top:] = ground
    return bg.astype(np.uint8)


def draw_pose(rng: np.random.Generator, height: int, width: int) -> Pose:
    """Where the figure stands and how, drawn from `rng`.

    Placement: the figure height follows the scale; aspect-true units in x and y. Pose: arm
    angles and foreshortening (swing), leg spread and a lifted back foot (stride).
    """
    scale = rng.uniform(0.82, 1.0)
    fh = scale * min(0.9 * height, 2.75 * width)
    bottom = height * rng.uniform(0.93, 0.995)
    top = bottom - fh
    slack = max(0.0, width / 2 - 0.16 * fh)
    cx = width / 2 + rng.uniform(-slack, slack)
    ground_top = int(bottom - rng.uniform(0.02, 0.1) * height)

    arm_up = rng.uniform(2.0, 9.0, 2)
    arm_bend = rng.uniform(-8.0, 6.0, 2)
    arm_swing = rng.uniform(0.8, 1.0, 2)
    spread = rng.uniform(0.0, 0.03, 2)
    lift = np.zeros(2)
    lift[int(rng.integers(2))] = rng.uniform(0.0, 0.025)
    bag_side = 1 if rng.random() < 0.5 else -1

    def pair(values: np.ndarray) -> tuple[float, float]:
        return float(values[0]), float(values[1])

    return Pose(
        fh=fh, top=top, cx=cx, ground_top=ground_top, arm_up=pair(arm_up),
        arm_bend=pair(arm_bend), arm_swing=pair(arm_swing), spread=pair(spread),
        lift=pair(lift), bag_side=bag_side,
    )  # fmt: skip


def draw_palette(rng: np.random.Generator, ident: Identity) -> Palette:
    """Each attribute's colour with a per-image jitter (absent ones get black's, unused)."""
    # Keyword arguments evaluate in order: this order is part of the rng stream.
    return Palette(
        upper=_jitter(rng, COLOURS[ident.upper_colour]),
        lower=_jitter(rng, COLOURS[ident.lower_colour or "black"]),
        hair=_jitter(rng, HAIR_COLOURS[ident.hair_colour]),
        shoe=_jitter(rng, COLOURS[ident.shoe_colour]),
        bag=_jitter(rng, COLOURS[ident.bag_colour or "black"]),
        hat=_jitter(rng, COLOURS[ident.hat_colour or "black"]),
        scarf=_jitter(rng, COLOURS[ident.scarf_colour or "black"]),
        skin=_jitter(rng, SKIN_TONES[ident.skin], 6),
    )


def draw_figure(
    identity: Identity,
    rng: np.random.Generator,
    height: int = 384,
    width: int = 128,
    local_scale: float = 1.0,
) -> Rendering:
    """Draw one image of `identity`: the clean RGB (before noise/JPEG) and its parse maps.

    Pose, placement, colour jitter and background come from `rng` in a fixed order; the
    generator passes the same `rng` on to `degrade`, so re-rendering with
    ``image_rng(seed, index, k)`` reproduces a written image's parse maps exactly.
    Side +1 is the person's left, which is the image's right (figures face the camera).
    `local_scale` enlarges shoes, bag, hat and scarf (`body.draw_body`); it draws nothing from
    `rng`, so pose, colours and background are those of scale 1.
    """
    pose = draw_pose(rng, height, width)
    pal = draw_palette(rng, identity)
    bg = _background(rng, height, width, pose.ground_top)
    cv = Canvas(height, width, pose.cx, pose.top, pose.fh)
    draw_body(cv, identity, pose, pal, local_scale)
    index = np.asarray(cv.index)
    rgb_lut, label_luts = cv.luts()
    rgb = np.where((index > 0)[..., None], rgb_lut[index], bg)
    return Rendering(rgb=rgb, labels={name: lut[index] for name, lut in label_luts.items()})


def degrade(rgb: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Brightness x0.85-1.15 (wider made grey/white and navy/black ambiguous), noise, blur 30%."""
    h = rgb.shape[0]
    brightness = rng.uniform(0.85, 1.15)
    sigma = rng.uniform(2.0, 6.0)
    noise = rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(sigma)
    out = rgb.astype(np.float32) * np.float32(brightness) + noise
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2) * h / 384))
    return img
