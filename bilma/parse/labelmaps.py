"""From a parser's classes to one of the project's label sets (lip20, atr18, ppp7).

A parser's ``id2label`` names are normalised (lower case, ``_`` and spaces to ``-``) and placed
in the requested set: a name that is a class of the set maps to it; any other name must be in
the set's mapping file ``bilma/parse/maps/<set>.json`` (data, not code), either as a plain
``classes`` entry (``"hat": "head"``) or as a ``split`` entry that cuts the class at a row of
each image (arms and legs into upper and lower parts for ppp7). A parser with a class that
neither places is refused with one message that lists every such class.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bilma.data.parsing import LABEL_SETS, LabelSet, get_label_set
from bilma.errors import LabelMapError  # noqa: F401  (importable from here too)

MAPS_DIR = Path(__file__).parent / "maps"


def normalise(name: str) -> str:
    """'Upper-clothes', 'upper_clothes', 'Upper clothes' -> 'upper-clothes'."""
    return re.sub(r"[\s_]+", "-", str(name).strip().lower())


@dataclass(frozen=True)
class Split:
    """Pixels of parser class `source` above a cut row get `upper`, the others `lower`.

    The cut lies at ``top + at * (bottom - top)`` where ``[top, bottom]`` are the first and last
    rows holding any of the parser classes `span` (the class itself included).
    """

    source: int
    upper: int
    lower: int
    span: tuple[int, ...]
    at: float


@dataclass(frozen=True)
class LabelMap:
    """How to turn a parser's ``[H, W]`` class ids into the target set's class ids."""

    target: LabelSet
    source_names: tuple[str, ...]
    lut: np.ndarray  # uint8 [num parser classes]: parser id -> target id
    splits: tuple[Split, ...] = ()
    exact: str | None = None  # the label set the parser's classes are, if exactly one

    @property
    def identity(self) -> bool:
        return not self.splits and bool(np.array_equal(self.lut, np.arange(len(self.lut))))

    def apply(self, pred: np.ndarray) -> np.ndarray:
        """Parser ids ``[H, W]`` (any integer dtype) -> uint8 target ids ``[H, W]``."""
        out = self.lut[pred]
        if not self.splits:
            return out
        rows = np.arange(pred.shape[0])[:, None]
        for s in self.splits:
            mask = pred == s.source
            if not mask.any():
                continue
            present = np.flatnonzero(np.isin(pred, s.span).any(axis=1))
            cut = present[0] + s.at * (present[-1] - present[0])
            out[mask & (rows <= cut)] = s.upper
            out[mask & (rows > cut)] = s.lower
        return out

    def describe(self) -> str:
        """One line for the log: how the parser's classes reach the target set."""
        if self.exact == self.target.name:
            return f"the parser's {len(self.source_names)} classes are {self.target.name}"
        how = f"bilma/parse/maps/{self.target.name}.json"
        cut = f", {len(self.splits)} cut at a row per image" if self.splits else ""
        return (
            f"{len(self.source_names)} parser classes mapped onto {self.target.name} by {how}{cut}"
        )


@cache
def load_map_file(target: str) -> dict[str, Any]:
    """The mapping data of a target set (``{}`` parts when it has no file)."""
    path = MAPS_DIR / f"{target}.json"
    if not path.is_file():
        return {"classes": {}, "split": {}}
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("target") != target:
        raise ValueError(f"{path}: 'target' is {data.get('target')!r}, expected {target!r}")
    return data


def id2label_names(id2label: Mapping[Any, str], where: str = "the parser") -> tuple[str, ...]:
    """The parser's class names in id order, checked to be ids ``0..n-1``."""
    try:
        ids = sorted(int(k) for k in id2label)
    except (TypeError, ValueError):
        raise LabelMapError(
            f"{where}: id2label keys must be integers, got {list(id2label)[:5]}"
        ) from None
    by_id = {int(k): v for k, v in id2label.items()}
    if not ids or ids != list(range(len(ids))):
        raise LabelMapError(
            f"{where}: id2label must name classes 0..n-1, got ids {ids[:10]}; fix its config.json"
        )
    return tuple(normalise(by_id[i]) for i in ids)


def exact_label_set(names: tuple[str, ...]) -> str | None:
    """The project label set whose classes are exactly `names`, in order, if any."""
    for ls in LABEL_SETS.values():
        if names == ls.classes:
            return ls.name
    return None


def build_label_map(
    id2label: Mapping[Any, str], target: str | LabelSet, where: str = "the parser"
) -> LabelMap:
    """Place every parser class in `target`; refuse with the list of those that do not fit."""
    ls = get_label_set(target)
    names = id2label_names(id2label, where)
    data = load_map_file(ls.name)
    classes: dict[str, str] = data.get("classes", {})
    splits_data: dict[str, dict[str, Any]] = data.get("split", {})
    index = {n: i for i, n in enumerate(ls.classes)}
    source_index = {n: i for i, n in enumerate(names)}
    if len(source_index) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise LabelMapError(f"{where}: id2label names {', '.join(dup)} more than one class")
    lut = np.zeros(len(names), dtype=np.uint8)
    splits: list[Split] = []
    unplaced: list[str] = []
    for i, name in enumerate(names):
        if name in index:
            lut[i] = index[name]
        elif name in splits_data:
            rule = splits_data[name]
            span = tuple(sorted({source_index[n] for n in rule["span"] if n in source_index} | {i}))
            up, low = index[rule["upper"]], index[rule["lower"]]
            lut[i] = up
            splits.append(Split(i, up, low, span, float(rule.get("at", 0.5))))
        elif name in classes:
            lut[i] = index[classes[name]]
        else:
            unplaced.append(f"{i}:{name}")
    if unplaced:
        raise LabelMapError(
            f"{where}: {len(unplaced)} of its {len(names)} classes cannot be placed in "
            f"{ls.name}: {', '.join(unplaced)}. Add them to {MAPS_DIR / (ls.name + '.json')} "
            f"(class name -> {ls.name} class), or choose another --labels ({', '.join(LABEL_SETS)})"
        )
    lut.setflags(write=False)
    return LabelMap(ls, names, lut, tuple(splits), exact_label_set(names))
