"""The slurm backend against the REAL single-node SLURM of `cluster/dev-slurm.sh start`.

Marked `slurm`: `.ci/run` starts the cluster first. Without a cluster these tests fail in CI
(CI=true) and are skipped, with the reason, when run by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import slurm as slurm_support
from support.paths import REPO
from support.slurm import run_launch
from support.tiny import tiny_overrides

from bilma.config import parse_override

cluster, jobs = slurm_support.cluster, slurm_support.jobs  # the fixtures
pytestmark = pytest.mark.slurm
DEADLINE = 900  # seconds for a trial to finish: generous, the machine may be busy


def settings(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """--set values: the tiny model on `synth_small`, runs and MLflow under tmp_path."""
    return tiny_overrides(
        root,
        tmp_path / "runs",
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        *extra,
    )


def write_grid(tmp_path: Path, overrides: list[str], study="slurm-test", seeds=(1,), variants=None):
    grid = {
        "study": study,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": list(seeds),
        "set": dict(parse_override(o) for o in overrides),
        "variants": variants or {"only": {}},
    }
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def write_profile(tmp_path: Path, **keys) -> Path:
    base = yaml.safe_load((REPO / "cluster" / "profiles" / "local-slurm.yaml").read_text())
    base.update(keys)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def launch(
    *args: str, cwd: Path, ids: list[str] | None = None, timeout=300, expect: int = 0
) -> str:
    """Run sweeps/launch.py to its end (a SLURM launch submits and exits); its output (its
    exit code must be `expect`)."""
    proc = run_launch(*args, cwd=cwd, timeout=timeout)
    out = proc.stdout + proc.stderr
    if ids is not None:
        ids += sorted(set(re.findall(r"^\s+(\d+)(?:_\d+)?\s", out, re.MULTILINE)))
    assert proc.returncode == expect, out
    return out


def wait_for(what: str, check, timeout: float = DEADLINE, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_result(trial: Path, timeout: float = DEADLINE) -> dict:
    """The trial's result.json; fails at once (with its error and log) if the trial failed."""

    def check():
        if (trial / "result.json").exists():
            return json.loads((trial / "result.json").read_text())
        st = status(trial) if (trial / "status.json").exists() else {}
        if st.get("state") == "failed" and not queued([str(st.get("job_id"))]):
            raise AssertionError(f"trial failed: {st.get('error')}\n{logs(trial)[-3000:]}")
        return None

    return wait_for(f"the result of {trial.name}", check, timeout)


def queued(ids: list[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True
    )
    return out.stdout.split()


def trial_dirs(tmp_path: Path, study: str) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs" / study).glob("*") if (p / "config.yaml").exists())


def status(trial: Path) -> dict:
    return json.loads((trial / "status.json").read_text())


def logs(trial: Path) -> str:
    """Everything the trial's SLURM jobs wrote (submitit's and the trainer's lines)."""
    folder = trial.parent / "slurm"
    job = status(trial)["job_id"]
    return "".join(p.read_text(errors="replace") for p in folder.glob(f"{job}/*_log.*"))


def sacct_state(job: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", job.split("_")[0]],
        capture_output=True,
        text=True,
    )
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid == job:
            return state
    return ""


def mlflow_children(tmp_path: Path, study: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(study)
    return [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"
    ]


# ----------------------------------------------------------------------------- the tests


def test_smoke_sweep_runs_as_a_job_array(cluster, jobs, synth_small, tmp_path):
    """sweeps/grids/smoke.yaml (shrunk to the tiny model) with --backend slurm: the launcher
    submits one array and exits; every trial ends with result.json and a finished MLflow run."""
    sets = [
        a
        for o in settings(synth_small, tmp_path, "train.max_steps_per_epoch=2")
        for a in ("--set", o)
    ]
    args = ["--grid", "smoke", *sets, "--backend", "slurm", "--profile", "local-slurm"]
    t0 = time.time()
    out = launch(*args, cwd=tmp_path, ids=jobs)
    assert time.time() - t0 < 120, "the launcher waited for the jobs instead of exiting"
    assert re.search(r"submitted 4 trials as job array \d+ \(profile local-slurm", out), out
    assert len(jobs) == 1 and "--status" in out and f"squeue -j {jobs[0]}" in out
    trials = trial_dirs(tmp_path, "smoke")
    assert len(trials) == 4
    assert sorted(status(t)["job_id"] for t in trials) == [f"{jobs[0]}_{i}" for i in range(4)]

    for t in trials:
        wait_result(t)
    wait_for("the array to leave the queue", lambda: not queued(jobs))
    for t in trials:
        assert status(t)["state"] == "done"
        wait_for("sacct COMPLETED", lambda t=t: sacct_state(status(t)["job_id"]) == "COMPLETED", 60)
    table = launch(*args[:-4], "--status", cwd=tmp_path)
    assert table.count("COMPLETED") == 4 and table.count(" done ") == 4, table
    children = mlflow_children(tmp_path, "smoke")
    assert len(children) == 4
    assert {r.data.tags["trial_id"] for r in children} == {t.name for t in trials}
    for run in children:
        assert run.info.status == "FINISHED" and "test/R1" in run.data.metrics
        assert run.data.tags["slurm_job_id"].startswith(f"{jobs[0]}_")
    again = launch(*args, cwd=tmp_path, ids=jobs)
    assert "4 done (skipped)" in again and "nothing to submit" in again and len(jobs) == 1


def _train_records(trial: Path) -> list[dict]:
    keep = ("epoch", "step", "split", "loss", "sdm", "id", "R1", "R5", "R10", "mAP", "mINP")
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keep if k in r} for r in rows]


