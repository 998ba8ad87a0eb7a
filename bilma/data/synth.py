"""A deterministic synthetic pedestrian dataset in the CUHK-PEDES format, with parse maps.

Each identity is a combination of described attributes (garment types and colours, hair,
shoes, bag, hat, scarf; see `Identity`); every image draws that person with PIL at a random
position, scale and pose over a random background, and every caption names every attribute.
What worked for learning on such data is in ``docs/SYNTH.md``.

Layout written under ``OUT`` (the CUHK-PEDES layout, so the ``synth`` reader is the CUHK one):

- ``imgs/<split>/<id:05d>_<k>.jpg``: JPEG, quality 90, 4:2:0, ``height x width``.
- ``reid_raw.json``: ``[{id, file_path, captions, processed_tokens, split}, ...]``; ids are
  1-based and unique across splits, train ids first (``1..N_train``), then val, then test.
- ``parsing/<labelset>/<split>/<id:05d>_<k>.png``: 8-bit mode-L parse maps for the label sets
  ``lip20``, ``atr18`` and ``ppp7`` (SCHP conventions, `LABEL_NAMES`).
- ``synth.json`` (`SYNTH_MARKER`), written last and atomically: the generation parameters.
  `is_complete` tells a finished dataset from a half-written one.

Left and right are the *person's*: figures face the camera, so the person's left arm, leg and
shoe are on the image's right side (larger x).

Parse maps are exact. Every shape is rasterised once, without antialiasing, into an index
image whose value names a (colour, lip20, atr18, ppp7) entry; the clean RGB image and the three
label maps are lookups of that one index image, so image and labels share geometry and
occlusion order (later shapes overwrite) pixel for pixel. Brightness, noise, blur and JPEG
only change the RGB afterwards.

Everything is deterministic per seed: identities come from ``numpy.random.default_rng(seed)``,
each image from `image_rng` (seed, identity index, image index) and its captions from
`caption_rng`, so ``workers > 1`` writes byte-identical files to ``workers = 1``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bilma.fileio import atomic_write_text

__all__ = [
    "LABEL_NAMES",
    "SYNTH_MARKER",
    "Identity",
    "Mention",
    "Rendering",
    "caption_rng",
    "captions_for",
    "degrade",
    "describe",
    "draw_figure",
    "generate",
    "image_rng",
    "is_complete",
    "sample_identities",
    "split_sizes",
    "tokenize",
]

SYNTH_MARKER = "synth.json"
"""Written last under the output folder; its presence marks a complete dataset."""

_FORMAT_VERSION = 1
_SPLITS = ("train", "val", "test")

LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "lip20": (
        "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat",
        "socks", "pants", "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm",
        "left-leg", "right-leg", "left-shoe", "right-shoe",
    ),
    "atr18": (
        "background", "hat", "hair", "sunglasses", "upper-clothes", "skirt", "pants", "dress",
        "belt", "left-shoe", "right-shoe", "face", "left-leg", "right-leg", "left-arm",
        "right-arm", "bag", "scarf",
    ),
    "ppp7": (
        "background", "head", "torso", "upper-arms", "lower-arms", "upper-legs", "lower-legs",
    ),
}  # fmt: skip
"""Class names of each parse-map label set, index = label id (SCHP's LIP, ATR, Pascal-Person-Part)."""

# --------------------------------------------------------------------------- attributes

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (236, 236, 232),
    "grey": (128, 128, 128),
    "red": (200, 32, 36),
    "blue": (42, 92, 212),
    "navy": (24, 36, 104),
    "green": (40, 150, 62),
    "yellow": (236, 210, 42),
    "orange": (240, 130, 30),
    "purple": (122, 52, 160),
    "pink": (242, 142, 182),
    "brown": (122, 76, 40),
}
"""The 12 garment colours (upper, lower, scarf) and their RGB."""

HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (102, 62, 30),
    "blonde": (226, 196, 122),
    "grey": (162, 162, 162),
    "red": (168, 62, 30),
}
SHOE_COLOURS = ("black", "white", "brown", "grey", "red")
BAG_COLOURS = ("black", "brown", "red", "blue", "green")
HAT_COLOURS = ("black", "white", "red", "blue")
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (242, 206, 178),
    (222, 178, 142),
    (186, 134, 96),
    (128, 86, 58),
)

UPPER_TYPES = ("t-shirt", "shirt", "coat", "dress")
LOWER_TYPES = ("pants", "shorts", "skirt")
BAG_TYPES = ("backpack", "handbag")
HAIR_LENGTHS = ("short", "long")


