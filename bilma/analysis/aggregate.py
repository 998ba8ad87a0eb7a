"""From trial records to tables: group by variant, grid point and dataset; aggregate seeds.

A study whose finished trials span several datasets becomes a main table (the papers'
layout: rows are methods, one column group per dataset, published rows beside ours); a study
on one dataset becomes an ablation table (variants in the grid's order, swept axes as
columns, the difference to the baseline with a paired t-test over shared seeds).

Emphasis is a test, not a ranking: a cell is bold only when its seeds differ from the
baseline row's (the grid's first variant, or `baseline`) by a paired t-test with p < ALPHA
over at least MIN_PAIRS shared seeds; with fewer shared seeds no p-value is reported at all.
The main table applies the same test to our rows (on each dataset); published numbers have
no seeds to pair, so they are never bold, and neither is the best mean of a column.

A variant that reproduces a row of a paper's table (analysis/published.yaml, `reproductions:`)
gets that row beside it: `StudyTable.paper`, one `PaperPair` per dataset and metric the paper
gives, with the difference ours - paper (no test: a published number has no seeds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bilma import resources
from bilma.analysis.records import (
    DATASET_AXES,
    RESULT_METRICS,
    AnalysisError,
    TrialRecord,
    claimants,
    hashable,
)
from bilma.analysis.stats import MIN_PAIRS, mean, paired_t, sample_std, significant

PUBLISHED_FILE = resources.PUBLISHED
DATASET_NAMES = {
    "cuhk-pedes": "CUHK-PEDES",
    "icfg-pedes": "ICFG-PEDES",
    "rstpreid": "RSTPReid",
    "synth": "synthetic",
}
_DATASET_ORDER = list(DATASET_NAMES)
MIN_SEEDS = MIN_PAIRS  # fewer runs than this per row gets a warning: no p-value for it


@dataclass
class Cell:
    """One metric of one row on one dataset: seeds aggregated."""

    values: dict[int, float]  # seed -> value
    mean: float
    std: float  # sample std; NaN with one run
    n: int
    delta: float | None = None  # mean - baseline mean (None: no baseline to compare with)
    p: float | None = None  # paired t-test, two-sided; None under MIN_PAIRS (NaN: undefined)
    pairs: int = 0  # seeds shared with the baseline
    bold: bool = False  # differs from the baseline: p < ALPHA over >= MIN_PAIRS seeds

    @classmethod
    def of(cls, values: dict[int, float]) -> Cell:
        xs = [values[s] for s in sorted(values)]
        return cls(dict(values), mean(xs), sample_std(xs), len(xs))


@dataclass
class Row:
    label: str
    variant_base: str
    point: tuple[tuple[str, Any], ...]
    cells: dict[tuple[str, str], Cell]  # (dataset, metric) -> cell
    n: dict[str, int]  # dataset -> runs aggregated
    published: bool = False
    citation: str | None = None
    baseline: bool = False


@dataclass(frozen=True)
class PaperRow:
    """A row of a paper's table that a study's variant reproduces (published.yaml)."""

    table: str  # key of published.yaml's `tables`
    row: str  # the row's name in that table
    citation: str  # key of `sources`
    what: str  # where in the paper ("Table 2, the component ablation ...")
    at: dict[str, Any]  # the grid point where the paper's setting holds ({}: every point)
    results: dict[str, dict[str, float]]  # dataset -> metric -> value


@dataclass
class PaperPair:
    """One of our rows beside the paper's row it reproduces, on one dataset and metric."""

    ours: Row
    paper: PaperRow
    dataset: str
    metric: str
    value: float  # the paper's number
    cell: Cell | None  # ours (None: no finished run of this row on the dataset)

    @property
    def diff(self) -> float | None:
        """ours - paper (None without a run of ours)."""
        return None if self.cell is None else self.cell.mean - self.value