def test_time_limit_signal_requeue_resume_same_metrics(cluster, jobs, synth_small, tmp_path):
    """A 1-minute limit: SLURM signals (USR2), the trainer saves, submitit requeues, and the
    trial ends with exactly the metrics of an uninterrupted run of the same config."""
    # slurmctld checks limits every 30 s: with 1 min and a 10-s delay the signal comes 20-50 s
    # into each run. The work must outlast that even on an idle machine: 300 epochs of 6 steps
    # (seen: 60 epochs finished unsignalled in 25 s on a half-idle machine, 0.07 s a step, so
    # ~2 min of training here). On a busy machine each run gets fewer steps, more requeues.
    work = settings(synth_small, tmp_path, "train.epochs=300", "eval.every=100")
    grid = write_grid(tmp_path, work, study="timelimit")
    profile = write_profile(tmp_path, time_min=1, signal_delay_s=10)
    launch(
        "--grid", str(grid), "--backend", "slurm", "--profile", str(profile), cwd=tmp_path, ids=jobs
    )
    # the same trial, uninterrupted, in this process's machine meanwhile
    ref_runs = tmp_path / "reference"
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "bilma",
            "train",
            "--config",
            str(REPO / "configs" / "synth_tiny.yaml"),
            *[o for o in work if not o.startswith(("paths.runs", "tracking."))],
            f"paths.runs={ref_runs}",
            "tracking.enabled=false",
            "train.seed=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert ref.returncode == 0, ref.stdout + ref.stderr
    (trial,) = trial_dirs(tmp_path, "timelimit")
    wait_result(trial, timeout=2 * DEADLINE)
    log = logs(trial)
    assert "SIGUSR2 received" in log or "Caught signal SIGUSR2" in log, log
    assert "Requeued" in log or "requeue" in log.lower(), log
    assert status(trial)["attempts"] >= 2 and "resuming from" in log, log
    (reference,) = list(ref_runs.glob("*/*"))
    assert reference.name == trial.name  # same config, same trial id
    got = json.loads((trial / "result.json").read_text())
    want = json.loads((reference / "result.json").read_text())
    assert got["metrics"] == want["metrics"] and got["selection"] == want["selection"]
    assert _train_records(trial) == _train_records(reference)