@dataclass(frozen=True)
class Identity:
    """One synthetic person: the attributes its captions describe, plus an undescribed skin tone.

    ``lower`` is None with a dress; ``bag``/``hat_colour``/``scarf_colour`` are None when absent.
    """

    upper: str
    upper_colour: str
    lower: str | None
    lower_colour: str | None
    hair_colour: str
    hair_length: str
    shoe_colour: str
    bag: str | None
    bag_colour: str | None
    hat_colour: str | None
    scarf_colour: str | None
    skin: int = 0

    def key(self) -> tuple[str | None, ...]:
        """The described attributes: two identities with equal keys would be indistinguishable."""
        return (
            self.upper,
            self.upper_colour,
            self.lower,
            self.lower_colour,
            self.hair_colour,
            self.hair_length,
            self.shoe_colour,
            self.bag,
            self.bag_colour,
            self.hat_colour,
            self.scarf_colour,
        )


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_identity(rng: np.random.Generator) -> Identity:
    colours = tuple(COLOURS)
    upper = UPPER_TYPES[int(rng.choice(4, p=[0.3, 0.25, 0.25, 0.2]))]
    upper_colour = _choice(rng, colours)
    others = tuple(c for c in colours if c != upper_colour)
    lower = None if upper == "dress" else LOWER_TYPES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    lower_colour = None if lower is None else _choice(rng, others)
    hair_colour = _choice(rng, tuple(HAIR_COLOURS))
    hair_length = _choice(rng, HAIR_LENGTHS)
    shoe_colour = _choice(rng, SHOE_COLOURS)
    bag_kind = int(rng.integers(3))
    bag = None if bag_kind == 0 else BAG_TYPES[bag_kind - 1]
    bag_colour = None if bag is None else _choice(rng, BAG_COLOURS)
    hat_colour = _choice(rng, HAT_COLOURS) if rng.random() < 0.3 else None
    # A scarf of the shirt's colour would vanish into it.
    scarf_colour = _choice(rng, others) if rng.random() < 0.2 else None
    skin = int(rng.integers(len(SKIN_TONES)))
    return Identity(
        upper, upper_colour, lower, lower_colour, hair_colour, hair_length, shoe_colour,
        bag, bag_colour, hat_colour, scarf_colour, skin,
    )  # fmt: skip


def sample_identities(n: int, seed: int = 0) -> list[Identity]:
    """Draw `n` identities with distinct described attributes, deterministically per seed."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[str | None, ...]] = set()
    out: list[Identity] = []
    misses = 0
    while len(out) < n:
        ident = _sample_identity(rng)
        if ident.key() in seen:
            misses += 1
            # Millions of combinations exist; this only trips on absurd requests.
            if misses > 100 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct identities; ask for fewer")
            continue
        seen.add(ident.key())
        out.append(ident)
    return out


# --------------------------------------------------------------------------- drawing


Point = tuple[float, float]
RGB = tuple[int, int, int]
Part = tuple[int, int, int]  # label ids in (lip20, atr18, ppp7)


@cache
def _part(lip: str, atr: str, ppp: str) -> Part:
    """Label ids of one drawn part in (lip20, atr18, ppp7), looked up by class name."""
    return (
        LABEL_NAMES["lip20"].index(lip),
        LABEL_NAMES["atr18"].index(atr),
        LABEL_NAMES["ppp7"].index(ppp),
    )


@dataclass(frozen=True)
class Rendering:
    """A drawn figure before degradation: clean RGB ``[H, W, 3]`` and label maps ``[H, W]``."""

    rgb: np.ndarray
    labels: dict[str, np.ndarray]


class _Canvas:
    """Draws shapes in figure units into one index image; each index is (colour, labels).

    Figure units: y runs from 0 (head top) to 1 (below the feet), x from the body's centre
    line, both scaled by the figure height in pixels.
    """

    def __init__(self, height: int, width: int, cx: float, top: float, fh: float) -> None:
        self.index = Image.new("L", (width, height), 0)
        self._draw = ImageDraw.Draw(self.index)
        self._cx, self._top, self._fh = cx, top, fh
        self._entries: list[tuple[RGB, Part]] = [((0, 0, 0), (0, 0, 0))]
        self._ids: dict[tuple[RGB, Part], int] = {}

    def _fill(self, rgb: RGB, part: Part) -> int:
        key = (rgb, part)
        if key not in self._ids:
            if len(self._entries) == 256:
                raise RuntimeError("more than 255 distinct (colour, part) entries in one figure")
            self._ids[key] = len(self._entries)
            self._entries.append(key)
        return self._ids[key]

    def px(self, p: Point) -> Point:
        """Figure units to pixels."""
        return (self._cx + p[0] * self._fh, self._top + p[1] * self._fh)

    def _box(self, cx: float, cy: float, rx: float, ry: float) -> list[float]:
        x, y = self.px((cx, cy))
        return [x - rx * self._fh, y - ry * self._fh, x + rx * self._fh, y + ry * self._fh]

    def polygon(self, pts: list[Point], rgb: RGB, part: Part) -> None:
        self._draw.polygon([self.px(p) for p in pts], fill=self._fill(rgb, part))

    def ellipse(self, c: Point, rx: float, ry: float, rgb: RGB, part: Part) -> None:
        self._draw.ellipse(self._box(c[0], c[1], rx, ry), fill=self._fill(rgb, part))

    def chord(
        self, c: Point, rx: float, ry: float, start: float, end: float, rgb: RGB, part: Part
    ) -> None:
        self._draw.chord(self._box(c[0], c[1], rx, ry), start, end, fill=self._fill(rgb, part))

    def rounded(self, c: Point, rx: float, ry: float, radius: float, rgb: RGB, part: Part) -> None:
        self._draw.rounded_rectangle(
            self._box(c[0], c[1], rx, ry), radius=radius * self._fh, fill=self._fill(rgb, part)
        )

    def line(self, a: Point, b: Point, width: float, rgb: RGB, part: Part) -> None:
        w = max(1, round(width * self._fh))
        self._draw.line([self.px(a), self.px(b)], fill=self._fill(rgb, part), width=w)

    def limb(self, a: Point, b: Point, wa: float, wb: float, rgb: RGB, part: Part) -> None:
        """A tapered segment from `a` (half width `wa`) to `b` (half width `wb`)."""
        dx, dy = b[0] - a[0], b[1] - a[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        self.polygon(
            [
                (a[0] + nx * wa, a[1] + ny * wa),
                (b[0] + nx * wb, b[1] + ny * wb),
                (b[0] - nx * wb, b[1] - ny * wb),
                (a[0] - nx * wa, a[1] - ny * wa),
            ],
            rgb,
            part,
        )

    def luts(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Colour and per-label-set lookup tables of the entries used so far."""
        rgb = np.zeros((256, 3), np.uint8)
        labels = {name: np.zeros(256, np.uint8) for name in LABEL_NAMES}
        for i, (colour, part) in enumerate(self._entries):
            rgb[i] = colour
            for name, label in zip(LABEL_NAMES, part, strict=True):
                labels[name][i] = label
        return rgb, labels


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