@dataclass
class StudyTable:
    study: str
    kind: str  # "main" or "ablation"
    datasets: list[str]
    metrics: list[str]
    axes: list[str]  # swept axes shown as columns (ablation) or in labels (main)
    rows: list[Row]
    runs: int  # finished runs aggregated
    selection: list[str]  # "R1 on the val split (CUHK-PEDES)", ...
    excluded: list[TrialRecord]
    warnings: list[str] = field(default_factory=list)
    baseline: str | None = None  # the variant Δ, p and bold are taken against
    sources: dict[str, str] = field(default_factory=dict)  # citation key -> reference
    chance: dict[str, list[float]] = field(default_factory=dict)  # dataset -> chance R1s
    paper: list[PaperPair] = field(default_factory=list)  # the paper's rows beside ours

    def compared(self) -> list[Cell]:
        """The cells that were tested against the baseline."""
        return [c for r in self.rows for c in r.cells.values() if c.delta is not None]


def dataset_name(key: str) -> str:
    return DATASET_NAMES.get(key, key)


def short_axes(axes: list[str]) -> dict[str, str]:
    """Axis key -> the name shown: its last component, or the whole key when ambiguous."""
    last = [a.rsplit(".", 1)[-1] for a in axes]
    return {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last, strict=True)}


def fmt_value(v: Any) -> str:
    """An axis value as YAML writes it inline (0.3, soft, true, [384, 128])."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, bool) or v is None:
        return yaml.safe_dump(v).splitlines()[0]
    return str(v)


def load_published(path: Path = PUBLISHED_FILE) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(methods, sources) of the published-numbers file."""
    data = yaml.safe_load(path.read_text())
    return list(data["methods"]), {k: " ".join(v.split()) for k, v in data["sources"].items()}


def paper_rows(study: str, path: Path = PUBLISHED_FILE) -> dict[str, PaperRow]:
    """Variant -> the published row it reproduces, for `study` (published.yaml's
    `reproductions:`; {} for a study that reproduces none). A reference to a table, row or
    source that the file does not hold is an AnalysisError naming the key and the fix."""
    data = yaml.safe_load(path.read_text()) or {}
    tables, sources = data.get("tables") or {}, data.get("sources") or {}
    out = {}
    for variant, ref in ((data.get("reproductions") or {}).get(study) or {}).items():
        where = f"{path}: reproductions.{study}.{variant}"
        if not isinstance(ref, dict):
            raise AnalysisError(f"{where}: expected {{table: ..., row: ...}}, got {ref!r}")
        table = tables.get(ref.get("table"))
        if table is None:
            raise AnalysisError(
                f"{where}: table {ref.get('table')!r} is not a key of `tables` "
                f"({', '.join(tables) or 'none'}); name one of them"
            )
        row = (table.get("rows") or {}).get(ref.get("row"))
        if row is None:
            raise AnalysisError(
                f"{where}: row {ref.get('row')!r} is not a row of table {ref['table']!r} "
                f"({', '.join(table.get('rows') or {})}); name one of them"
            )
        if table.get("citation") not in sources:
            raise AnalysisError(
                f"{path}: tables.{ref['table']}.citation {table.get('citation')!r} is not a key "
                f"of `sources` ({', '.join(sources)}); add the source"
            )
        results = {d: {m: float(v) for m, v in ms.items()} for d, ms in row.items()}
        at = dict(ref.get("at") or {})
        out[variant] = PaperRow(
            ref["table"], ref["row"], table["citation"], table.get("what", ""), at, results
        )
    return out


def _same_point_value(a: Any, b: Any) -> bool:
    """Equal as grid-point values: numbers numerically (1 and 1.0), the rest as they are."""

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    if number(a) and number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return hashable(a) == hashable(b)


def _dedupe(records: list[TrialRecord]) -> list[TrialRecord]:
    """One record per trial id (a store may hold a trial twice): finished first, then latest."""
    best: dict[str, TrialRecord] = {}
    for r in records:
        old = best.get(r.trial_id)
        if old is None or (r.finished, r.started) > (old.finished, old.started):
            best[r.trial_id] = r
    keep = set(map(id, best.values()))
    return [r for r in records if id(r) in keep]


