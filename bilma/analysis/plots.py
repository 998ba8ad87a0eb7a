"""Figures of a study as PNG files of a fixed size (FIGSIZE at DPI): a metric against each
swept axis with a ±std band per variant, and R1 per epoch on the selection split per variant.

R1 plots draw the chance level as a dashed line labelled "chance" where the trials recorded
it (chance_R1: 100 / identities in the test gallery). It is the test gallery's: on a curve of
another split (val) the line is labelled "chance (test gallery)", since the val gallery's
chance level is not recorded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bilma.analysis.aggregate import (  # noqa: E402
    StudyTable,
    chance_levels,
    dataset_axes,
    dataset_name,
    fmt_value,
    short_axes,
)
from bilma.analysis.records import TrialRecord  # noqa: E402
from bilma.analysis.stats import mean, sample_std  # noqa: E402
from bilma.fileio import atomic_write_bytes  # noqa: E402

FIGSIZE = (8.0, 5.0)
DPI = 100  # -> 800 x 500 pixels
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches: the size stays FIGSIZE * DPI
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _band(ax, xs: Sequence[float], means: Sequence[float], stds: Sequence[float], label: str):
    (line,) = ax.plot(xs, means, marker="o", label=label)
    lo = [m - (0.0 if math.isnan(s) else s) for m, s in zip(means, stds, strict=True)]
    hi = [m + (0.0 if math.isnan(s) else s) for m, s in zip(means, stds, strict=True)]
    ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())


def _chance_lines(ax, chance: dict[str, list[float]], note: str = "") -> None:
    """A dashed horizontal line at each chance R1 (dataset -> values), labelled "chance"
    (with the datasets when they differ)."""
    where: dict[float, list[str]] = {}
    for d, values in chance.items():
        for x in values:
            where.setdefault(x, []).append(dataset_name(d))
    for x, names in where.items():
        label = "chance" + note + (f" ({', '.join(names)})" if len(where) > 1 else "")
        ax.axhline(x, linestyle="--", linewidth=1.0, color="0.4", label=label)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def axis_plots(table: StudyTable, metric: str, out: Path) -> list[Path]:
    """For each swept axis: `metric` against it, one line (±std band) per variant and value
    of the other axes; per dataset. Categorical axes are placed at even positions."""
    paths = []
    short = short_axes(table.axes)
    rows = [r for r in table.rows if not r.published]
    for axis in table.axes:
        for d in table.datasets:
            lines: dict[str, list[tuple]] = {}
            for r in rows:
                point = dict(r.point)
                cell = r.cells.get((d, metric))
                if axis not in point or cell is None:
                    continue
                rest = [f"{short[k]}={fmt_value(v)}" for k, v in r.point if k != axis]
                name = r.variant_base + (f" [{', '.join(rest)}]" if rest else "")
                lines.setdefault(name, []).append((point[axis], cell.mean, cell.std))
            if not lines:
                continue
            values = list(dict.fromkeys(v for pts in lines.values() for v, _, _ in pts))
            numeric = all(_is_number(v) for v in values)
            order = sorted(values) if numeric else values
            fig, ax = plt.subplots(figsize=FIGSIZE)
            for name, pts in lines.items():
                pts = sorted(pts, key=lambda p: order.index(p[0]))
                xs = [p[0] if numeric else order.index(p[0]) for p in pts]
                _band(ax, xs, [p[1] for p in pts], [p[2] for p in pts], name)
            if not numeric:
                ax.set_xticks(range(len(order)), [fmt_value(v) for v in order])
            if metric == "R1" and d in table.chance:
                _chance_lines(ax, {d: table.chance[d]})
            ax.set_xlabel(axis)
            ax.set_ylabel(f"test {metric} (%)")
            ax.set_title(f"{table.study}: {metric} against {short[axis]} ({dataset_name(d)})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            fig.tight_layout()
            suffix = f"_{safe_name(d)}" if len(table.datasets) > 1 else ""
            name = f"{safe_name(table.study)}_{metric}_vs_{safe_name(short[axis])}{suffix}.png"
            paths.append(_save(fig, out / name))
    return paths


def epoch_plot(study: str, records: list[TrialRecord], out: Path) -> Path | None:
    """R1 per epoch on the selection split, mean over seeds with a ±std band, per variant
    (and grid point, and dataset when several); None when no trial has per-epoch records."""
    curves: dict[str, dict[int, list[float]]] = {}
    splits = set()
    finished = [r for r in records if r.finished]
    datasets = {r.dataset for r in finished}
    drop = dataset_axes(finished)
    for r in finished:
        if not r.curve:
            continue
        splits.add(r.curve_split)
        axes = short_axes([k for k, _ in r.point(drop)])
        rest = [f"{axes[k]}={fmt_value(v)}" for k, v in r.point(drop)]
        name = r.variant_base + (f" [{', '.join(rest)}]" if rest else "")
        if len(datasets) > 1:
            name += f" ({dataset_name(r.dataset)})"
        for epoch, value in r.curve:
            curves.setdefault(name, {}).setdefault(epoch, []).append(value)
    if not curves:
        return None
    with_curve = [r for r in finished if r.curve]
    chance = chance_levels(with_curve, sorted({r.dataset for r in with_curve}))
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, by_epoch in curves.items():
        epochs = sorted(by_epoch)
        _band(
            ax,
            epochs,
            [mean(by_epoch[e]) for e in epochs],
            [sample_std(by_epoch[e]) for e in epochs],
            name,
        )
    split = "/".join(sorted(s for s in splits if s)) or "val"
    _chance_lines(ax, chance, "" if split == "test" else " (test gallery)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{split} R1 (%)")
    ax.set_title(f"{study}: {split} Rank-1 per epoch (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, out / f"{safe_name(study)}_{safe_name(split)}_R1_per_epoch.png")