def draw_figure(
    identity: Identity, rng: np.random.Generator, height: int = 384, width: int = 128
) -> Rendering:
    """Draw one image of `identity`: the clean RGB (before noise/JPEG) and its parse maps.

    Pose, placement, colour jitter and background come from `rng` in a fixed order; the
    generator passes the same `rng` on to `degrade`, so re-rendering with
    ``image_rng(seed, index, k)`` reproduces a written image's parse maps exactly.
    Side +1 is the person's left, which is the image's right (figures face the camera).
    """
    ident = identity
    # Placement: the figure height follows the scale; aspect-true units in x and y.
    scale = rng.uniform(0.82, 1.0)
    fh = scale * min(0.9 * height, 2.75 * width)
    bottom = height * rng.uniform(0.93, 0.995)
    top = bottom - fh
    slack = max(0.0, width / 2 - 0.16 * fh)
    cx = width / 2 + rng.uniform(-slack, slack)
    ground_top = int(bottom - rng.uniform(0.02, 0.1) * height)

    # Pose: arm angles and foreshortening (swing), leg spread and a lifted back foot (stride).
    arm_up = rng.uniform(2.0, 9.0, 2)
    arm_bend = rng.uniform(-8.0, 6.0, 2)
    arm_swing = rng.uniform(0.8, 1.0, 2)
    spread = rng.uniform(0.0, 0.03, 2)
    lift = np.zeros(2)
    lift[int(rng.integers(2))] = rng.uniform(0.0, 0.025)
    bag_side = 1 if rng.random() < 0.5 else -1

    upper_rgb = _jitter(rng, COLOURS[ident.upper_colour])
    lower_rgb = _jitter(rng, COLOURS[ident.lower_colour or "black"])
    hair_rgb = _jitter(rng, HAIR_COLOURS[ident.hair_colour])
    shoe_rgb = _jitter(rng, COLOURS[ident.shoe_colour])
    bag_rgb = _jitter(rng, COLOURS[ident.bag_colour or "black"])
    hat_rgb = _jitter(rng, COLOURS[ident.hat_colour or "black"])
    scarf_rgb = _jitter(rng, COLOURS[ident.scarf_colour or "black"])
    skin_rgb = _jitter(rng, SKIN_TONES[ident.skin], 6)
    bg = _background(rng, height, width, ground_top)

    cv = _Canvas(height, width, cx, top, fh)
    sides = (1, -1)  # person's left (image right), person's right (image left)

    def lr(name: str, side: int) -> str:
        return f"{'left' if side > 0 else 'right'}-{name}"

    bag_part = _part("background", "bag", "background")  # LIP has no bag class
    upper_lip = {"t-shirt": "upper-clothes", "shirt": "upper-clothes", "coat": "coat"}.get(
        ident.upper, "dress"
    )
    upper_atr = "dress" if ident.upper == "dress" else "upper-clothes"  # ATR has no coat

    # Behind the body: the backpack's pack, long hair.
    if ident.bag == "backpack":
        cv.rounded((bag_side * 0.088, 0.29), 0.036, 0.12, 0.012, bag_rgb, bag_part)
    if ident.hair_length == "long":
        hair_back = [(-0.06, 0.05), (0.06, 0.05), (0.066, 0.25), (-0.066, 0.25)]
        cv.polygon(hair_back, hair_rgb, _part("hair", "hair", "head"))

    # Legs: lower leg, then upper leg with its knee joint, each bare or covered.
    ankles = {}
    for i, side in enumerate(sides):
        hip = (side * 0.038, 0.50)
        ankle = (side * (0.036 + spread[i]), 0.95 - lift[i])
        knee = ((hip[0] + ankle[0]) / 2 + side * 0.003, (hip[1] + ankle[1]) / 2 + 0.005)
        ankles[side] = ankle
        skin_up = _part(lr("leg", side), lr("leg", side), "upper-legs")
        skin_low = _part(lr("leg", side), lr("leg", side), "lower-legs")
        if ident.lower == "pants":
            pants_up = _part("pants", "pants", "upper-legs")
            cv.limb(knee, ankle, 0.030, 0.022, lower_rgb, _part("pants", "pants", "lower-legs"))
            cv.limb(hip, knee, 0.039, 0.030, lower_rgb, pants_up)
            cv.ellipse(knee, 0.030, 0.030, lower_rgb, pants_up)
        else:
            cv.limb(knee, ankle, 0.025, 0.017, skin_rgb, skin_low)
            cv.limb(hip, knee, 0.034, 0.025, skin_rgb, skin_up)
            cv.ellipse(knee, 0.025, 0.025, skin_rgb, skin_up)
        if ident.lower == "shorts":
            hem = (hip[0] + 0.75 * (knee[0] - hip[0]), hip[1] + 0.75 * (knee[1] - hip[1]))
            cv.limb(hip, hem, 0.041, 0.034, lower_rgb, _part("pants", "pants", "upper-legs"))
    if ident.lower in ("pants", "shorts"):
        crotch = [(-0.076, 0.46), (0.076, 0.46), (0.076, 0.52), (0.0, 0.54), (-0.076, 0.52)]
        cv.polygon(crotch, lower_rgb, _part("pants", "pants", "upper-legs"))
    elif ident.lower == "skirt":
        skirt = [(-0.078, 0.46), (0.078, 0.46), (0.125, 0.69), (-0.125, 0.69)]
        cv.polygon(skirt, lower_rgb, _part("skirt", "skirt", "upper-legs"))
    for side in sides:
        a = ankles[side]
        shoe = _part(lr("shoe", side), lr("shoe", side), "lower-legs")
        cv.rounded((a[0] + side * 0.004, a[1] + 0.012), 0.027, 0.024, 0.01, shoe_rgb, shoe)

    # Torso by garment type: coats and dresses continue over the upper legs (a coat stops
    # short of the shorts' hem: captions name the shorts, so they must stay visible).
    torso = [
        (-0.035, 0.118), (0.035, 0.118), (0.088, 0.145), (0.085, 0.19), (0.068, 0.33),
        (0.075, 0.50), (-0.075, 0.50), (-0.068, 0.33), (-0.085, 0.19), (-0.088, 0.145),
    ]  # fmt: skip
    cv.polygon(torso, upper_rgb, _part(upper_lip, upper_atr, "torso"))
    if ident.upper == "coat":
        hem = [(-0.075, 0.50), (0.075, 0.50), (0.086, 0.58), (-0.086, 0.58)]
        cv.polygon(hem, upper_rgb, _part("coat", "upper-clothes", "upper-legs"))
    elif ident.upper == "dress":
        hem = [(-0.075, 0.50), (0.075, 0.50), (0.13, 0.70), (-0.13, 0.70)]
        cv.polygon(hem, upper_rgb, _part("dress", "dress", "upper-legs"))
    if ident.bag == "backpack":
        for side in sides:
            cv.limb((side * 0.05, 0.125), (side * 0.056, 0.36), 0.008, 0.008, bag_rgb, bag_part)

    # Arms: hand, lower arm, upper arm with its elbow; sleeves by garment type.
    wrists = {}
    for i, side in enumerate(sides):
        shoulder = (side * 0.076, 0.155)
        up, low = math.radians(arm_up[i]), math.radians(arm_up[i] + arm_bend[i])
        elbow = (shoulder[0] + side * 0.16 * math.sin(up), shoulder[1] + 0.16 * math.cos(up))
        reach = 0.14 * arm_swing[i]
        wrist = (elbow[0] + side * reach * math.sin(low), elbow[1] + reach * math.cos(low))
        wrists[side] = wrist
        skin_up = _part(lr("arm", side), lr("arm", side), "upper-arms")
        skin_low = _part(lr("arm", side), lr("arm", side), "lower-arms")
        sleeve_up = _part(upper_lip, upper_atr, "upper-arms")
        sleeve_low = _part(upper_lip, upper_atr, "lower-arms")
        long_sleeves = ident.upper in ("shirt", "coat")
        hand = (wrist[0] + side * 0.018 * math.sin(low), wrist[1] + 0.018 * math.cos(low))
        cv.ellipse(hand, 0.016, 0.021, skin_rgb, skin_low)
        if long_sleeves:
            cv.limb(elbow, wrist, 0.024, 0.020, upper_rgb, sleeve_low)
            cv.limb(shoulder, elbow, 0.029, 0.024, upper_rgb, sleeve_up)
            cv.ellipse(elbow, 0.024, 0.024, upper_rgb, sleeve_up)
            cv.ellipse(shoulder, 0.027, 0.027, upper_rgb, sleeve_up)
        else:
            cv.limb(elbow, wrist, 0.019, 0.015, skin_rgb, skin_low)
            cv.limb(shoulder, elbow, 0.024, 0.019, skin_rgb, skin_up)
            cv.ellipse(elbow, 0.019, 0.019, skin_rgb, skin_up)
            if ident.upper == "t-shirt":
                cuff = (shoulder[0] + 0.45 * (elbow[0] - shoulder[0]), shoulder[1] + 0.45 * 0.16)
                cv.limb(shoulder, cuff, 0.030, 0.027, upper_rgb, sleeve_up)
                cv.ellipse(shoulder, 0.028, 0.028, upper_rgb, sleeve_up)
            else:  # sleeveless dress: a bare, rounded shoulder
                cv.ellipse(shoulder, 0.023, 0.023, skin_rgb, skin_up)

    # Head: face, eyes, hair on top (long hair adds side locks), hat leaving a band of hair.
    face, hair = _part("face", "face", "head"), _part("hair", "hair", "head")
    head_c, head_rx, head_ry = (0.0, 0.068), 0.042, 0.058
    cv.ellipse(head_c, head_rx, head_ry, skin_rgb, face)
    for side in sides:
        cv.ellipse((side * 0.016, 0.072), 0.005, 0.004, (40, 30, 30), face)
    cv.chord((0.0, 0.064), head_rx + 0.005, head_ry + 0.006, 185, 355, hair_rgb, hair)
    if ident.hair_length == "long":
        for side in sides:
            lock = [
                (side * (head_rx - 0.011), 0.05),
                (side * (head_rx + 0.007), 0.05),
                (side * (head_rx + 0.009), 0.115),
                (side * (head_rx - 0.004), 0.115),
            ]
            cv.polygon(lock, hair_rgb, hair)
    if ident.hat_colour is not None:
        hat = _part("hat", "hat", "head")
        cv.chord((0.0, 0.062), head_rx + 0.008, head_ry + 0.008, 215, 325, hat_rgb, hat)
        # The brim sits above the hair's lower edge, so a band of hair shows below the hat.
        cv.rounded((0.0, 0.030), head_rx + 0.014, 0.006, 0.003, hat_rgb, hat)
    if ident.scarf_colour is not None:
        scarf = _part("scarf", "scarf", "torso")
        cv.polygon([(-0.045, 0.112), (0.045, 0.112), (0.05, 0.15), (-0.05, 0.15)], scarf_rgb, scarf)
        # The loose end hangs on the side away from the bag (a per-image side).
        tail = [(0.012, 0.14), (0.042, 0.14), (0.038, 0.27), (0.016, 0.27)]
        cv.polygon([(-bag_side * x, y) for x, y in tail], scarf_rgb, scarf)

    # A handbag hangs from the hand on the bag side.
    if ident.bag == "handbag":
        w = wrists[bag_side]
        centre = (w[0] + bag_side * 0.012, w[1] + 0.085)
        for dx in (-0.02, 0.02):
            cv.line(
                (w[0], w[1] + 0.012), (centre[0] + dx, centre[1] - 0.03), 0.006, bag_rgb, bag_part
            )
        cv.rounded(centre, 0.036, 0.032, 0.008, bag_rgb, bag_part)

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