@functools.cache
def identity_keys() -> frozenset[str]:
    """The config keys a trial id hashes (`bilma.config.canonical`)."""
    from bilma.config.identity import HASHED_KEYS

    return frozenset(HASHED_KEYS)


def _same_value(a: str | None, b: str | None) -> bool:
    """Equal as a trial id sees them: a data or weights location by its last component."""
    if a == b:
        return True
    if a is None or b is None or "/" not in a + b:
        return False
    return os.path.basename(os.path.normpath(a)) == os.path.basename(os.path.normpath(b))


def differing_keys(group: list[TrialRecord]) -> list[str]:
    """The identity keys (not the seed) whose values differ among the trials of `group`."""
    keys = sorted({k for r in group for k in r.config} & identity_keys() - {"train.seed"})
    first = group[0].config
    return [k for k in keys if any(not _same_value(first.get(k), r.config.get(k)) for r in group)]


def split_claims(finished: list[TrialRecord]) -> tuple[list[TrialRecord], list[str]]:
    """Trials of two configurations claiming one (variant, grid point, dataset, seed) become
    rows of their own, the variant named with the differing keys ("IRRA (optim.lr=0.0002)"),
    never one silently replacing the other; one note per variant says which and why."""
    groups = claimants(finished)
    if not groups:
        return finished, []
    family: dict[tuple, list[list[TrialRecord]]] = {}  # (variant, grid point) -> its groups
    for g in groups:
        family.setdefault(g[0].claim()[:2], []).append(g)
    suffix: dict[int, str] = {}  # id(record) -> its configuration, as the row names it
    notes = []
    for (base, _point), clashes in family.items():
        keys = list(dict.fromkeys(k for g in clashes for k in differing_keys(g)))
        mine = [r for r in finished if r.claim()[:2] == (base, _point)]
        for r in mine:
            if keys:
                suffix[id(r)] = ", ".join(f"{k}={r.config.get(k, '?')}" for k in keys)
            else:  # no config recorded (an old MLflow run): the trial id tells them apart
                suffix[id(r)] = f"trial {r.trial_id}"
        seeds = sorted({g[0].seed for g in clashes})
        ids = sorted({r.trial_id for g in clashes for r in g})
        rows = list(dict.fromkeys(f"{base} ({suffix[id(r)]})" for r in mine))
        what = f"in {', '.join(keys)}" if keys else "in keys that were not recorded"
        notes.append(
            f"{len(ids)} trials of different configurations claim {base}, seeds "
            f"{', '.join(map(str, seeds))} (trials {', '.join(ids)}; they differ {what}): shown "
            f"as the rows {', '.join(repr(r) for r in rows)}; give each configuration its own "
            "variant name or study to keep them apart"
        )
    out = [
        dataclasses.replace(r, variant_base=f"{r.variant_base} ({suffix[id(r)]})")
        if id(r) in suffix
        else r
        for r in finished
    ]
    return out, notes


def _selection_lines(finished: list[TrialRecord], datasets: list[str]) -> list[str]:
    rules: dict[str, list[str]] = {}
    for d in datasets:
        found = Counter(
            f"{r.selection_metric or 'R1'} on the {r.selection_split or 'unknown'} split"
            for r in finished
            if r.dataset == d
        )
        for rule in found:
            rules.setdefault(rule, []).append(dataset_name(d))
    return [f"{rule} ({', '.join(ds)})" for rule, ds in rules.items()]


