"""Trial records with chosen numbers, and checks of the LaTeX tables, for tests/analysis."""

from __future__ import annotations

import json
import re

from bilma.analysis.records import TrialRecord


def record(
    variant, index, dataset, seed, r1, state="finished", point=None, split=None, study="main"
):
    """A trial of `study` with test R1 `r1` (the other metrics follow it); by default on a
    grid point of grids/main.yaml."""
    metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 15, "mAP": r1 - 5, "mINP": r1 - 20}
    return TrialRecord(
        study=study,
        trial_id=f"{variant}-{dataset}-{seed}-{json.dumps(point)}",
        variant=variant,
        variant_base=variant,
        variant_index=index,
        # as grids/main.yaml zips them: dataset, its folder and its selection split
        grid_point=point
        if point is not None
        else {
            "data.dataset": dataset,
            "data.root": f"datasets/{dataset}",
            "eval.select_split": split or ("test" if dataset == "icfg-pedes" else "val"),
        },
        seed=seed,
        dataset=dataset,
        state=state,
        metrics=metrics if state == "finished" else {},
        selection_split=split or ("test" if dataset == "icfg-pedes" else "val"),
        selection_metric="R1",
        started=float(seed),
    )


def tabulars(tex: str) -> list[str]:
    """Each tabular of a LaTeX text, checking that the environments nest."""
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert stack == []
    return re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", tex, re.S)


def columns(tabular: str) -> int:
    """The tabular's columns, checked against every line of cells (\\multicolumn spans)."""
    n = len(re.match(r"\\begin\{tabular\}\{(\w+)\}", tabular).group(1))
    for line in tabular.splitlines():
        if line.endswith("\\\\"):
            spans = [int(k) for k in re.findall(r"\\multicolumn\{(\d+)\}", line)]
            assert line.count(" & ") + 1 - len(spans) + sum(spans) == n, line
    return n


def trial_on_disk(
    runs,
    study: str,
    variant: str,
    seed: int,
    r1: float,
    grid: str = "ablation",
    point: dict | None = None,
    index: int = 0,
    **values,
):
    """A done trial directory as a sweep leaves it (config.yaml, launch.json, status.json,
    result.json with test R1 `r1`), without training: `values` are config overrides."""
    from pathlib import Path

    from bilma.config import load_config
    from bilma.runs.launch import Launch, write_launch
    from bilma.runs.trial_dir import TrialDir, make_result

    cfg = load_config(
        None,
        {
            "paths.runs": str(runs),
            "tracking.study": study,
            "tracking.variant": variant,
            "train.seed": seed,
            "tracking.enabled": False,
            **(point or {}),
            **values,
        },
    )
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    launch = Launch(
        study=study,
        grid=str(Path(runs).parent / f"{grid}.yaml"),
        variant=variant,
        variant_base=variant,
        variant_index=index,
        grid_point=dict(point or {}),
        seed=seed,
    )
    write_launch(trial.path, launch)
    trial.start_attempt()
    metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 15, "mAP": r1 - 5, "mINP": r1 - 20}
    sel = {"split": "val", "metric": "R1", "epoch": 2, "value": r1}
    trial.write_result(make_result(cfg, metrics, sel, {"R1": r1}, 2, 1.0, launch=launch))
    trial.set_status("done")
    return trial
