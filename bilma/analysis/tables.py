"""A StudyTable as Markdown (stdout), LaTeX (booktabs) and CSV (every number, full precision).

Every rendering states the checkpoint-selection rule and how many runs the table aggregates,
and lists the trials it did not average in (unfinished, failed, early-stopped).
"""

from __future__ import annotations

import csv
import io
import json
import math

from bilma.analysis.aggregate import Cell, Row, StudyTable, dataset_name, fmt_value, short_axes
from bilma.analysis.records import STOPPED

PUBLISHED_MARK = "†"


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
    if row.baseline:
        return "baseline"
    if c is None or c.delta is None:
        return "n/a"
    shown = fmt_p(c.p)
    return f"{c.delta:+.2f} (p{shown if shown.startswith('<') else '=' + shown})"


def _trial_line(r) -> str:
    where = f", {dataset_name(r.dataset)}" if r.dataset else ""
    state = "early-stopped" if r.state == STOPPED else r.state
    return f"{r.variant or r.variant_base} seed={r.seed}{where} ({r.trial_id}): {state}"


def notes(t: StudyTable) -> list[str]:
    """The lines under a table: selection rule, runs aggregated, tests, sources, warnings."""
    out = [
        f"Checkpoint selection: {'; '.join(t.selection)}.",
        f"Aggregates {t.runs} finished run{'s' if t.runs != 1 else ''}: mean ± sample standard "
        "deviation over seeds, n runs per cell.",
    ]
    if t.kind == "ablation" and t.baseline is not None:
        several = len({r.variant_base for r in t.rows}) > 1
        ref = " (the first row)" if not several else (" at the same grid point" if t.axes else "")
        out.append(
            f'Δ: difference of the means to the baseline "{t.baseline}"{ref}; p: two-sided '
            "paired Student's t-test over the seeds both share (n/a with fewer than 2)."
        )
    if t.sources:
        refs = "; ".join(f"[{k}] {v}" for k, v in t.sources.items())
        out.append(f"{PUBLISHED_MARK} published numbers, copied from the papers: {refs}.")
    out += [f"Warning: {w}." for w in t.warnings]
    if t.excluded:
        out.append(f"Not averaged in ({len(t.excluded)}):")
        out += [f"- {_trial_line(r)}" for r in t.excluded]
    return out


def _title(t: StudyTable) -> str:
    if t.kind == "main":
        return f"{t.study}: {', '.join(dataset_name(d) for d in t.datasets)}"
    return f"{t.study}: ablation on {dataset_name(t.datasets[0])}"


def _row_name(r: Row) -> str:
    return f"{r.label} {PUBLISHED_MARK}[{r.citation}]" if r.published else r.label


# ----------------------------------------------------------------------------- markdown


def _md_cell(c: Cell | None) -> str:
    text = fmt_mean_std(c)
    return f"**{text}**" if c is not None and c.bold else text


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(t: StudyTable) -> str:
    header, rows = _grid(t, _md_cell, _md_escape)
    lines = [f"### {_title(t)}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines += notes(t)
    return "\n".join(lines) + "\n"


def _grid(t: StudyTable, cell, text) -> tuple[list[str], list[list[str]]]:
    """Header and body cells, shared by Markdown and LaTeX: `cell` writes a Cell, `text`
    escapes every other string."""
    short = short_axes(t.axes)
    if t.kind == "main":
        header = ["method"]
        for d in t.datasets:
            header += [f"{dataset_name(d)} {t.metrics[0]}", *t.metrics[1:], "n"]
        body = []
        for r in t.rows:
            line = [text(_row_name(r))]
            for d in t.datasets:
                line += [cell(r.cells.get((d, m))) for m in t.metrics]
                line.append(text("–" if r.published else str(r.n.get(d, 0))))
            body.append(line)
        return [text(h) for h in header], body
    header = ["variant", *(short[a] for a in t.axes), "n"]
    for m in t.metrics:
        header += [m, f"Δ{m}"]
    d = t.datasets[0]
    body = []
    for r in t.rows:
        point = dict(r.point)
        line = [r.label, *(fmt_value(point[a]) if a in point else "–" for a in t.axes)]
        line = [text(x) for x in (*line, str(r.n.get(d, 0)))]
        for m in t.metrics:
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
}


def tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def _tex_cell(c: Cell | None) -> str:
    text = tex_escape(fmt_mean_std(c))
    return rf"\textbf{{{text}}}" if c is not None and c.bold else text


def latex(t: StudyTable) -> str:
    header, body = _grid(t, _tex_cell, tex_escape)
    ncols = len(header)
    out = [r"\begin{table}[t]", r"\centering", r"\small"]
    out.append(r"\begin{tabular}{l" + "r" * (ncols - 1) + "}")
    out.append(r"\toprule")
    if t.kind == "main":
        group = len(t.metrics) + 1
        spans = [
            rf"\multicolumn{{{group}}}{{c}}{{{tex_escape(dataset_name(d))}}}" for d in t.datasets
        ]
        out.append(" & " + " & ".join(spans) + r" \\")
        rules = [
            rf"\cmidrule(lr){{{2 + i * group}-{1 + (i + 1) * group}}}"
            for i in range(len(t.datasets))
        ]
        out.append(" ".join(rules))
        sub = ["method"] + [x for _ in t.datasets for x in (*t.metrics, "n")]
        out.append(" & ".join(tex_escape(x) for x in sub) + r" \\")
    else:
        out.append(" & ".join(header) + r" \\")
    out.append(r"\midrule")
    for i, row in enumerate(body):
        out.append(" & ".join(row) + r" \\")
        if t.rows[i].published and i + 1 < len(t.rows) and not t.rows[i + 1].published:
            out.append(r"\midrule")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    caption = " ".join(n for n in notes(t) if not n.startswith("- ") and "Not averaged" not in n)
    out.append(rf"\caption{{{tex_escape(_title(t))}. {tex_escape(caption)}}}")
    out.append(rf"\label{{tab:{tex_escape(t.study)}}}")
    out.append(r"\end{table}")
    if t.excluded:
        out.append("% Not averaged in:")
        out += [f"%   {_trial_line(r)}" for r in t.excluded]
    return "\n".join(out) + "\n"


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
                }
            )
    return buf.getvalue()