def test_scancel_shows_cancelled_and_relaunch_completes(cluster, jobs, synth_small, tmp_path):
    # 200 epochs (~80 s on an idle machine; 12 epochs once ended in 5 s, before the checks
    # below could cancel it): still running when they do
    work = settings(synth_small, tmp_path, "train.epochs=200", "eval.every=50")
    grid = write_grid(tmp_path, work, study="cancel")
    args = ["--grid", str(grid), "--backend", "slurm", "--profile", "local-slurm"]
    launch(*args, cwd=tmp_path, ids=jobs)
    (trial,) = trial_dirs(tmp_path, "cancel")
    wait_for("the trainer to start", lambda: status(trial).get("state") == "running")
    running_again = launch(*args, cwd=tmp_path, ids=jobs)
    assert "1 already running" in running_again and len(jobs) == 1  # nothing twice
    wait_for("the first epoch", lambda: (trial / "ckpt" / "last.pt").exists())
    job = status(trial)["job_id"]
    assert not (trial / "result.json").exists(), "the trial ended before it could be cancelled"
    subprocess.run(["scancel", job], check=True)
    wait_for("the job to leave the queue", lambda: not queued([job]), 120)
    wait_for("sacct CANCELLED", lambda: sacct_state(job).startswith("CANCELLED"), 60)
    table = launch("--grid", str(grid), "--status", cwd=tmp_path)
    assert f"{job} CANCELLED" in table, table
    again = launch(*args, cwd=tmp_path, ids=jobs)
    assert "1 to resume" in again, again
    wait_result(trial)
    assert "resuming from" in logs(trial)
    assert status(trial)["state"] == "done" and status(trial)["job_id"] != job


def test_ddp_two_tasks_through_srun(cluster, jobs, synth_small, tmp_path):
    """tasks_per_node: 2 -> srun starts two processes; the trainer reads rank, world size and
    master from SLURM's variables and runs DDP over gloo. The result is rank 0's."""
    import submitit

    work = settings(synth_small, tmp_path, "train.epochs=1")
    # every branch on: synth_tiny alone leaves MLM/MIM parameters without gradients, which
    # DDP refuses until the model handles unused parameters (helper `parity`'s fix)
    grid = write_grid(
        tmp_path,
        work,
        study="ddp",
        variants={"all": {"loss.mlm_weight": 1.0, "loss.mim_weight": 1.0}},
    )
    profile = write_profile(tmp_path, tasks_per_node=2, cpus_per_task=1)
    launch(
        "--grid", str(grid), "--backend", "slurm", "--profile", str(profile), cwd=tmp_path, ids=jobs
    )
    (trial,) = trial_dirs(tmp_path, "ddp")
    wait_result(trial)
    job_id = status(trial)["job_id"]
    job = submitit.SlurmJob(folder=trial.parent / "slurm" / "%j", job_id=job_id, tasks=(0, 1))
    results = wait_for("both tasks' results", lambda: job.done() and job.results(), 120)
    rank0, rank1 = results
    assert rank0 == json.loads((trial / "result.json").read_text()) and rank1 == {}
    assert "x 2 process(es)" in logs(trial)
    records = [r for r in _train_records(trial) if r["split"] == "train"]
    # each of the 2 processes takes 6 steps of 8 pairs
    assert len(records) == 1 and records[0]["step"] == 6


def test_array_larger_than_max_array_size_is_split(cluster, jobs, synth_small, tmp_path):
    """More trials than the cluster's MaxArraySize: several arrays (held, then cancelled)."""
    from bilma.sweep.backends.slurm import max_array_size

    size = max_array_size()
    if size > 200:
        pytest.skip(f"MaxArraySize is {size}; dev-slurm.sh sets 64 to exercise the split")
    work = settings(synth_small, tmp_path, "tracking.enabled=false")
    grid = write_grid(tmp_path, work, study="split", seeds=range(size + 3))
    profile = write_profile(tmp_path, sbatch_extra=["--hold"])
    out = launch(
        "--grid", str(grid), "--backend", "slurm", "--profile", str(profile), cwd=tmp_path, ids=jobs
    )
    assert f"submitted {size + 3} trials as 2 job arrays" in out, out
    assert len(jobs) == 2 and len(queued(jobs)) == size + 3
    assert (
        sorted({status(t)["job_id"].split("_")[0] for t in trial_dirs(tmp_path, "split")}) == jobs
    )


