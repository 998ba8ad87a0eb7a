"""Drawing in figure units: one index image whose entries carry a colour and three labels.

Every shape is rasterised once, without antialiasing, into an index image whose value names a
(colour, lip20, atr18, ppp7) entry; the clean RGB image and the three label maps are lookups
of that one index image, so image and labels share geometry and occlusion order (later shapes
overwrite) pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from bilma.data.synth.attributes import LABEL_NAMES

Point = tuple[float, float]
RGB = tuple[int, int, int]
Part = tuple[int, int, int]  # label ids in (lip20, atr18, ppp7)


@cache
def part(lip: str, atr: str, ppp: str) -> Part:
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


class Canvas:
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
