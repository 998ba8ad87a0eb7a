"""What a synthetic person is: the attribute tables, `Identity`, and drawing identities.

Also the parse-map label sets (`LABEL_NAMES`), since every drawn part names its class there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

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


def choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One of `options`, uniformly (one ``rng.integers`` draw)."""
    return options[int(rng.integers(len(options)))]


def _sample_identity(rng: np.random.Generator) -> Identity:
    colours = tuple(COLOURS)
    upper = UPPER_TYPES[int(rng.choice(4, p=[0.3, 0.25, 0.25, 0.2]))]
    upper_colour = choice(rng, colours)
    others = tuple(c for c in colours if c != upper_colour)
    lower = None if upper == "dress" else LOWER_TYPES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    lower_colour = None if lower is None else choice(rng, others)
    hair_colour = choice(rng, tuple(HAIR_COLOURS))
    hair_length = choice(rng, HAIR_LENGTHS)
    shoe_colour = choice(rng, SHOE_COLOURS)
    bag_kind = int(rng.integers(3))
    bag = None if bag_kind == 0 else BAG_TYPES[bag_kind - 1]
    bag_colour = None if bag is None else choice(rng, BAG_COLOURS)
    hat_colour = choice(rng, HAT_COLOURS) if rng.random() < 0.3 else None
    # A scarf of the shirt's colour would vanish into it.
    scarf_colour = choice(rng, others) if rng.random() < 0.2 else None
    skin = int(rng.integers(len(SKIN_TONES)))
    return Identity(
        upper, upper_colour, lower, lower_colour, hair_colour, hair_length, shoe_colour,
        bag, bag_colour, hat_colour, scarf_colour, skin,
    )  # fmt: skip


POOLS = ("all", "pretrain", "finetune")
"""Disjoint halves of the identity space (by a hash of the described attributes), so that a
pretraining pool never holds a person of a fine-tuning dataset, whatever their seeds."""


def in_pool(identity: Identity, pool: str) -> bool:
    """Whether `identity` belongs to `pool` ("all" holds everyone)."""
    if pool == "all":
        return True
    if pool not in POOLS:
        raise ValueError(f"unknown identity pool {pool!r}; use one of {', '.join(POOLS)}")
    text = "|".join("-" if a is None else a for a in identity.key())
    half = hashlib.sha256(text.encode()).digest()[0] & 1
    return half == (0 if pool == "pretrain" else 1)


def sample_identities(n: int, seed: int = 0, pool: str = "all") -> list[Identity]:
    """Draw `n` identities with distinct described attributes, deterministically per seed,
    from `pool` (`POOLS`)."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[str | None, ...]] = set()
    out: list[Identity] = []
    misses = 0
    while len(out) < n:
        ident = _sample_identity(rng)
        if ident.key() in seen or not in_pool(ident, pool):
            misses += 1
            # Millions of combinations exist; this only trips on absurd requests.
            if misses > 100 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct identities; ask for fewer")
            continue
        seen.add(ident.key())
        out.append(ident)
    return out


# ----------------------------------------------------------------------------- local labels

NONE = "none"
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "shoes": SHOE_COLOURS,
    "bag": (NONE, *BAG_COLOURS),
    "hat": (NONE, *HAT_COLOURS),
    "scarf": (NONE, *COLOURS),
}
"""The local attributes' classes (their colour, or none), in `LOCAL_ATTRIBUTES` order: what the
positive control's auxiliary head predicts (`loss.attribute_weight`)."""


def attribute_labels(identity: Identity) -> tuple[int, ...]:
    """`identity`'s class index for each of `ATTRIBUTE_CLASSES` (shoes, bag, hat, scarf)."""
    values = {
        "shoes": identity.shoe_colour,
        "bag": identity.bag_colour or NONE,
        "hat": identity.hat_colour or NONE,
        "scarf": identity.scarf_colour or NONE,
    }
    return tuple(ATTRIBUTE_CLASSES[k].index(values[k]) for k in ATTRIBUTE_CLASSES)


# ----------------------------------------------------------------------------- look-alikes

LOCAL_ATTRIBUTES = ("shoes", "bag", "hat", "scarf")
"""What members of a look-alike group differ in: small, local parts of the figure."""
MAX_LOOKALIKE = 4
"""The largest group: hats come in 4 colours."""


@dataclass(frozen=True)
class LookalikeGroup:
    """Identities (0-based indices) equal in every described attribute but `attribute`."""

    indices: tuple[int, ...]
    attribute: str


def _local_values(base: Identity, attribute: str) -> tuple[str, ...]:
    if attribute == "shoes":
        return SHOE_COLOURS
    if attribute == "bag":
        return BAG_COLOURS
    if attribute == "hat":
        return HAT_COLOURS
    return tuple(c for c in COLOURS if c != base.upper_colour)  # scarf


def _with_local(base: Identity, attribute: str, value: str, bag: str) -> Identity:
    """`base` with its `attribute` set to `value` (a bag of kind `bag` if it had none)."""
    if attribute == "shoes":
        return replace(base, shoe_colour=value)
    if attribute == "bag":
        return replace(base, bag=base.bag or bag, bag_colour=value)
    if attribute == "hat":
        return replace(base, hat_colour=value)
    return replace(base, scarf_colour=value)


def _lookalike_group(rng: np.random.Generator, k: int) -> tuple[list[Identity], str]:
    """k identities that share one drawn person and differ only in one local attribute."""
    base = _sample_identity(rng)
    attribute = choice(rng, LOCAL_ATTRIBUTES)
    values = _local_values(base, attribute)
    picked = [values[int(i)] for i in rng.permutation(len(values))[:k]]
    bag = choice(rng, BAG_TYPES)
    return [_with_local(base, attribute, v, bag) for v in picked], attribute


def sample_lookalike_identities(
    blocks: list[int], seed: int, k: int, share: float, pool: str = "all"
) -> tuple[list[Identity], list[LookalikeGroup]]:
    """Identities for consecutive blocks (the splits), a `share` of each block in look-alike
    groups of `k` that never straddle a block; distinct described attributes overall.

    In each block the groups come first (members consecutive), then ordinary identities;
    every one of them from `pool`.
    """
    if not 2 <= k <= MAX_LOOKALIKE or not 0.0 < share <= 1.0:
        raise ValueError(f"look-alike groups of {k} (2..{MAX_LOOKALIKE}), share {share} (0..1]")
    rng = np.random.default_rng([seed, 7])
    seen: set[tuple[str | None, ...]] = set()
    out: list[Identity] = []
    groups: list[LookalikeGroup] = []
    budget = 100 * sum(blocks) + 1000

    def take(members: list[Identity]) -> bool:
        nonlocal budget
        keys = {m.key() for m in members}
        if len(keys) < len(members) or keys & seen or not all(in_pool(m, pool) for m in members):
            budget -= 1
            if budget < 0:
                raise ValueError(f"cannot draw {sum(blocks)} distinct identities; ask for fewer")
            return False
        seen.update(keys)
        out.extend(members)
        return True

    end = 0
    for size in blocks:
        end += size
        for _ in range(int(size * share) // k):
            while True:
                members, attribute = _lookalike_group(rng, k)
                if take(members):
                    groups.append(LookalikeGroup(tuple(range(len(out) - k, len(out))), attribute))
                    break
        while len(out) < end:
            take([_sample_identity(rng)])
    return out, groups
