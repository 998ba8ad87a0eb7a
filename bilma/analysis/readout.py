"""The local-matching study's readout, fixed before its trials ran (README "A laptop-scale
BiLMa study"): `python analysis/lookalike_readout.py --study synth-study`.

For every finished trial of a study on a look-alike world, each of its two checkpoints (the
last epoch's `last.pt` and the selected `best.pt`) is evaluated on the val and the test split
and the look-alike queries of both are pooled (their groups never straddle splits):

- `group_R1`: Rank-1 of a query ranked against its own group's images only (chance 1 in
  the group's size): only the local difference can lift it. The primary endpoint, read at
  the last checkpoint (no selection on val, which is half of the pool).
- `lookalike_R1`: Rank-1 against the whole gallery; `twin_errors`: percent of its mistakes
  that land on a group-mate.

Each trial's numbers are kept in `<trial>/readout.json` with the checkpoints' sizes and
times, so a rerun reads only what changed (resumable). Arms are compared with the
baseline by the paired t-test over seeds, and `verdict` applies the decision rule below.

Decision rule (effect of interest `EFFECT` = 2 within-group Rank-1 points):
- "helps" / "hurts": the paired difference is significant (p < 0.05) and positive / negative;
- "no effect of 2 points or more": its 95% interval lies inside (-2, +2);
- otherwise "inconclusive" (the interval reaches past +-2 without significance).
The positive control (an auxiliary attribute loss on the global features) must "help" for
the world and budget to count as able to show a local effect; if it does not, a null result
of the branches says nothing about them.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilma.analysis import stats
from bilma.fileio import atomic_write_text

EFFECT = 2.0  # within-group Rank-1 points: the effect the study is powered for
ENDPOINTS = ("group_R1", "lookalike_R1", "twin_errors")
CHECKPOINTS = ("last", "best")
SPLITS = ("val", "test")
READOUT_FILE = "readout.json"
_VERSION = 2  # 2: by_part


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _pooled(outcomes: list[dict[str, Any]], parts: list[str]) -> dict[str, Any]:
    """Endpoints of the concatenated per-query outcomes of several splits; `by_part`: the
    within-group Rank-1 and query count of each distinguishing part (`parts`: group -> part)."""
    import torch

    hit = torch.cat([o["hit"] for o in outcomes])
    twin = torch.cat([o["twin"] for o in outcomes])
    group_hit = torch.cat([o["group_hit"] for o in outcomes])
    part = [parts[g] for g in torch.cat([o["group"] for o in outcomes]).tolist()]
    wrong = int((~hit).sum())
    by_part = {}
    for name in sorted(set(part)):
        rows = torch.tensor([p == name for p in part])
        by_part[name] = {
            "queries": int(rows.sum()),
            "group_R1": 100.0 * float(group_hit[rows].float().mean()),
        }
    return {
        "queries": len(hit),
        "group_R1": 100.0 * float(group_hit.float().mean()),
        "lookalike_R1": 100.0 * float(hit.float().mean()),
        "twin_errors": 100.0 * int(twin.sum()) / wrong if wrong else 0.0,
        "by_part": by_part,
    }


def _data(cfg, cache: dict | None) -> tuple[Any, dict, list[str]]:
    """The config's dataset, look-alike groups and their parts, loaded once per data root."""
    from bilma.data.datasets import load_data
    from bilma.evaluation.lookalike import group_parts, lookalike_groups

    cache = {} if cache is None else cache
    key = str(Path(cfg.data.root).resolve())
    if key not in cache:
        root = cfg.data.root
        data = load_data(cfg, check_parse_maps=False)
        cache[key] = (data, lookalike_groups(root), group_parts(root))
    return cache[key]