def test_two_launchers_at_once_submit_each_trial_once(cluster, jobs, synth_small, tmp_path):
    work = settings(synth_small, tmp_path, "tracking.enabled=false")
    grid = write_grid(tmp_path, work, study="twice", seeds=(1, 2, 3))
    profile = write_profile(tmp_path, sbatch_extra=["--hold"])
    cmd = [
        sys.executable,
        str(REPO / "sweeps" / "launch.py"),
        "--grid",
        str(grid),
        "--backend",
        "slurm",
        "--profile",
        str(profile),
    ]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for out in outs:
        jobs += sorted(set(re.findall(r"^\s+(\d+)(?:_\d+)?\s", out, re.MULTILINE)))
    assert len(queued(jobs)) == 3, outs


def test_sbatch_refusal_is_one_clear_line(cluster, jobs, synth_small, tmp_path):
    grid = write_grid(tmp_path, settings(synth_small, tmp_path, "tracking.enabled=false"))
    profile = write_profile(tmp_path, partition="nosuchpartition")
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", str(grid)]
        + ["--backend", "slurm", "--profile", str(profile)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert (
        "error: sbatch refused the array with profile profile: sbatch: error: invalid partition"
        in proc.stderr
    ), proc.stderr
    again = launch("--grid", str(grid), "--dry-run", cwd=tmp_path)
    assert "1 to start" in again  # nothing was marked submitted


def test_ablation_grid_without_its_dataset_queues_nothing(cluster, tmp_path):
    """The literal ablation grid on a machine without CUHK-PEDES: refused by the preflight
    before any job, folder or MLflow run exists."""
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", "ablation.yaml"]
        + ["--backend", "slurm", "--profile", "local-slurm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data.root=datasets/CUHK-PEDES (9 trials): no such folder" in proc.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert set(after.split()) <= set(before.split())  # no new job
    assert os.listdir(tmp_path) == []  # no runs/, no job folder, no mlflow.db


def test_trials_per_job_packs_trials_and_requeues_each_where_it_was(
    cluster, jobs, synth_small, tmp_path
):
    """trials_per_job: 2 -> three trials in two array tasks, one after another in the first;
    a 1-minute limit requeues the first job during its long trial, which resumes from its
    checkpoint; the short trial that finished before is not run again (bilma.sweep.pack)."""
    work = settings(synth_small, tmp_path, "train.max_steps_per_epoch=2")
    short = {"train.epochs": 1}
    variants = {"a": short, "b": {"train.epochs": 300, "eval.every": 100}, "c": {"train.epochs": 2}}
    grid = write_grid(tmp_path, work, study="packed", variants=variants)
    profile = write_profile(tmp_path, time_min=1, signal_delay_s=10, trials_per_job=2)
    args = ["--grid", str(grid), "--backend", "slurm", "--profile", str(profile)]
    out = launch(*args, cwd=tmp_path, ids=jobs)
    assert re.search(r"submitted 3 trials as job array \d+ \(.*2 trials per job\)", out), out
    by_variant = {json.loads((t / "launch.json").read_text())["variant_base"]: t
                  for t in trial_dirs(tmp_path, "packed")}  # fmt: skip
    a, b, c = by_variant["a"], by_variant["b"], by_variant["c"]
    assert status(a)["job_id"] == status(b)["job_id"] == f"{jobs[0]}_0"
    assert status(c)["job_id"] == f"{jobs[0]}_1"
    first = wait_result(a)
    attempts_a = status(a)["attempts"]
    assert wait_result(c)["metrics"]
    wait_result(b, timeout=2 * DEADLINE)
    log = logs(b)
    assert status(b)["attempts"] >= 2 and "resuming from" in log, log
    assert log.count(f"== trial {b.name}") >= 2  # the requeued pack started again at b
    assert json.loads((a / "result.json").read_text()) == first  # a never ran again
    assert status(a)["attempts"] == attempts_a and status(a)["state"] == "done"
    wait_for("the array to leave the queue", lambda: not queued(jobs))
    table = launch("--grid", str(grid), "--status", cwd=tmp_path)
    assert table.count(" done ") == 3, table


# ----------------------------------------------------------------------------- causes

# Imported by every Python process of a job whose PYTHONPATH starts with its folder: makes
# the trainer's fit raise a bug (no test seam in the trainer; the job runs the real code).
_PLANT_BUG = """
import importlib.abc, importlib.util, sys

class _PlantBug(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bilma.training.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)

            def fit(self):
                raise ZeroDivisionError("a bug planted by the test")

            module.Trainer.fit = fit

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _PlantBug())
"""


def _sacct_times(job: str, *fields: str) -> list:
    """The job's times (sacct's Submit, Eligible, Start, ...) as datetimes."""
    from datetime import datetime

    def get():
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", f"JobID,{','.join(fields)}", "-j", job.split("_")[0]],
            capture_output=True,
            text=True,
        )
        for line in out.stdout.splitlines():
            jid, *times = line.split("|")
            if jid == job and all(t[:1].isdigit() for t in times):
                return [datetime.fromisoformat(t) for t in times]
        return None

    return wait_for(f"sacct's times of {job}", get, 60)


def _node() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True)
    return out.stdout.split()[0]


