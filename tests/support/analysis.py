"""Trial records with chosen numbers, and checks of the LaTeX tables, for tests/analysis."""

from __future__ import annotations

import json
import re

from bilma.analysis.records import TrialRecord


def record(variant, index, dataset, seed, r1, state="finished", point=None, split=None):
    """A trial with test R1 `r1` (the other metrics follow it); by default on a grid point
    of grids/main.yaml."""
    metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 15, "mAP": r1 - 5, "mINP": r1 - 20}
    return TrialRecord(
        study="main",
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
