"""How many trials of the shipped real-data grids reuse across studies (issue 19).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/reuse_real_grids.py [GRID ...]

Launches the grids one after another as dry runs under one empty runs root, as a researcher
running them in that order would: after each grid's dry run its trials to start are marked
finished (a config.yaml and a result.json, no training), so the next grid's dry run reuses
what an earlier one would have trained. Prints each grid's plan summary and the totals.
Nothing is trained; the runs root is a temporary folder, removed at the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# Ordered as docs/paper_vs_ours.md lists them; the first five are the 81 trials of issue 19.
REAL = [
    "ablation",
    "main",
    "mask_ratio",
    "loss_weights",
    "semmim_labels",
    "bilma_table2",
    "bilma_mask_beta",
    "bilma_mim_targets",
]


def main(grids: list[str]) -> None:
    from bilma.sweep.expand import expand_report, load_grid
    from bilma.sweep.plan import Action, plan, summary
    from bilma.sweep.reuse import plan_reuse

    total = reused = 0
    ids: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for name in grids:
            trials, _ = expand_report(load_grid(name, [f"paths.runs={tmp}"]))
            planned = plan(trials)
            plan_reuse(planned)
            n = sum(p.action is Action.REUSE for p in planned)
            total, reused = total + len(trials), reused + n
            ids |= {t.trial_id for t in trials}
            print(f"{name}: {len(trials)} trials: {summary(planned)}")
            for p in planned:  # as if trained: the next grid's dry run finds them done
                if p.action is Action.SUBMIT:
                    p.dir.init(p.trial.config)
                    p.dir.write_result({"study": p.trial.study, "metrics": {"R1": 0.0}})
    print(
        f"total: {total} trials, {len(ids)} distinct trial ids, {reused} reused "
        f"({100 * reused / max(total, 1):.0f}% of the plan not trained again)"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(sys.argv[1:] or REAL)