def row_order(finished: list[TrialRecord], drop: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """Row keys: variants in the grid's order (launch order when unknown), points as seen."""
    first_seen: dict[str, int] = {}
    index: dict[str, int] = {}
    keys: list[tuple[str, tuple]] = []
    for i, r in enumerate(finished):
        first_seen.setdefault(r.variant_base, i)
        if r.variant_index >= 0:
            index.setdefault(r.variant_base, r.variant_index)
        key = (r.variant_base, r.point(drop))
        if key not in keys:
            keys.append(key)
    rank = {v: (index.get(v, math.inf), first_seen[v]) for v in first_seen}
    return sorted(keys, key=lambda k: (rank[k[0]], keys.index(k)))


def row_label(base: str, point: tuple, short: dict[str, str]) -> str:
    """'BiLMa [mask_ratio=0.3]': the variant with its grid point (`short`: axis names)."""
    if not point:
        return base
    return base + " [" + ", ".join(f"{short[k]}={fmt_value(v)}" for k, v in point) + "]"


def build_table(
    study: str,
    records: list[TrialRecord],
    metrics: list[str] | None = None,
    baseline: str | None = None,
) -> StudyTable:
    """The study's table; AnalysisError if it has no finished run. `baseline`: the variant
    Δ and p are taken against (default: the grid's first)."""
    metrics = list(metrics or RESULT_METRICS)
    records = _dedupe(records)
    finished, claims = split_claims([r for r in records if r.finished])
    excluded = [r for r in records if not r.finished]
    if not finished:
        states = Counter(r.state for r in records)
        what = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trial runs"
        raise AnalysisError(
            f"study '{study}' has no finished run ({what}); wait for its trials or relaunch "
            "them (python sweeps/launch.py --grid ...)"
        )
    datasets = sorted({r.dataset for r in finished}, key=dataset_rank)
    kind = "main" if len(datasets) > 1 else "ablation"
    # Dataset axes are the column groups of a main table; on one dataset they are no axis.
    drop = dataset_axes(finished)
    axes = list(dict.fromkeys(k for r in finished for k, _ in r.point(drop)))
    short = short_axes(axes)
    rows = []
    for base, point in row_order(finished, drop):
        mine = [r for r in finished if r.variant_base == base and r.point(drop) == point]
        cells, n = {}, {}
        for d in datasets:
            runs = [r for r in mine if r.dataset == d]
            n[d] = len({r.seed for r in runs})
            for m in metrics:
                # A look-alike metric exists only for runs on a dataset with look-alike groups.
                values = {r.seed: r.metrics[m] for r in runs if m in r.metrics}
                if values:
                    cells[(d, m)] = Cell.of(values)
        label = row_label(base, point, short) if kind == "main" else base
        rows.append(Row(label, base, point, cells, n))
    table = StudyTable(
        study,
        kind,
        datasets,
        metrics,
        axes,
        rows,
        len(finished),
        _selection_lines(finished, datasets),
        excluded,
        chance=chance_levels(finished, datasets),
    )
    table.warnings += claims
    _compare(table, baseline)
    if kind == "main":
        _add_published(table)
    _add_paper(table)
    few = [
        f"{row_label(r.variant_base, r.point, short)}"
        f"{'' if kind == 'ablation' else f' on {dataset_name(d)}'} (n={r.n[d]})"
        for r in table.rows
        if not r.published
        for d in datasets
        if 0 < r.n[d] < MIN_SEEDS
    ]
    if few:
        table.warnings.append(f"fewer than {MIN_SEEDS} seeds for: " + "; ".join(few))
    return table


def dataset_axes(records: list[TrialRecord]) -> tuple[str, ...]:
    """Axes that only say which dataset a trial ran on: the data.* location keys, and on
    several datasets any axis that takes one value per dataset (e.g. the zipped
    eval.select_split of grids/main.yaml)."""
    datasets = {r.dataset for r in records}
    if len(datasets) < 2:
        return DATASET_AXES
    values: dict[str, dict[str, set]] = {}
    for r in records:
        for k, v in r.grid_point.items():
            values.setdefault(k, {}).setdefault(r.dataset, set()).add(json.dumps(v))
    follow = [
        k
        for k, by_d in values.items()
        if set(by_d) == datasets and all(len(vs) == 1 for vs in by_d.values())
    ]
    return tuple(dict.fromkeys([*DATASET_AXES, *follow]))


def dataset_rank(d: str) -> tuple[int, str]:
    return (_DATASET_ORDER.index(d) if d in _DATASET_ORDER else len(_DATASET_ORDER), d)


def chance_levels(finished: list[TrialRecord], datasets: list[str]) -> dict[str, list[float]]:
    """Dataset -> the chance R1s its trials recorded (one, unless the test galleries differ);
    datasets whose trials recorded none are left out."""
    out = {}
    for d in datasets:
        seen: dict[float, float] = {}  # equal up to float noise -> the first value recorded
        for r in finished:
            if r.dataset == d and r.chance_r1 is not None:
                seen.setdefault(round(r.chance_r1, 9), r.chance_r1)
        if seen:
            out[d] = [seen[k] for k in sorted(seen)]
    return out


def _compare(table: StudyTable, baseline: str | None = None) -> None:
    """Δ, paired p and bold against the baseline: `baseline` or the grid's first variant at
    the same grid point (when the study has one variant: its first row), per dataset. A p is
    kept only over >= MIN_PAIRS shared seeds; bold: `stats.significant`."""
    rows = [r for r in table.rows if not r.published]
    first = rows[0].variant_base
    if baseline is not None:
        names = list(dict.fromkeys(r.variant_base for r in rows))
        if baseline not in names:
            raise AnalysisError(
                f"--baseline {baseline!r} is no variant of study '{table.study}'; its variants: "
                + ", ".join(repr(n) for n in names)
            )
        first = baseline
    table.baseline = first
    several = len({r.variant_base for r in rows}) > 1
    by_key = {(r.variant_base, r.point): r for r in rows}
    for row in rows:
        base = by_key.get((first, row.point)) if several else rows[0]
        if base is None:
            continue
        if base is row:
            row.baseline = True
            continue
        for key, cell in row.cells.items():
            ref = base.cells.get(key)
            if ref is None:
                continue
            test = paired_t(ref.values, cell.values)
            cell.delta = cell.mean - ref.mean
            cell.pairs = test.pairs
            cell.p = test.p if test.pairs >= MIN_PAIRS else None
            cell.bold = significant(test)


def _add_published(table: StudyTable) -> None:
    methods, sources = load_published()
    shown = [m for m in methods if any(d in m["results"] for d in table.datasets)]
    pub_rows = []
    for m in shown:
        cells = {}
        for d in table.datasets:
            for metric in table.metrics:
                v = (m["results"].get(d) or {}).get(metric)
                if v is not None:
                    cells[(d, metric)] = Cell({}, float(v), math.nan, 0)
        pub_rows.append(
            Row(m["name"], m["name"], (), cells, {}, published=True, citation=m["citation"])
        )
    table.rows = pub_rows + table.rows
    used = dict.fromkeys(m["citation"] for m in shown)
    table.sources = {k: sources[k] for k in used}


def _add_paper(table: StudyTable) -> None:
    """Pair each of our rows with the published row its variant reproduces, at the grid
    point the paper's setting holds (`at`), on each of the table's datasets the paper gives."""
    rows = paper_rows(table.study)
    if not rows:
        return
    _, sources = load_published()
    for ours in table.rows:
        paper = None if ours.published else rows.get(ours.variant_base)
        if paper is None:
            continue
        point = dict(ours.point)
        if not all(k in point and _same_point_value(point[k], v) for k, v in paper.at.items()):
            continue
        for d in table.datasets:
            for m, value in paper.results.get(d, {}).items():
                if m in table.metrics:
                    table.paper.append(PaperPair(ours, paper, d, m, value, ours.cells.get((d, m))))
    for pair in table.paper:
        table.sources.setdefault(pair.paper.citation, sources[pair.paper.citation])