def image_rng(seed: int, index: int, k: int) -> np.random.Generator:
    """The generator of image `k` of identity `index` (0-based): independent of the worker."""
    return np.random.default_rng([seed, index, k, 0])


def caption_rng(seed: int, index: int, k: int) -> np.random.Generator:
    """The generator of the captions of image `k` of identity `index` (0-based)."""
    return np.random.default_rng([seed, index, k, 1])


# --------------------------------------------------------------------------- captions

_COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "grey": ("grey", "gray"),
    "blonde": ("blonde", "blond"),
}
# Noun phrases with the colour slot; the head noun of each is what `describe` reports.
_UPPER_NPS = {
    "t-shirt": ("{c} t-shirt", "{c} tee", "{c} tee shirt"),
    "shirt": ("{c} long-sleeved shirt", "{c} shirt with long sleeves", "{c} long sleeve shirt"),
    "coat": ("{c} coat", "{c} jacket", "long {c} coat"),
    "dress": ("{c} dress", "{c} sleeveless dress"),
}
# Nouns that may stand alone as a sentence subject ("the tee is red").
_UPPER_NOUNS = {
    "t-shirt": ("t-shirt", "tee"),
    "shirt": ("long-sleeved shirt",),
    "coat": ("coat", "jacket"),
    "dress": ("dress",),
}
_LOWER_NOUNS = {"pants": ("pants", "trousers"), "shorts": ("shorts",), "skirt": ("skirt",)}
_SHOE_NOUNS = ("shoes", "sneakers", "boots")
_HAT_NOUNS = ("hat", "cap")
_BAG_NOUNS = {"backpack": ("backpack",), "handbag": ("handbag", "purse", "bag")}
_SUBJECTS = ("a person", "the pedestrian", "this person", "a pedestrian", "someone")
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class Mention:
    """How captions name one attribute: one of `colours` bound to one of `nouns`.

    Captions put the colour right before its noun ("a red tee", at most two words between,
    as in "red long-sleeved shirt") or say "<noun> is/are <colour>" ("the shoes are white").
    `extra` holds other words of the phrase that always appear (the hair length).
    """

    colours: tuple[str, ...]
    nouns: tuple[str, ...]
    extra: tuple[str, ...] = ()