def read_model(model, cfg, device: str = "cpu", data_cache: dict | None = None) -> dict:
    """A model's endpoints on val and test pooled, and on each split."""
    import torch

    from bilma.evaluation.lookalike import query_outcomes
    from bilma.evaluation.retrieval import encode_split

    data, group_of, parts = _data(cfg, data_cache)
    per_split = {}
    for split in SPLITS:
        t, tp, v, vp = encode_split(model, data, split, cfg, torch.device(device))
        per_split[split] = query_outcomes(t @ v.T, tp, vp, group_of)
    out = _pooled(list(per_split.values()), parts)
    out["splits"] = {s: _pooled([o], parts) for s, o in per_split.items()}
    return out


def read_checkpoint(path: Path, device: str = "cpu", data_cache: dict | None = None) -> dict:
    """One checkpoint's endpoints on val and test pooled, and on each split."""
    import torch

    from bilma.training.checkpoint import load_for_eval

    model, cfg, info = load_for_eval(path, torch.device(device))
    return {"epoch": info.get("epoch"), **read_model(model, cfg, device, data_cache)}


def read_zero_shot(
    config: Path | None, overrides: list[str] | None = None, device: str = "cpu"
) -> dict:
    """The endpoints of a config's model as built, untrained: the fine-tuning's starting point
    (its `model.pretrained` weights), the floor every arm starts from."""
    import torch

    from bilma.config import load_config
    from bilma.model.bilma import build_untrained

    cfg = load_config(config, overrides or [])
    cache: dict = {}
    model, source = build_untrained(cfg, _data(cfg, cache)[0])
    model.to(torch.device(device)).eval()
    return {"source": source, "config": str(config), **read_model(model, cfg, device, cache)}


