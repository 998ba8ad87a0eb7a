"""A StudyTable as Markdown (stdout), LaTeX (booktabs) and CSV (every number, full precision).

Every rendering states the checkpoint-selection rule, how many runs the table aggregates,
what bold means (a paired test against the baseline, `aggregate`), the chance level where
the trials recorded it, and lists the trials it did not average in (unfinished, failed,
early-stopped).

Markdown shows every metric in one table. LaTeX fits a paper's column: the metrics are split
by group (R1/R5/R10, mAP/mINP, the look-alike ones) and, where a group is still too wide, by
dataset or into smaller chunks, so that no tabular has more than TEX_MAX_COLUMNS columns; an
ablation with too many swept axes for a column names them in the row label instead.

A study whose variants reproduce rows of a paper's table (analysis/published.yaml,
`reproductions:`) gets a second table in every format: each of our rows beside the paper's,
per dataset and metric, as "paper", "ours" and "ours - paper".
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from bilma.analysis.aggregate import (
    Cell,
    PaperPair,
    Row,
    StudyTable,
    dataset_name,
    fmt_value,
    row_label,
    short_axes,
)
from bilma.analysis.records import GROUP_METRICS, STOPPED
from bilma.analysis.stats import ALPHA, MIN_PAIRS

PUBLISHED_MARK = "†"
TEX_MAX_COLUMNS = 7  # a booktabs tabular of at most this many columns fits a paper's column
# The metrics a LaTeX tabular keeps together; any other metric is a group of its own.
METRIC_GROUPS = (("R1", "R5", "R10"), ("mAP", "mINP"), GROUP_METRICS)


def fmt_num(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"


def fmt_mean_std(c: Cell | None, pm: str = " ± ") -> str:
    if c is None:
        return "n/a"
    if c.n <= 1:
        return fmt_num(c.mean)  # published, or a single run: no spread to show
    return f"{fmt_num(c.mean)}{pm}{fmt_num(c.std)}"


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_delta(c: Cell | None, row: Row) -> str:
    """'+2.00 (p=0.012)'; the difference alone under MIN_PAIRS shared seeds (no p kept)."""
    if row.baseline:
        return "baseline"
    if c is None or c.delta is None:
        return "n/a"
    if c.p is None:
        return f"{c.delta:+.2f}"
    shown = fmt_p(c.p)
    return f"{c.delta:+.2f} (p{shown if shown.startswith('<') else '=' + shown})"


def fmt_diff(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.2f}"


def fmt_chance(x: float) -> str:
    return f"{x:.2f}" if x >= 0.05 else f"{x:.2g}"


def _trial_line(r) -> str:
    where = f", {dataset_name(r.dataset)}" if r.dataset else ""
    state = "early-stopped" if r.state == STOPPED else r.state
    cause = f" ({r.cause})" if r.cause and not r.finished else ""  # why it ended
    return f"{r.variant or r.variant_base} seed={r.seed}{where} ({r.trial_id}): {state}{cause}"


def notes(t: StudyTable) -> list[str]:
    """The lines under a table: selection rule, runs aggregated, tests and what bold means,
    chance level, sources, warnings."""
    out = [
        f"Checkpoint selection: {'; '.join(t.selection)}.",
        f"Aggregates {t.runs} finished run{'s' if t.runs != 1 else ''}: mean ± sample standard "
        "deviation over seeds, n runs per cell.",
    ]
    out += _test_notes(t)
    if t.paper:
        out.append(
            f"Paper{PUBLISHED_MARK}: the published row each variant reproduces "
            "(analysis/published.yaml, reproductions); ours: mean ± sample standard deviation "
            "(n runs); ours - paper: the difference of the means, untested (a published number "
            "has no seeds)."
        )
    chance = _chance_note(t)
    if chance:
        out.append(chance)
    if t.sources:
        refs = "; ".join(f"[{k}] {v}" for k, v in t.sources.items())
        out.append(f"{PUBLISHED_MARK} published numbers, copied from the papers: {refs}.")
    out += [f"Warning: {w}." for w in t.warnings]
    if t.excluded:
        out.append(f"Not averaged in ({len(t.excluded)}):")
        out += [f"- {_trial_line(r)}" for r in t.excluded]
    return out


def _test_notes(t: StudyTable) -> list[str]:
    """What Δ, p and bold mean, and why p-values are missing where there are too few seeds."""
    compared = t.compared()
    if t.baseline is None or not compared:
        return []
    ours = [r for r in t.rows if not r.published]
    several = len({r.variant_base for r in ours}) > 1
    ref = " (the first row)" if not several else (" at the same grid point" if t.axes else "")
    out = []
    if t.kind == "ablation":
        out.append(
            f'Δ: difference of the means to the baseline "{t.baseline}"{ref}; p: two-sided '
            f"paired Student's t-test over the seeds both share (shown with >= {MIN_PAIRS})."
        )
    rule = f'Bold: differs from "{t.baseline}"{ref} with paired p < {ALPHA:g} over >= {MIN_PAIRS} seeds'
    if t.kind == "main":
        rule += (
            f" (on the same dataset); published{PUBLISHED_MARK} numbers have no seeds to pair "
            "and are never bold"
        )
    out.append(rule + ".")
    short = sorted({c.pairs for c in compared if c.pairs < MIN_PAIRS})
    if short:
        what = "p-values" if t.kind == "ablation" else "Bold (a paired test)"
        ns = ", ".join(map(str, short))
        if all(c.pairs < MIN_PAIRS for c in compared):
            out.append(f"{what} need >= {MIN_PAIRS} paired seeds; this table has n = {ns}.")
        else:
            out.append(f"{what} need >= {MIN_PAIRS} paired seeds; none for cells with n = {ns}.")
    return out


def _chance_note(t: StudyTable) -> str | None:
    """'Chance R1: 33.33 (...)', per dataset when they differ; None when no trial recorded it."""
    if not t.chance:
        return None
    shown = {d: "/".join(fmt_chance(x) for x in xs) for d, xs in t.chance.items()}
    how = "100 / identities in the test gallery"
    if len(set(shown.values())) == 1 and set(shown) == set(t.datasets):
        return f"Chance R1: {next(iter(shown.values()))} ({how})."
    per = ", ".join(f"{v} ({dataset_name(d)})" for d, v in shown.items())
    return f"Chance R1 ({how}): {per}."


def _title(t: StudyTable) -> str:
    if t.kind == "main":
        return f"{t.study}: {', '.join(dataset_name(d) for d in t.datasets)}"
    return f"{t.study}: ablation on {dataset_name(t.datasets[0])}"


def _row_name(r: Row) -> str:
    return f"{r.label} {PUBLISHED_MARK}[{r.citation}]" if r.published else r.label


# ----------------------------------------------------------------------------- paper vs ours

PAPER_HEADER = ["variant", "paper row", "dataset", "metric", "paper", "ours", "ours - paper"]


def _paper_title(t: StudyTable) -> str:
    return f"{t.study}: the paper's rows beside ours"


def _paper_row_name(p: PaperPair) -> str:
    """'Table 2: SDM+ID †[bilma]': where in the paper (`what` up to its first comma)."""
    where = p.paper.what.split(",")[0] or p.paper.table
    return f"{where}: {p.paper.row} {PUBLISHED_MARK}[{p.paper.citation}]"


def _paper_body(t: StudyTable, text) -> list[list[str]]:
    """One line per PaperPair: PAPER_HEADER's cells, each escaped by `text`."""
    body = []
    for p in t.paper:
        ours = "n/a" if p.cell is None else f"{fmt_mean_std(p.cell)} (n={p.cell.n})"
        cells = [p.ours.label, _paper_row_name(p), dataset_name(p.dataset), p.metric]
        body.append([text(x) for x in (*cells, fmt_num(p.value), ours, fmt_diff(p.diff))])
    return body