def _words(colour: str) -> tuple[str, ...]:
    return _COLOUR_WORDS.get(colour, (colour,))


def describe(identity: Identity) -> dict[str, Mention]:
    """Every described attribute of `identity` with the words captions use for it."""
    ident = identity
    heads = {"t-shirt": ("t-shirt", "tee"), "shirt": ("shirt",), "coat": ("coat", "jacket")}
    out = {
        "upper": Mention(_words(ident.upper_colour), heads.get(ident.upper, ("dress",))),
        "hair": Mention(_words(ident.hair_colour), ("hair",), (ident.hair_length,)),
        "shoes": Mention(_words(ident.shoe_colour), _SHOE_NOUNS),
    }
    if ident.lower is not None and ident.lower_colour is not None:
        out["lower"] = Mention(_words(ident.lower_colour), _LOWER_NOUNS[ident.lower])
    if ident.bag is not None and ident.bag_colour is not None:
        out["bag"] = Mention(_words(ident.bag_colour), _BAG_NOUNS[ident.bag])
    if ident.hat_colour is not None:
        out["hat"] = Mention(_words(ident.hat_colour), _HAT_NOUNS)
    if ident.scarf_colour is not None:
        out["scarf"] = Mention(_words(ident.scarf_colour), ("scarf",))
    return out


