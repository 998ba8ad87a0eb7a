"""The smoke grid on `--backend ray` (a local Ray that the launcher starts and stops itself)
gives the same trial directories and MLflow runs as `--backend local`; and the same grid
through cluster/ray.sbatch on the local SLURM (2 tasks = a 2-node Ray cluster)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO
from support.tiny import tiny_overrides

pytest.importorskip("ray")


def smoke_args(tmp: Path, root: Path) -> list[str]:
    """The smoke grid, shrunk to the tiny model on the session's small synthetic data."""
    sets = tiny_overrides(
        root,
        tmp / "runs",
        "train.max_steps_per_epoch=2",
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
    )
    args = ["--grid", "smoke"]
    for s in sets:
        args += ["--set", s]
    return args


def launch(tmp: Path, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "PYTHONPATH": str(REPO),
            **(env or {}),
        },
        timeout=1500,
    )


def outcome(tmp: Path) -> dict:
    """Trial id -> (state, variant, seed, test R1) from the directories, and the MLflow runs
    as (trial_id, status, run name, parent's name)."""
    dirs = sorted(p.parent for p in (tmp / "runs" / "smoke").glob("*/config.yaml"))
    trials = {}
    for d in dirs:
        result = json.loads((d / "result.json").read_text())
        state = json.loads((d / "status.json").read_text())["state"]
        trials[d.name] = (state, result["variant"], result["seed"], result["metrics"]["R1"])
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    names = {r.info.run_id: r.info.run_name for r in runs}
    mlruns = sorted(
        (
            r.data.tags.get("trial_id") or "",
            r.info.status,
            r.info.run_name,
            names.get(r.data.tags.get("mlflow.parentRunId")) or "",
        )
        for r in runs
    )
    return {"trials": trials, "runs": mlruns}


@pytest.mark.slow
def test_smoke_grid_same_on_ray_and_local(tmp_path, synth_small):
    args = smoke_args(tmp_path / "local", synth_small)
    local = launch(tmp_path / "local", [*args, "--backend", "local", "--max-parallel", "2"])
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    args = smoke_args(tmp_path / "ray", synth_small)
    ray = launch(tmp_path / "ray", [*args, "--backend", "ray"])
    assert ray.returncode == 0, ray.stdout[-3000:] + ray.stderr[-3000:]
    assert "a local Ray on 127.0.0.1" in ray.stdout
    a, b = outcome(tmp_path / "local"), outcome(tmp_path / "ray")
    assert len(a["trials"]) == 4 and {s for s, *_ in a["trials"].values()} == {"done"}
    # Same ids, states, labels, seeds; deterministic CPU training: the same test R1 too.
    assert b["trials"] == a["trials"]
    assert b["runs"] == a["runs"] and len(b["runs"]) == 5  # 4 trials + the sweep's parent


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and "up" in out.stdout


@pytest.mark.slurm
def test_ray_sbatch_runs_the_smoke_grid(tmp_path, synth_small):
    if not _slurm_up():
        reason = "no local SLURM (cluster/dev-slurm.sh start)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    work = tmp_path / "job"
    work.mkdir()
    out = work / "job.out"
    cmd = ["sbatch", "--wait", "--ntasks=2", "--cpus-per-task=1", "--time=30"]
    cmd += [f"--output={out}", f"--chdir={work}", str(REPO / "cluster" / "ray.sbatch")]
    cmd += smoke_args(work, synth_small)
    env = {**os.environ, "BILMA_REPO": str(REPO), "BILMA_PYTHON": sys.executable}
    job = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    text = out.read_text() if out.exists() else ""
    assert job.returncode == 0, job.stdout + job.stderr + text[-4000:]
    assert "ray.sbatch: 2 Ray nodes up, 2 CPUs" in text
    result = outcome(work)
    assert len(result["trials"]) == 4
    assert {s for s, *_ in result["trials"].values()} == {"done"}
    assert sorted(r[1] for r in result["runs"]) == ["FINISHED"] * 5
    # The job's Ray temp dirs are gone with it.
    job_id = job.stdout.split()[-1] if job.stdout.strip() else ""
    assert not list(Path("/tmp").glob(f"bilma-ray-{job_id}-*"))
