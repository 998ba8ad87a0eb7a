"""`python analysis/show_retrievals.py --trial TRIAL_DIR`: retrieval examples as one PNG.

For N captions of the split, the caption beside its top-10 gallery images (true matches
framed green, others red), written to <trial>/figures/retrievals_<split>.png (or --out) and
logged as an artifact of the trial's MLflow run. The checkpoint is the one the tables report
(the selected one, ckpt/best.pt); the figure is titled by the trial's variant and seed.

Given a study folder, it shows the trial the table reports first, chosen without looking at
any test number: the first variant (at its first grid point), its lowest seed; --variant
and --seed choose another. Never "the best trial on test".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bilma.errors import run_command  # noqa: E402


def build_parser(prog: str = "python analysis/show_retrievals.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--trial",
        type=Path,
        required=True,
        help="trial directory runs/<study>/<id>, or a study folder: the table's first variant, "
        "lowest seed (or --variant, --seed)",
    )
    p.add_argument(
        "--variant",
        default=None,
        metavar="NAME",
        help="with a study folder: this variant (grid name or row label) instead of the first",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="with a study folder: this seed, not the lowest"
    )
    p.add_argument("--queries", type=int, default=8, help="captions to show (default 8)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: in the trial)")
    p.add_argument("--data-root", default=None, help="the dataset's folder, if it moved")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the figure to MLflow")
    return p


def main(argv: list[str] | None = None, prog: str = "python analysis/show_retrievals.py") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.queries < 1:
        print("error: --queries must be at least 1", file=sys.stderr)
        return 2
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from bilma.analysis import retrievals

    trial = retrievals.pick_trial(args.trial, args.variant, args.seed)
    shown = retrievals.shown(trial)
    if trial != args.trial:
        rule = (
            "the table's first variant, lowest seed; --variant/--seed choose another"
            if args.variant is None and args.seed is None
            else "as chosen"
        )
        print(f"{args.trial}: showing {shown.variant} seed {shown.seed} ({trial}): {rule}")
    queries = retrievals.retrieve(trial, args.queries, args.split, args.data_root)
    out = args.out or trial / "figures" / f"retrievals_{args.split}.png"
    retrievals.draw(queries, shown.title(args.split, queries), out)
    print(f"wrote {out}")
    if not args.no_mlflow:
        run_id = retrievals.log_to_mlflow(trial, out)
        if run_id:
            print(f"logged to MLflow run {run_id} as figures/{out.name}")
    return 0