def tokenize(caption: str) -> list[str]:
    """Lowercased word tokens (hyphenated words stay one token, punctuation is dropped)."""
    return _TOKEN.findall(caption.lower())


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _phrases(ident: Identity, rng: np.random.Generator) -> dict[str, str]:
    """Noun phrases ("a red tee", "short black hair") of every described attribute."""

    def colour(name: str) -> str:
        return _choice(rng, _words(name))

    out = {"upper": _a(_choice(rng, _UPPER_NPS[ident.upper]).format(c=colour(ident.upper_colour)))}
    if ident.lower is not None and ident.lower_colour is not None:
        c = colour(ident.lower_colour)
        noun = _choice(rng, _LOWER_NOUNS[ident.lower])
        out["lower"] = _a(f"{c} skirt") if noun == "skirt" else f"{c} {noun}"
    out["shoes"] = f"{colour(ident.shoe_colour)} {_choice(rng, _SHOE_NOUNS)}"
    if ident.hat_colour is not None:
        out["hat"] = _a(f"{colour(ident.hat_colour)} {_choice(rng, _HAT_NOUNS)}")
    if ident.scarf_colour is not None:
        out["scarf"] = _a(f"{colour(ident.scarf_colour)} scarf")
    out["hair"] = f"{ident.hair_length} {colour(ident.hair_colour)} hair"
    if ident.bag is not None and ident.bag_colour is not None:
        out["bag"] = _a(f"{colour(ident.bag_colour)} {_choice(rng, _BAG_NOUNS[ident.bag])}")
    return out


