"""`python analysis/make_tables.py`: benchmark and ablation tables of finished sweeps.

    python analysis/make_tables.py                          # every study in sqlite:///mlflow.db
    python analysis/make_tables.py --study smoke --out tables --format all
    python analysis/make_tables.py --runs runs/ --study main   # trial directories, no MLflow

Markdown goes to stdout; with --out, LaTeX (booktabs) and CSV files and the PNG plots go there
(and, read from MLflow, to the study's parent run as artifacts under tables/).
Runs are grouped by variant, grid point and dataset and aggregated over seeds (mean ± sample
std, n); ablations show the difference to the grid's first variant with a paired t-test.
A study whose variants reproduce a paper's rows (analysis/published.yaml, `reproductions:`, e.g.
bilma_table2) also gets those rows beside ours: "paper", "ours" and "ours - paper".
A bad study, store or folder gets one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bilma.analysis.records import ALL_METRICS, DEFAULT_URI, RESULT_METRICS, AnalysisError  # noqa: E402
from bilma.errors import run_command

FORMATS = ("md", "tex", "csv", "all")


def build_parser(prog: str = "python analysis/make_tables.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--study", action="append", default=None, metavar="NAME", help="study (repeatable)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help=f"MLflow store (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})",
    )
    src.add_argument(
        "--runs", type=Path, default=None, metavar="DIR", help="read trial directories instead"
    )
    p.add_argument(
        "--metric",
        nargs="+",
        choices=ALL_METRICS,
        default=list(RESULT_METRICS),
        help="metrics to show (the first one is plotted against the swept axes); lookalike_*, "
        "ordinary_* and twin_errors exist for synthetic data with look-alike groups",
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="VARIANT",
        help="the variant Δ and paired p are taken against (default: the grid's first)",
    )
    p.add_argument("--format", choices=FORMATS, default="md", help="files written into --out")
    p.add_argument("--out", type=Path, default=None, help="folder for LaTeX, CSV and plots")
    return p


def main(argv: list[str] | None = None, prog: str = "python analysis/make_tables.py") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.format in ("tex", "csv", "all") and args.out is None:
        print(f"error: --format {args.format} writes files: add --out DIR", file=sys.stderr)
        return 2
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from bilma.analysis import records as runs

    plots = args.out is not None
    if args.runs is not None:
        studies = runs.load_dirs(args.runs, args.study)
        source = f"trial directories under {args.runs}"
    else:
        studies = runs.load_mlflow(args.tracking_uri, args.study, curves=plots)
        source = f"MLflow at {runs.resolve_uri(args.tracking_uri or DEFAULT_URI)}"
    if not studies:
        raise AnalysisError(f"no studies in {source}: run a sweep first")
    code = 0
    first = True
    for study, records in studies.items():
        try:
            written = _study(study, records, args)
        except AnalysisError as e:  # the other studies still get their tables
            print(f"error: {e}", file=sys.stderr)
            code = 1
            continue
        if not first:
            print()
        first = False
        print(written["md"], end="")
        if written["files"]:
            print()
            for path in written["files"]:
                print(f"wrote {path}")
            if args.runs is None:  # the study's parent run(s) keep them too, under tables/
                from bilma.tracking.parent import log_study_tables

                for line in log_study_tables(args.tracking_uri, study, written["files"]):
                    print(line)
    return code


def _study(study: str, records, args: argparse.Namespace) -> dict:
    from bilma.analysis import aggregate, tables

    table = aggregate.build_table(study, records, args.metric, args.baseline)
    for w in table.warnings:
        print(f"warning: {study}: {w}", file=sys.stderr)
    md = tables.markdown(table)
    from bilma.runs.totals import totals_line  # the study's GPU- and CPU-hours

    if used := totals_line(r.usage for r in records):
        md += f"\n{used}\n"
    files: list[Path] = []
    if args.out is not None:
        from bilma.analysis import plots  # matplotlib: only when figures are asked for
        from bilma.fileio import atomic_write_text

        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        name = plots.safe_name(study)
        texts = {"md": md, "tex": tables.latex(table), "csv": tables.csv_text(table)}
        wanted = ("md", "tex", "csv") if args.format == "all" else (args.format,)
        for ext in wanted:
            if ext == "md" and args.format != "all":
                continue  # plain --format md: Markdown on stdout only
            path = out / f"{name}.{ext}"
            atomic_write_text(path, texts[ext])
            files.append(path)
        files += plots.axis_plots(table, args.metric[0], out)
        epoch = plots.epoch_plot(study, records, out)
        if epoch is not None:
            files.append(epoch)
    return {"md": md, "files": files}
