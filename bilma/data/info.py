"""`bilma data-info`: counts of ids, images and captions per split of one dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bilma.data.formats import ALL_DATASETS, annotation_file, dataset_stats, read_annotations

_COLUMNS = ("ids", "images", "captions")


def add_data_info_args(parser: argparse.ArgumentParser) -> None:
    """Add the `data-info` options to `parser` (a subparser)."""
    parser.add_argument("--dataset", required=True, choices=ALL_DATASETS, help="dataset format")
    parser.add_argument(
        "--root", required=True, type=Path, help="dataset folder (holds the annotation file)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")


def run_data_info(args: argparse.Namespace) -> int:
    """Run `data-info` from parsed arguments; return the exit code."""
    return main_data_info(args.dataset, args.root, args.json)


def format_table(stats: dict[str, dict[str, int]]) -> str:
    """Render per-split counts as an aligned table with a total row."""
    rows = [(split, *(f"{counts[c]:,}" for c in _COLUMNS)) for split, counts in stats.items()]
    rows.append(("total", *(f"{sum(s[c] for s in stats.values()):,}" for c in _COLUMNS)))
    header = ("split", *_COLUMNS)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])


def main_data_info(dataset: str, root: str | Path, as_json: bool) -> int:
    """Print counts per split of `dataset` under `root`; raises `DataError` on bad input."""
    records = read_annotations(dataset, root)
    stats = dataset_stats(records)
    if as_json:
        print(json.dumps(stats))
    else:
        print(f"{dataset}: {annotation_file(dataset, Path(root))}")
        print(format_table(stats))
    return 0