def _long_sentence(ident: Identity, rng: np.random.Generator) -> str:
    p = _phrases(ident, rng)
    worn = [p[k] for k in ("upper", "lower", "shoes", "hat", "scarf") if k in p]
    worn = [worn[i] for i in rng.permutation(len(worn))]
    verb = _choice(rng, ("is wearing", "wears", "is dressed in", "in"))
    # "A person in ..., and has ..." reads wrong: after "in" the hair takes "with".
    hair = "with {}" if verb == "in" else _choice(rng, ("with {}", "and has {}"))
    clauses = [hair.format(p["hair"])]
    if "bag" in p:
        carry = "holding {}" if ident.bag == "handbag" and rng.random() < 0.5 else "carrying {}"
        clauses.append(carry.format(p["bag"]))
    clauses = [clauses[i] for i in rng.permutation(len(clauses))]
    text = f"{_choice(rng, _SUBJECTS)} {verb} {_join(worn)}, {', '.join(clauses)}."
    return text[0].upper() + text[1:]


def _short_sentences(ident: Identity, rng: np.random.Generator) -> str:
    p = _phrases(ident, rng)

    def col(name: str) -> str:
        return _choice(rng, _words(name))

    def act(they_verb: str, one_verb: str, obj: str) -> str:
        if rng.random() < 0.5:
            return f"they {they_verb} {obj}"
        return f"{_choice(rng, ('the person', 'this pedestrian'))} {one_verb} {obj}"

    # Per attribute: an active sentence with the noun phrase, or "<noun> is <colour>".
    forms = [
        (
            act("wear", "wears", p["upper"]),
            f"the {_choice(rng, _UPPER_NOUNS[ident.upper])} is {col(ident.upper_colour)}",
        ),
        (
            act("have", "has", p["hair"]),
            f"the {ident.hair_length} hair is {col(ident.hair_colour)}",
        ),
        (
            act("wear", "wears", p["shoes"]),
            f"the {_choice(rng, _SHOE_NOUNS)} are {col(ident.shoe_colour)}",
        ),
    ]
    if ident.lower is not None and ident.lower_colour is not None:
        noun = _choice(rng, _LOWER_NOUNS[ident.lower])
        be = "is" if noun == "skirt" else "are"
        forms.append(
            (act("wear", "wears", p["lower"]), f"the {noun} {be} {col(ident.lower_colour)}")
        )
    if ident.hat_colour is not None:
        noun = _choice(rng, _HAT_NOUNS)
        forms.append((f"{p['hat']} is on the head", f"the {noun} is {col(ident.hat_colour)}"))
    if ident.scarf_colour is not None:
        forms.append(
            (f"{p['scarf']} is around the neck", f"the scarf is {col(ident.scarf_colour)}")
        )
    if ident.bag is not None and ident.bag_colour is not None:
        where = "on the back" if ident.bag == "backpack" else "in one hand"
        forms.append((act("carry", "carries", p["bag"]), f"{p['bag']} is {where}"))
    out = [f[int(rng.integers(2))] for f in forms]
    out = [out[i] for i in rng.permutation(len(out))]
    if rng.random() < 0.5:
        intro = ("a person is walking", "this is a pedestrian", "someone walks by")
        out.insert(0, _choice(rng, intro))
    return " ".join(s[0].upper() + s[1:] + "." for s in out)


def _noun_phrase(ident: Identity, rng: np.random.Generator) -> str:
    p = _phrases(ident, rng)
    worn = [p[k] for k in ("upper", "lower", "shoes", "hat", "scarf") if k in p]
    worn = [worn[i] for i in rng.permutation(len(worn))]
    carried = [p["hair"]] + ([p["bag"]] if "bag" in p else [])
    if rng.random() < 0.5:
        text = f"{_choice(rng, _SUBJECTS)} in {_join(worn)}, with {_join(carried)}"
    else:
        items = worn + carried
        text = ", ".join(items[i] for i in rng.permutation(len(items)))
    return text[0].upper() + text[1:] + "."


def captions_for(identity: Identity, rng: np.random.Generator, n: int = 2) -> list[str]:
    """`n` captions of `identity`, each from a randomly chosen template family."""
    families = (_long_sentence, _short_sentences, _noun_phrase)
    return [families[int(rng.integers(3))](identity, rng) for _ in range(n)]


# --------------------------------------------------------------------------- generation