# ----------------------------------------------------------------------------- markdown


def _md_cell(c: Cell | None) -> str:
    text = fmt_mean_std(c)
    return f"**{text}**" if c is not None and c.bold else text


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(t: StudyTable) -> str:
    header, rows = _grid(t, t.rows, _md_cell, _md_escape)
    lines = [f"### {_title(t)}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if t.paper:
        lines += ["", f"#### {_paper_title(t)}", ""]
        lines.append("| " + " | ".join(PAPER_HEADER) + " |")
        lines.append("|" + "|".join("---" for _ in PAPER_HEADER) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in _paper_body(t, _md_escape)]
    lines.append("")
    lines += notes(t)
    return "\n".join(lines) + "\n"


def _grid(
    t: StudyTable,
    rows: list[Row],
    cell,
    text,
    metrics: list[str] | None = None,
    datasets: list[str] | None = None,
    axes: list[str] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Header and body cells, shared by Markdown and LaTeX: `cell` writes a Cell, `text`
    escapes every other string. `metrics`, `datasets`: the columns (default: all); `axes`:
    the swept axes shown as columns of an ablation (default: all), the others are named in
    the row label."""
    metrics = t.metrics if metrics is None else metrics
    datasets = t.datasets if datasets is None else datasets
    axes = t.axes if axes is None else axes
    short = short_axes(t.axes)
    if t.kind == "main":
        header = ["method"]
        for d in datasets:
            header += [f"{dataset_name(d)} {metrics[0]}", *metrics[1:], "n"]
        body = []
        for r in rows:
            line = [text(_row_name(r))]
            for d in datasets:
                line += [cell(r.cells.get((d, m))) for m in metrics]
                line.append(text("–" if r.published else str(r.n.get(d, 0))))
            body.append(line)
        return [text(h) for h in header], body
    header = ["variant", *(short[a] for a in axes), "n"]
    for m in metrics:
        header += [m, f"Δ{m}"]
    d = datasets[0]
    body = []
    for r in rows:
        point = dict(r.point)
        label = row_label(r.variant_base, tuple(kv for kv in r.point if kv[0] not in axes), short)
        line = [label, *(fmt_value(point[a]) if a in point else "–" for a in axes)]
        line = [text(x) for x in (*line, str(r.n.get(d, 0)))]
        for m in metrics:
            c = r.cells.get((d, m))
            line += [cell(c), text(fmt_delta(c, r))]
        body.append(line)
    return [text(h) for h in header], body


# ----------------------------------------------------------------------------- LaTeX

_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "†": r"$^\dagger$",
    "–": "--",
    "<": r"$<$",
    ">": r"$>$",
    "≥": r"$\geq$",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s.replace(">=", "≥"))


def _tex_cell(c: Cell | None) -> str:
    text = tex_escape(fmt_mean_std(c))
    return rf"\textbf{{{text}}}" if c is not None and c.bold else text


def _chunks(items: list, size: int) -> list[list]:
    """`items` in as few consecutive chunks of at most `size` as can be, of even lengths."""
    parts = -(-len(items) // size)
    step = -(-len(items) // parts)
    return [items[i : i + step] for i in range(0, len(items), step)]


def metric_groups(metrics: list[str]) -> list[list[str]]:
    """The metrics by METRIC_GROUPS, groups and metrics in the order given."""
    groups: dict[int, list[str]] = {}
    for m in metrics:
        key = next(
            (i for i, g in enumerate(METRIC_GROUPS) if m in g), len(METRIC_GROUPS) + len(groups)
        )
        groups.setdefault(key, []).append(m)
    return list(groups.values())


@dataclass(frozen=True)
class TexPart:
    """One tabular of a table's LaTeX: these metrics on these datasets, these axes as columns."""

    metrics: list[str]
    datasets: list[str]
    axes: list[str]

    def columns(self, kind: str) -> int:
        if kind == "main":  # method, then per dataset its metrics and n
            return 1 + len(self.datasets) * (len(self.metrics) + 1)
        return 2 + len(self.axes) + 2 * len(self.metrics)  # variant, axes, n, (m, Δm) each


def tex_parts(t: StudyTable, width: int = TEX_MAX_COLUMNS) -> list[TexPart]:
    """How the table is split into tabulars of at most `width` columns (`width` >= 4)."""
    parts = []
    if t.kind == "main":
        for group in metric_groups(t.metrics):
            for metrics in _chunks(group, width - 2):  # one dataset: method, metrics, n
                per = (width - 1) // (len(metrics) + 1)
                parts += [TexPart(metrics, ds, []) for ds in _chunks(t.datasets, per)]
        return parts
    axes = t.axes if 2 + len(t.axes) + 2 <= width else []  # else named in the row label
    per = (width - 2 - len(axes)) // 2
    for group in metric_groups(t.metrics):
        parts += [TexPart(metrics, t.datasets, axes) for metrics in _chunks(group, per)]
    return parts


def latex(t: StudyTable) -> str:
    """One booktabs table per `tex_parts` part, each with the full caption."""
    parts = tex_parts(t)
    caption = " ".join(n for n in notes(t) if not n.startswith("- ") and "Not averaged" not in n)
    out = []
    for i, part in enumerate(parts):
        which = ""
        if len(parts) > 1:
            which = ", ".join(part.metrics)
            if t.kind == "main" and part.datasets != t.datasets:
                which += " on " + ", ".join(dataset_name(d) for d in part.datasets)
        label = t.study if len(parts) == 1 else f"{t.study}-{i + 1}"
        title = f"{_title(t)} ({which})" if which else _title(t)
        out += _tex_table(t, part, title, caption, label)
        if i + 1 < len(parts):
            out.append("")
    if t.paper:
        out += ["", *_tex_paper_table(t, caption)]
    if t.excluded:
        out.append("% Not averaged in:")
        out += [f"%   {_trial_line(r)}" for r in t.excluded]
    return "\n".join(out) + "\n"


def _tex_table(t: StudyTable, part: TexPart, title: str, caption: str, label: str) -> list[str]:
    rows = [
        r
        for r in t.rows
        if not r.published or any((d, m) in r.cells for d in part.datasets for m in part.metrics)
    ]
    header, body = _grid(t, rows, _tex_cell, tex_escape, part.metrics, part.datasets, part.axes)
    out = [r"\begin{table}[t]", r"\centering", r"\small"]
    out.append(r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}")
    out.append(r"\toprule")
    if t.kind == "main":
        group = len(part.metrics) + 1
        spans = [
            rf"\multicolumn{{{group}}}{{c}}{{{tex_escape(dataset_name(d))}}}" for d in part.datasets
        ]
        out.append(" & " + " & ".join(spans) + r" \\")
        rules = [
            rf"\cmidrule(lr){{{2 + i * group}-{1 + (i + 1) * group}}}"
            for i in range(len(part.datasets))
        ]
        out.append(" ".join(rules))
        sub = ["method"] + [x for _ in part.datasets for x in (*part.metrics, "n")]
        out.append(" & ".join(tex_escape(x) for x in sub) + r" \\")
    else:
        out.append(" & ".join(header) + r" \\")
    out.append(r"\midrule")
    for i, row in enumerate(body):
        out.append(" & ".join(row) + r" \\")
        if rows[i].published and i + 1 < len(rows) and not rows[i + 1].published:
            out.append(r"\midrule")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    out.append(rf"\caption{{{tex_escape(title)}. {tex_escape(caption)}}}")
    out.append(rf"\label{{tab:{tex_escape(label)}}}")
    out.append(r"\end{table}")
    return out


def _tex_paper_table(t: StudyTable, caption: str) -> list[str]:
    """The paper's rows beside ours: one booktabs tabular of len(PAPER_HEADER) columns."""
    out = [r"\begin{table}[t]", r"\centering", r"\small"]
    out.append(r"\begin{tabular}{llll" + "r" * (len(PAPER_HEADER) - 4) + "}")
    out += [r"\toprule", " & ".join(tex_escape(h) for h in PAPER_HEADER) + r" \\", r"\midrule"]
    out += [" & ".join(row) + r" \\" for row in _paper_body(t, tex_escape)]
    out += [r"\bottomrule", r"\end{tabular}"]
    out.append(rf"\caption{{{tex_escape(_paper_title(t))}. {tex_escape(caption)}}}")
    out.append(rf"\label{{tab:{tex_escape(t.study)}-paper}}")
    out.append(r"\end{table}")
    return out


# ----------------------------------------------------------------------------- CSV

CSV_FIELDS = [
    "study",
    "table",
    "source",
    "row",
    "variant_base",
    "grid_point",
    "dataset",
    "metric",
    "mean",
    "std",
    "n",
    "delta",
    "p",
    "pairs",
    "baseline",
    "citation",
    "chance_R1",  # of the dataset's test gallery, as our trials recorded it ("/" if several)
]


def csv_text(t: StudyTable) -> str:
    """One line per (row, dataset, metric), numbers unrounded (repr of the float)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in t.rows:
        for (d, m), c in r.cells.items():
            w.writerow(
                {
                    "study": t.study,
                    "table": t.kind,
                    "source": "published" if r.published else "ours",
                    "row": r.label,
                    "variant_base": r.variant_base,
                    "grid_point": json.dumps(dict(r.point)),
                    "dataset": d,
                    "metric": m,
                    "mean": repr(c.mean),
                    "std": "" if math.isnan(c.std) else repr(c.std),
                    "n": c.n,
                    "delta": "" if c.delta is None else repr(c.delta),
                    "p": "" if c.p is None or math.isnan(c.p) else repr(c.p),
                    "pairs": c.pairs if c.delta is not None else "",
                    "baseline": "yes" if r.baseline else "",
                    "citation": r.citation or "",
                    "chance_R1": ""
                    if r.published
                    else "/".join(repr(x) for x in t.chance.get(d, [])),
                }
            )
    for p in t.paper:  # the paper's number, its difference to ours in `delta`
        w.writerow(
            {
                "study": t.study,
                "table": "paper",
                "source": "published",
                "row": f"{p.paper.table}: {p.paper.row}",
                "variant_base": p.ours.variant_base,
                "grid_point": json.dumps(dict(p.ours.point)),
                "dataset": p.dataset,
                "metric": p.metric,
                "mean": repr(p.value),
                "std": "",
                "n": 0,
                "delta": "" if p.diff is None else repr(p.diff),
                "p": "",
                "pairs": "",
                "baseline": "",
                "citation": p.paper.citation,
                "chance_R1": "",
            }
        )
    return buf.getvalue()