def _running_jobs() -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "RUNNING,COMPLETING", "-o", "%i"],
        capture_output=True,
        text=True,
    )
    return set(out.stdout.split())


def _fail_the_node(ours: set[str], ends: str) -> None:
    """A real node failure of the single node: drained (no new job starts), once no job but
    `ours` runs there (other users' jobs would die too: wait up to 3 min for them), set DOWN,
    which kills `ours` (SLURM records NODE_FAIL: `ends`, a job it does not requeue, shows it
    as its last state), then resumed."""
    node = _node()
    scontrol = ["scontrol", "update", f"NodeName={node}"]
    subprocess.run([*scontrol, "State=DRAIN", "Reason=bilma-test-node-failure"], check=True)
    try:
        wait_for("no other job on the node", lambda: _running_jobs() <= ours, 180)
        subprocess.run([*scontrol, "State=DOWN", "Reason=bilma-test-node-failure"], check=True)
        wait_for("sacct NODE_FAIL", lambda: sacct_state(ends) == "NODE_FAIL", 120)
    finally:
        # a DOWN node comes back by itself here (ReturnToService=2) once slurmd registers;
        # RESUME for the case it did not (an error when it already has: ignored)
        subprocess.run([*scontrol, "State=RESUME"], capture_output=True)
        wait_for(
            "the node back",
            lambda: (
                subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
                .stdout.strip()
                .rstrip("*")
                in ("idle", "mixed", "allocated")
            ),
            120,
        )


