"""Jobs queued before the package was layered still run, and requeue, after it.

`golden/legacy_trial_job.pkl` is the pickle that submitit wrote for a trial job at commit
66f149a (the layout with top-level `sweeps/` modules): a `DelayedSubmission` of
`sweeps.job.TrialJob("runs/legacy/a83ca202a1")`. A SLURM job runs in the launch's directory,
so from a checkout `sweeps.job` is the shim at the old path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.paths import REPO
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.runs.trial_dir import TrialDir

LEGACY = Path(__file__).with_name("golden") / "legacy_trial_job.pkl"

RUN = """
import json, sys
from submitit.core.utils import DelayedSubmission

job = DelayedSubmission.load(sys.argv[1])
if len(sys.argv) > 2:  # a requeue: submitit pickles what checkpoint() returns
    job.function.checkpoint().dump(sys.argv[2])
result = job.result()
print(json.dumps({"class": type(job.function).__module__ + "." + type(job.function).__name__,
                  "trial_dir": job.function.trial_dir, "R1": result["metrics"]["R1"]}))
"""


def run_job(pickle: Path, cwd: Path, requeue_to: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the checkout, as a job started in it has
    args = [sys.executable, "-c", RUN, str(pickle)] + ([str(requeue_to)] if requeue_to else [])
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_job_pickled_before_the_move_runs_and_requeues(synth_small, tmp_path):
    assert b"sweeps.job" in LEGACY.read_bytes()  # the old path, by reference
    cfg = load_config(None, tiny_overrides(synth_small, "runs", "tracking.study=legacy"))
    trial = TrialDir(tmp_path / TrialDir.for_config(cfg).path)
    assert trial.path.relative_to(tmp_path) == Path("runs/legacy/a83ca202a1")
    trial.init(cfg)

    first = run_job(LEGACY, tmp_path, requeue_to=tmp_path / "requeued.pkl")
    assert first["class"] == "bilma.sweep.job.TrialJob"
    assert first["trial_dir"] == "runs/legacy/a83ca202a1"
    assert trial.status()["state"] == "done"
    assert b"bilma.sweep.job" in (tmp_path / "requeued.pkl").read_bytes()

    again = run_job(tmp_path / "requeued.pkl", tmp_path)  # the requeued job finds it done
    assert again["R1"] == first["R1"] == trial.read_result()["metrics"]["R1"]
    assert trial.status()["attempts"] == 1  # reported, not trained again