def split_sizes(
    ids: int, val_ids: int | None = None, test_ids: int | None = None
) -> dict[str, int]:
    """Identities per split: val and test default to ``max(1, ids // 10)`` (0 under 3 ids)."""
    default = max(1, ids // 10) if ids >= 3 else 0
    n_val = default if val_ids is None else val_ids
    n_test = default if test_ids is None else test_ids
    if ids < 1 or n_val < 0 or n_test < 0 or n_val + n_test > ids:
        raise ValueError(
            f"bad split sizes: ids={ids}, val_ids={n_val}, test_ids={n_test}; need ids >= 1 "
            "and 0 <= val_ids + test_ids <= ids"
        )
    return {"train": ids - n_val - n_test, "val": n_val, "test": n_test}


def _rel_path(split: str, ident_id: int, k: int) -> str:
    return f"{split}/{ident_id:05d}_{k}.jpg"


def _write_identity(job: tuple[str, int, int, Identity, str, int, int, int]) -> int:
    """Render and write every image of one identity with its parse maps; return the count."""
    out, seed, index, ident, split, images, height, width = job
    root = Path(out)
    for k in range(images):
        rel = _rel_path(split, index + 1, k)
        rng = image_rng(seed, index, k)
        rendering = draw_figure(ident, rng, height, width)
        degrade(rendering.rgb, rng).save(
            root / "imgs" / rel, "JPEG", quality=90, subsampling="4:2:0", optimize=False
        )
        png = rel[: -len(".jpg")] + ".png"
        for name, labels in rendering.labels.items():
            # Level 1: label maps are flat regions, so fast compression is nearly as small.
            Image.fromarray(labels, "L").save(
                root / "parsing" / name / png, "PNG", compress_level=1
            )
    return images


def is_complete(root: str | Path) -> bool:
    """Whether `root` holds a finished synthetic dataset (its marker and annotations exist)."""
    root = Path(root)
    try:
        params = json.loads((root / SYNTH_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(params, dict)
        and params.get("generator") == __name__
        and (root / "reid_raw.json").is_file()
    )


def generate(
    out: str | Path,
    ids: int = 1200,
    images_per_id: int = 4,
    seed: int = 0,
    height: int = 384,
    width: int = 128,
    val_ids: int | None = None,
    test_ids: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the synthetic dataset under `out`; return counts per split and timing.

    Files are written in place; the marker (`SYNTH_MARKER`) is removed first and written
    last, so an interrupted run is never taken for a complete one. Output is byte-identical
    for equal arguments whatever `workers` is.
    """
    start = time.perf_counter()
    if images_per_id < 1 or height < 32 or width < 16 or workers < 1:
        raise ValueError(
            f"bad arguments: images_per_id={images_per_id} (>= 1), height={height} (>= 32), "
            f"width={width} (>= 16), workers={workers} (>= 1)"
        )
    sizes = split_sizes(ids, val_ids, test_ids)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / SYNTH_MARKER).unlink(missing_ok=True)
    for split in _SPLITS:
        (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
        for name in LABEL_NAMES:
            (root / "parsing" / name / split).mkdir(parents=True, exist_ok=True)

    identities = sample_identities(ids, seed)
    splits = [s for s in _SPLITS for _ in range(sizes[s])]
    entries = []
    for index, (ident, split) in enumerate(zip(identities, splits, strict=True)):
        for k in range(images_per_id):
            caps = captions_for(ident, caption_rng(seed, index, k))
            entries.append(
                {
                    "id": index + 1,
                    "file_path": _rel_path(split, index + 1, k),
                    "captions": caps,
                    "processed_tokens": [tokenize(c) for c in caps],
                    "split": split,
                }
            )

    jobs = [
        (str(root), seed, i, ident, split, images_per_id, height, width)
        for i, (ident, split) in enumerate(zip(identities, splits, strict=True))
    ]
    done_ids = done_images = 0
    next_report = 0.1

    def report(n_images: int) -> None:
        nonlocal done_ids, done_images, next_report
        done_ids += 1
        done_images += n_images
        if progress and (done_ids / ids >= next_report or done_ids == ids):
            rate = done_images / max(time.perf_counter() - start, 1e-9)
            print(
                f"synth: {done_ids}/{ids} identities ({100 * done_ids // ids}%), "
                f"{done_images} images, {rate:.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
            next_report = math.floor(done_ids / ids * 10 + 1) / 10

    if workers == 1:
        for job in jobs:
            report(_write_identity(job))
    else:
        chunk = max(1, len(jobs) // (workers * 16))
        with multiprocessing.Pool(workers) as pool:
            for n_images in pool.imap_unordered(_write_identity, jobs, chunksize=chunk):
                report(n_images)

    atomic_write_text(root / "reid_raw.json", json.dumps(entries))
    counts = {
        split: {
            "ids": sizes[split],
            "images": sizes[split] * images_per_id,
            "captions": sizes[split] * images_per_id * 2,
        }
        for split in _SPLITS
    }
    params = {
        "generator": __name__,
        "version": _FORMAT_VERSION,
        "ids": ids,
        "images_per_id": images_per_id,
        "seed": seed,
        "height": height,
        "width": width,
        "val_ids": sizes["val"],
        "test_ids": sizes["test"],
        "labelsets": list(LABEL_NAMES),
        "counts": counts,
    }
    # Last, atomically: its presence means every file above is complete.
    atomic_write_text(root / SYNTH_MARKER, json.dumps(params, indent=2) + "\n")
    seconds = time.perf_counter() - start
    return {
        "out": str(root),
        "splits": counts,
        "images": ids * images_per_id,
        "seconds": seconds,
        "images_per_s": ids * images_per_id / seconds,
        "workers": workers,
    }