def test_node_failure_is_retried_and_a_bug_is_not(cluster, jobs, synth_small, tmp_path):
    """The node fails under two trials (a real NODE_FAIL: the node set DOWN). One submitted
    with --no-requeue (clusters with JobRequeue=0): the next launch resubmits it by itself (no
    --retry-failed) after the profile's backoff, and it finishes. The other: SLURM requeues it
    by itself (JobRequeue=1, this cluster's), and its next run records why the first ended.
    Both record node_failure for their first attempt. A trial ending in a bug is recorded as
    one and not retried."""
    work = settings(synth_small, tmp_path, "train.epochs=150", "eval.every=50")
    grid = write_grid(tmp_path, work, study="nodefail")
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(_PLANT_BUG)
    buggy = write_profile(tmp_path, setup=[f"export PYTHONPATH={plant}:$PYTHONPATH"])
    buggy = buggy.rename(tmp_path / "buggy.yaml")
    profile = write_profile(
        tmp_path, sbatch_extra=["--no-requeue"], max_transient_retries=2, retry_backoff_s=30
    )
    args = ["--grid", str(grid), "--backend", "slurm", "--profile", str(profile)]
    bug_grid = write_grid(tmp_path, work[:-2] + ["train.epochs=2"], study="bugtrial")
    bug_args = ["--grid", str(bug_grid), "--backend", "slurm", "--profile", str(buggy)]
    requeued_grid = write_grid(tmp_path, work, study="requeued")
    # --no-reuse: the same trial id as nodefail's, trained in its own study (not reused)
    requeued_args = ["--grid", str(requeued_grid), "--backend", "slurm", "--no-reuse", "--profile"]
    launch(*bug_args, cwd=tmp_path, ids=jobs)
    launch(*args, cwd=tmp_path, ids=jobs)
    launch(*requeued_args, "local-slurm", cwd=tmp_path, ids=jobs)

    (trial,) = trial_dirs(tmp_path, "nodefail")
    (requeued,) = trial_dirs(tmp_path, "requeued")
    for t in (trial, requeued):
        wait_for("the first epoch", lambda t=t: (t / "ckpt" / "last.pt").exists())
        assert not (t / "result.json").exists(), "the trial ended before the node failed"
    job, requeued_job = status(trial)["job_id"], status(requeued)["job_id"]
    _fail_the_node({job, requeued_job}, ends=job)
    wait_for("the job to leave the queue", lambda: not queued([job]), 120)

    table = launch(*args[:2], "--status", cwd=tmp_path)
    assert f"{job} NODE_FAIL" in table and "node_failure" in table, table
    again = launch(*args, cwd=tmp_path, ids=jobs)
    assert "1 to start (1 retried)" in again, again
    new_job = status(trial)["job_id"]
    assert new_job != job
    # the backoff: 30 s from the launch's decision (before it prepared and submitted: a few
    # seconds on a busy machine), then SLURM may start it (sbatch --begin), not before
    submit, eligible = _sacct_times(new_job, "Submit", "Eligible")
    assert 10 <= (eligible - submit).total_seconds() <= 31, (submit, eligible)
    result = wait_result(trial, timeout=2 * DEADLINE)
    assert result["epochs"] == 150
    st = status(trial)
    assert st["state"] == "done" and st["auto_retries"] == 1 and st["attempts"] == 2
    first, last = st["attempt_log"]
    assert (first["job_id"], first["cause"], first["source"]) == (job, "node_failure", "slurm")
    assert first["retried"] is True
    assert (last["job_id"], last["state"], last["cause"]) == (new_job, "done", None)
    assert "resuming from" in logs(trial)

    wait_result(requeued, timeout=2 * DEADLINE)
    st = status(requeued)
    assert st["state"] == "done" and st["attempts"] == 2 and "auto_retries" not in st
    first, last = st["attempt_log"]
    assert (first["job_id"], first["cause"], first["source"]) == (
        requeued_job,
        "node_failure",
        "slurm",
    )
    assert (last["job_id"], last["state"]) == (requeued_job, "done")  # the same job, rerun

    (bug,) = trial_dirs(tmp_path, "bugtrial")
    wait_for("the bug", lambda: status(bug).get("state") == "failed", DEADLINE)
    bug_job = status(bug)["job_id"]
    wait_for("the buggy job to end", lambda: not queued([bug_job]), 120)
    st = status(bug)
    assert st["cause"] == "bug" and st["error"] == "ZeroDivisionError: a bug planted by the test"
    bug_table = launch(*bug_args[:2], "--status", cwd=tmp_path)
    assert re.search(rf"failed\s+{bug_job} FAILED\s+bug\s+1\s", bug_table), bug_table
    again = launch(*bug_args, cwd=tmp_path, ids=jobs, expect=1)  # every trial done or failed
    assert "1 failed (use --retry-failed)" in again and "nothing to submit" in again, again
    assert status(bug)["job_id"] == bug_job and status(bug)["attempts"] == 1
    # the filter: a retry of other causes leaves it alone too
    dry = launch(
        *bug_args, "--retry-failed", "node_failure,out_of_memory", "--dry-run", cwd=tmp_path
    )
    assert "1 failed (use --retry-failed)" in dry, dry
    dry = launch(*bug_args, "--retry-failed", "bug", "--dry-run", cwd=tmp_path)
    assert "1 to start (1 retried)" in dry, dry
    runs = {r.data.tags["trial_id"]: r for r in mlflow_children(tmp_path, "bugtrial")}
    assert runs[bug.name].data.tags["failure_cause"] == "bug"
