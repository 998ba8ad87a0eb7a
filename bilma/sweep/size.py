"""A grid's size, known before it is expanded: variants x axis values x seeds, counted from
the grid file alone (a grid of 100,000 trials answers in milliseconds; expanding and
validating it would take minutes).

    size = grid_size(grid)            # Size(count=1200, factors=["12 variants", ...])
    print(size.line(grid.study))      # "grid ablation: 1,200 trials (12 variants x ...)"
    check_size(size, grid.study, max_trials=500, yes=False)   # refuses above the limit

Above `--max-trials` (default `MAX_TRIALS`) a launch needs `--yes`; on a terminal the
launcher asks instead (y/N), never when stdin is not a terminal (a script or a job).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TextIO

from bilma.errors import GridTooLarge
from bilma.sweep.gridfile import Grid, _short_names

MAX_TRIALS = 500  # above this many trials a launch asks for --yes
SHOW_FROM = 100  # the count is shown before expansion from this many trials on


@dataclass(frozen=True)
class Size:
    count: int  # before exclude rules and merged duplicates (expansion knows those)
    factors: list[str]  # "12 variants", "4 mask_ratio values", "25 seeds"
    excludes: bool  # the grid has exclude rules: the count is an upper bound

    def line(self, study: str) -> str:
        """'grid ablation: 1,200 trials (12 variants x 4 mask_ratio values x 25 seeds)'."""
        bound = "at most " if self.excludes else ""
        return f"grid {study}: {bound}{self.count:,} trials ({' x '.join(self.factors)})"


def _n(count: int, what: str) -> str:
    return f"{count:,} {what}" + ("" if count == 1 else "s")


def grid_size(grid: Grid) -> Size:
    """The number of trials `expand` would make before excludes: no config is built."""
    short = _short_names(grid.axes)
    factors = [_n(len(grid.variants), "variant")]
    counts = [len(grid.variants)]
    for key, values in grid.grid.items():
        counts.append(len(values))
        factors.append(f"{len(values):,} {short[key]} value" + ("" if len(values) == 1 else "s"))
    for group in grid.zip:
        n = len(next(iter(group.values())))
        counts.append(n)
        factors.append(f"{n:,} zipped ({', '.join(short[k] for k in group)})")
    seeds = max(1, len(grid.seeds))
    counts.append(seeds)
    factors.append(_n(seeds, "seed"))
    return Size(math.prod(counts), factors, bool(grid.exclude))


def check_size(
    size: Size,
    study: str,
    max_trials: int,
    yes: bool,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> None:
    """Go on, or raise `GridTooLarge` (one line) for a grid above `max_trials` without
    `yes`; a terminal on stdin is asked first (y/N), anything else never."""
    if size.count <= max_trials or yes:
        return
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    if stdin is not None and stdin.isatty():
        out.write(f"{size.count:,} trials is above --max-trials {max_trials:,}; go on? [y/N] ")
        out.flush()
        if stdin.readline().strip().lower() in ("y", "yes"):
            return
    raise GridTooLarge(
        f"grid {study}: {size.count:,} trials is above --max-trials {max_trials:,}; add --yes "
        f"to go on (or --max-trials {size.count}), or make the grid smaller"
    )