def read_trial(trial_path: Path, device: str = "cpu", data_cache: dict | None = None) -> dict:
    """The trial's readout (both checkpoints), from readout.json when its checkpoints have not
    changed since, else computed and written there atomically."""
    from bilma.runs.trial_dir import TrialDir

    trial = TrialDir(trial_path)
    ckpts = {"last": trial.last_ckpt, "best": trial.best_ckpt}
    missing = [str(p) for p in ckpts.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} missing: the readout needs both checkpoints (keep them: "
            "train.keep_checkpoints at its default)"
        )
    stamps = {k: _stamp(p) for k, p in ckpts.items()}
    file = trial_path / READOUT_FILE
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        if saved.get("version") == _VERSION and saved.get("stamps") == stamps:
            return saved
    except (OSError, ValueError, AttributeError):
        pass
    out = {"version": _VERSION, "stamps": stamps}
    for name, path in ckpts.items():
        out[name] = read_checkpoint(path, device, data_cache)
    atomic_write_text(file, json.dumps(out, indent=1) + "\n")
    return out


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on one endpoint, over their shared seeds."""

    arm: str
    pairs: int
    mean_diff: float
    low: float  # 95% interval of the mean difference
    high: float
    p: float
    sd_diff: float

    @property
    def verdict(self) -> str:
        return verdict(self)


def compare(arm: str, a: dict[int, float], b: dict[int, float]) -> Comparison:
    """b (the arm) minus a (the baseline), paired by seed."""
    shared = sorted(set(a) & set(b))
    diffs = [b[s] - a[s] for s in shared]
    test = stats.paired_t(a, b)
    low, high = stats.paired_interval(diffs)
    return Comparison(arm, len(diffs), test.mean_diff, low, high, test.p, stats.sample_std(diffs))


def against_baseline(
    readouts: dict[str, dict], baseline: str, arm: str, ckpt: str = "last"
) -> Comparison:
    """`arm` against `baseline` on the primary endpoint (group_R1) of checkpoint `ckpt`."""

    def values(variant: str) -> dict[int, float]:
        return {s: r[ckpt]["group_R1"] for s, r in readouts[variant].items()}

    return compare(arm, values(baseline), values(arm))


def verdict(c: Comparison, effect: float = EFFECT) -> str:
    """The decision rule of the module docstring."""
    if c.pairs >= stats.MIN_PAIRS and c.p < stats.ALPHA:
        return "helps" if c.mean_diff > 0 else "hurts"
    if c.pairs >= 2 and -effect < c.low and c.high < effect:
        return f"no effect of {effect:g} points or more"
    return "inconclusive"


def collect(study_dir: Path, device: str = "cpu", progress: bool = True) -> dict[str, dict]:
    """{variant: {seed: readout}} of every finished trial of the study."""
    from bilma.runs.trial_dir import TrialDir, find_trials

    cache: dict = {}
    trials = [TrialDir(p) for p in find_trials(study_dir)] if study_dir.is_dir() else []
    done = [(t, t.read_result()) for t in trials]
    done = [(t, r) for t, r in done if r is not None]
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    order: dict[str, int] = {}
    for n, (trial, result) in enumerate(done, 1):
        launch = trial.read_launch()
        variant = launch.variant or result.get("variant") or trial.path.name
        order.setdefault(variant, launch.variant_index)
        if progress:
            print(f"reading out {n}/{len(done)}: {variant}, seed {result.get('seed')}",
                  file=sys.stderr)  # fmt: skip
        out[variant][int(result.get("seed", 0))] = read_trial(trial.path, device, cache)
    return {v: out[v] for v in sorted(out, key=lambda v: (order[v], v))}


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(
    readouts: dict[str, dict],
    baseline: str,
    control: str | None = None,
    zero_shot: dict | None = None,
) -> str:
    """Markdown: per checkpoint, each arm's endpoints (mean +- sd, n) and its paired
    difference from the baseline on the primary endpoint, with the verdict; then the power
    the observed spread gives, the control's reading and the untrained starting point."""
    if baseline not in readouts:
        raise KeyError(f"baseline {baseline!r} is not a variant of the study: {sorted(readouts)}")
    lines = []
    for ckpt in CHECKPOINTS:
        title = "last checkpoint (primary)" if ckpt == "last" else "selected checkpoint"
        lines += [f"### {title}: val + test pooled", ""]
        head = (
            "| arm | n | "
            + " | ".join(ENDPOINTS)
            + " | group_R1 vs baseline (95% CI) | p | verdict |"
        )
        lines += [head, "|" + "---|" * (len(ENDPOINTS) + 5)]
        for arm, seeds in readouts.items():
            cells = []
            for e in ENDPOINTS:
                xs = [r[ckpt][e] for r in seeds.values()]
                cells.append(f"{_fmt(stats.mean(xs))} ± {_fmt(stats.sample_std(xs))}")
            if arm == baseline:
                diff, p, v = "(baseline)", "", ""
            else:
                c = against_baseline(readouts, baseline, arm, ckpt)
                diff = f"{c.mean_diff:+.2f} ({_fmt(c.low)} to {_fmt(c.high)})"
                p, v = _fmt(c.p, 3), c.verdict
            lines.append(
                f"| {arm} | {len(seeds)} | " + " | ".join(cells) + f" | {diff} | {p} | {v} |"
            )
        lines.append("")
    lines += part_lines(readouts, zero_shot)
    lines += power_lines(readouts, baseline)
    if control is not None and control in readouts:
        lines += ["", control_line(readouts, baseline, control)]
    if zero_shot is not None:
        lines += ["", zero_shot_line(zero_shot)]
    return "\n".join(lines) + "\n"


def zero_shot_line(z: dict) -> str:
    """The untrained starting point, in words."""
    return (
        f"Zero-shot (no fine-tuning; {z['source']}, {z['config']}): group_R1 "
        f"{_fmt(z['group_R1'])}, lookalike_R1 {_fmt(z['lookalike_R1'])}, twin_errors "
        f"{_fmt(z['twin_errors'])} on {z['queries']} queries."
    )


