"""The `parse` and `parse-report` command lines (options here; torch is imported only to run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bilma.data.formats import ALL_DATASETS
from bilma.data.records import DataError

LABEL_SET_NAMES = ("lip20", "atr18", "ppp7")
"""`bilma.data.parsing.LABEL_SETS`'s names, without importing torch to build the CLI."""


def add_parse_args(p: argparse.ArgumentParser) -> None:
    """The `parse` command's options."""
    p.add_argument("--dataset", required=True, choices=ALL_DATASETS)
    p.add_argument("--root", required=True, type=Path, help="dataset folder")
    p.add_argument("--model", required=True, type=Path, help="local parser folder")
    p.add_argument(
        "--labels",
        choices=LABEL_SET_NAMES,
        help="label set to write (default: the parser's own, if it is one of them)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--shard", default="0/1", help="I/N: parse the I-th (from 0) of N slices")
    p.add_argument("--parsing-root", type=Path, help="default: <root>/parsing")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--no-progress", action="store_true", help="no progress line")


def cmd_parse(args: argparse.Namespace) -> int:
    from bilma.parse.run import ParseOptions, parse_dataset, parse_shard_spec

    try:
        shard = parse_shard_spec(args.shard)
    except ValueError as e:
        raise DataError(str(e)) from None
    if args.batch_size < 1 or args.workers < 0:
        raise DataError("--batch-size must be >= 1 and --workers >= 0")
    out = parse_dataset(
        ParseOptions(
            dataset=args.dataset,
            root=args.root,
            model=args.model,
            labels=args.labels,
            batch_size=args.batch_size,
            device=args.device,
            shard=shard,
            parsing_root=args.parsing_root,
            workers=args.workers,
            progress=not args.no_progress,
        )
    )
    print(
        f"parsed {out['parsed']} images ({out['skipped']} already done) of shard "
        f"{shard[0]}/{shard[1]} into {out['out']}, {out['images_per_s']:.1f} images/s"
    )
    return 0


def add_report_args(p: argparse.ArgumentParser) -> None:
    """The `parse-report` command's options."""
    p.add_argument("--dataset", required=True, choices=ALL_DATASETS)
    p.add_argument("--root", required=True, type=Path, help="dataset folder")
    p.add_argument("--labels", required=True, choices=LABEL_SET_NAMES)
    p.add_argument("--parsing-root", type=Path, help="default: <root>/parsing")
    p.add_argument("--against", type=Path, help="another parsing root (or label-set folder)")
    p.add_argument("--image-size", type=int, nargs=2, default=(384, 128), metavar=("H", "W"))
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--examples", type=int, default=6, help="images in the overview PNG")
    p.add_argument("--out", type=Path, help="overview PNG (default: report-<labels>.png there)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead")


def cmd_report(args: argparse.Namespace) -> int:
    from bilma.parse.report import format_report, parse_report

    r = parse_report(
        args.dataset,
        args.root,
        args.labels,
        args.parsing_root,
        args.against,
        tuple(args.image_size),
        args.patch,
        args.examples,
        args.out,
    )
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    return 0
