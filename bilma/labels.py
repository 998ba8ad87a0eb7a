"""Label vocabularies shared by the data pipeline, the model and the losses.

- `IGNORE_INDEX`: the label of a position (caption token, image patch) that a loss skips.
- The human parsers' label sets (SCHP conventions) that SemMIM predicts: LIP 20 classes,
  ATR 18, Pascal-Person-Part 7, with their left/right pairs for horizontal flips.

This module sits below `bilma.data`, `bilma.model` and `bilma.model.losses` so that none of them
imports another for these facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["IGNORE_INDEX", "LABEL_SETS", "LabelSet", "get_label_set"]

IGNORE_INDEX = -100  # torch's cross-entropy default


@dataclass(frozen=True)
class LabelSet:
    """A parser's classes and its left/right pairs.

    ``flip_lut`` (derived, read-only uint8 ``[256]``) maps every id to its mirror-image
    counterpart (``left-arm`` <-> ``right-arm``) and every other id to itself, so a
    horizontally flipped map is fixed with one lookup: ``flip_lut[map[:, ::-1]]``.
    """

    name: str
    classes: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    flip_lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.classes)
        if not 1 <= n <= 256:
            raise ValueError(f"label set {self.name!r}: needs 1..256 classes (uint8 maps), got {n}")
        lut = np.arange(256, dtype=np.uint8)
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if not (0 <= a < n and 0 <= b < n) or a == b or {a, b} & seen:
                raise ValueError(
                    f"label set {self.name!r}: bad flip pair ({a}, {b}); ids must be distinct, "
                    f"in 0..{n - 1} and appear in one pair at most"
                )
            seen |= {a, b}
            lut[a], lut[b] = b, a
        lut.setflags(write=False)
        # Frozen dataclass: the derived field is set once, here.
        object.__setattr__(self, "flip_lut", lut)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# Class ids are positions in these strings (SCHP's orders); names are lowercase with '-'.
_LIP20 = (
    "background hat hair glove sunglasses upper-clothes dress coat socks pants jumpsuits "
    "scarf skirt face left-arm right-arm left-leg right-leg left-shoe right-shoe"
)
_ATR18 = (
    "background hat hair sunglasses upper-clothes skirt pants dress belt left-shoe "
    "right-shoe face left-leg right-leg left-arm right-arm bag scarf"
)
_PPP7 = "background head torso upper-arms lower-arms upper-legs lower-legs"

LABEL_SETS: dict[str, LabelSet] = {
    s.name: s
    for s in (
        LabelSet("lip20", tuple(_LIP20.split()), ((14, 15), (16, 17), (18, 19))),
        LabelSet("atr18", tuple(_ATR18.split()), ((9, 10), (12, 13), (14, 15))),
        LabelSet("ppp7", tuple(_PPP7.split())),
    )
}


def get_label_set(name: str | LabelSet) -> LabelSet:
    """Look a label set up by name (a `LabelSet` passes through)."""
    if isinstance(name, LabelSet):
        return name
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(
            f"unknown parsing label set {name!r}; valid names: {', '.join(LABEL_SETS)}"
        ) from None