def part_lines(readouts: dict[str, dict], zero_shot: dict | None = None) -> list[str]:
    """Within-group Rank-1 of the last checkpoint by the part a query's group differs in
    (mean +- sd over seeds; the zero-shot starting point last): where the local errors are."""
    first = next(iter(next(iter(readouts.values())).values()))["last"]
    parts = sorted(first.get("by_part", {}))
    if not parts:
        return []
    counts = ", ".join(f"{p} {first['by_part'][p]['queries']}" for p in parts)
    lines = [
        f"### within-group Rank-1 by the distinguishing part (last checkpoint; queries: {counts})",
        "",
        "| arm | n | " + " | ".join(parts) + " |",
        "|" + "---|" * (len(parts) + 2),
    ]
    for arm, seeds in readouts.items():
        cells = []
        for p in parts:
            xs = [r["last"]["by_part"][p]["group_R1"] for r in seeds.values()]
            cells.append(f"{_fmt(stats.mean(xs))} ± {_fmt(stats.sample_std(xs))}")
        lines.append(f"| {arm} | {len(seeds)} | " + " | ".join(cells) + " |")
    if zero_shot is not None and "by_part" in zero_shot:
        cells = [_fmt(zero_shot["by_part"][p]["group_R1"]) for p in parts]
        lines.append("| zero-shot (not fine-tuned) | 1 | " + " | ".join(cells) + " |")
    return [*lines, ""]


def power_lines(readouts: dict[str, dict], baseline: str) -> list[str]:
    """What the observed spread of paired differences (primary endpoint) lets the study see."""
    out = []
    for arm in readouts:
        if arm == baseline:
            continue
        c = against_baseline(readouts, baseline, arm)
        if c.pairs < 2 or math.isnan(c.sd_diff):
            continue
        mde = stats.detectable_effect(c.sd_diff, c.pairs)
        need = stats.paired_sample_size(max(c.sd_diff, 1e-9), EFFECT)
        out.append(
            f"- {arm}: sd of the paired differences {c.sd_diff:.2f} over {c.pairs} seeds: "
            f"detects {mde:.2f} points with 80% power at p < 0.05 ({need} seeds for {EFFECT:g})"
        )
    return ["Power observed (primary endpoint):", *out] if out else []


def control_line(readouts: dict[str, dict], baseline: str, control: str) -> str:
    """The positive control's reading, in words."""
    c = against_baseline(readouts, baseline, control)
    if c.verdict == "helps":
        return (
            f"Positive control: {control} raises within-group Rank-1 by {c.mean_diff:+.2f} "
            f"(p = {_fmt(c.p, 3)}): this world and budget can show a local effect."
        )
    return (
        f"Positive control: {control} does not raise within-group Rank-1 ({c.mean_diff:+.2f}, "
        f"{c.verdict}): the bottleneck is the world or the budget, not the branches; a null "
        "result of the branches here says nothing about them."
    )


# ----------------------------------------------------------------------------- command


def build_parser(prog: str = "python analysis/lookalike_readout.py"):
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="study name (runs/<study>/)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default runs/)")
    p.add_argument("--baseline", required=True, help="the variant the others are compared with")
    p.add_argument("--control", help="the positive control's variant")
    p.add_argument(
        "--zero-shot",
        type=Path,
        metavar="CONFIG",
        help="also read out this config's model untrained (the fine-tuning's starting point)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="write <study>_readout.md and .json here")
    return p


def main(argv: list[str] | None = None, prog: str = "python analysis/lookalike_readout.py") -> int:
    from bilma.analysis.records import AnalysisError
    from bilma.errors import run_command

    args = build_parser(prog).parse_args(argv)

    def run() -> int:
        folder = args.runs / args.study
        readouts = collect(folder, args.device)
        if not readouts:
            raise AnalysisError(
                f"{folder}: no finished trial of study '{args.study}'; run its grid first "
                "(make study) or point --runs at its runs root"
            )
        if args.baseline not in readouts:
            raise AnalysisError(
                f"--baseline {args.baseline!r} is not a variant of {args.study}; its variants: "
                + ", ".join(repr(v) for v in readouts)
            )
        zero = read_zero_shot(args.zero_shot, device=args.device) if args.zero_shot else None
        text = report(readouts, args.baseline, args.control, zero)
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / f"{args.study}_readout.md", text)
            saved = {"trials": readouts, "zero_shot": zero}
            atomic_write_text(
                args.out / f"{args.study}_readout.json", json.dumps(saved, indent=1) + "\n"
            )
        return 0

    return run_command(run)
