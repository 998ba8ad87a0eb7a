"""`python analysis/branch_probe.py --study NAME`: what the MLM and MIM branches learned.

Reads the finished trials of a study (trial directories under --runs, default runs/), probes
each selected checkpoint on held-out val pairs (analysis/branches.py says what is measured),
prints one Markdown row per variant (mean ± std over seeds) and, with --out, writes the
table, the per-trial numbers as JSON and a plot of each loss part's training curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bilma.analysis.records import AnalysisError  # noqa: E402
from bilma.errors import run_command


def build_parser(prog: str = "python analysis/branch_probe.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="study name (runs/<study>/)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default runs/)")
    p.add_argument("--max-pairs", type=int, default=800, help="val pairs per trial (800)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="folder for .md, .json and the plot")
    return p


def main(argv: list[str] | None = None, prog: str = "python analysis/branch_probe.py") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from bilma.analysis import probe as branches
    from bilma.runs.trial_dir import TrialDir, find_trials

    folder = args.runs / args.study
    trials = [TrialDir(p) for p in find_trials(folder)] if folder.is_dir() else []
    done = [(t, t.read_result()) for t in trials]
    done = [(t, r) for t, r in done if r is not None]
    if not done:
        raise AnalysisError(
            f"{folder}: no finished trial of study '{args.study}'; run its grid first "
            "(python sweeps/launch.py --grid ...) or point --runs at its runs root"
        )
    rows, curves, per_trial = [], {}, {}
    done.sort(key=lambda tr: (tr[0].read_launch().variant_index, tr[1].get("seed")))
    for n, (trial, result) in enumerate(done, 1):
        variant = branches.describe(result)
        print(f"probing {n}/{len(done)}: {variant}, seed {result.get('seed')}", file=sys.stderr)
        values = branches.probe_trial(trial.path, args.max_pairs, device=args.device)
        rows.append((variant, values))
        curves.setdefault(variant, []).append(branches.train_loss_parts(trial.path))
        per_trial[trial.trial_id] = {"variant": variant, "seed": result.get("seed"), **values}
    md = branches.markdown(rows)
    print(f"Branch probe of study '{args.study}' ({len(done)} finished trials, val pairs):\n")
    print(md, end="")
    if args.out is not None:
        from bilma.fileio import atomic_write_text

        args.out.mkdir(parents=True, exist_ok=True)
        name = f"{args.study}_branch_probe"
        atomic_write_text(args.out / f"{name}.md", md)
        atomic_write_text(args.out / f"{name}.json", json.dumps(per_trial, indent=1) + "\n")
        print(f"wrote {args.out / f'{name}.md'}\nwrote {args.out / f'{name}.json'}")
        plot = branches.loss_parts_plot(args.study, curves, args.out)
        if plot is not None:
            print(f"wrote {plot}")
    return 0
