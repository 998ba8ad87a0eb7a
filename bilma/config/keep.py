"""The values of `train.keep_checkpoints` and their parsing (what they do: bilma.runs.retention).

Here, below the run record, so that config validation checks a value without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT = "last_and_best"
FORMAT = "last_and_best, best or every:N (N >= 1 epochs)"


@dataclass(frozen=True)
class Policy:
    keep_last: bool  # after the trial is done
    every: int | None = None  # epoch snapshots every N epochs


def parse(value: str) -> Policy:
    """The policy of a `train.keep_checkpoints` value; ValueError naming the formats."""
    text = str(value).strip()
    if text == "last_and_best":
        return Policy(keep_last=True)
    if text == "best":
        return Policy(keep_last=False)
    kind, _, n = text.partition(":")
    if kind == "every" and n.strip().isdigit() and int(n) >= 1:
        return Policy(keep_last=True, every=int(n))
    raise ValueError(f"train.keep_checkpoints = {value!r}: expected {FORMAT}, e.g. every:10")


def problem(value: str) -> str | None:
    """The config error of a bad value (for bilma.config's validation), or None."""
    try:
        parse(value)
    except ValueError as e:
        return str(e)
    return None
