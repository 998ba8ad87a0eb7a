"""The launcher end to end on the local backend: real subprocesses, real MLflow store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.paths import REPO
from support.tiny import tiny_grid


def write_grid(
    tmp_path: Path, root: Path, seeds: list[int], variants: dict | None = None, name="g.yaml"
) -> Path:
    return tiny_grid(tmp_path, root, seeds, variants, name=name)


def launch(*args: str, cwd: Path, env_set: dict | None = None, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_set or {}))
    return subprocess.Popen(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def mlflow_runs(tmp_path: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("launch-test")
    return client.search_runs([exp.experiment_id])


def first_epoch_done(tmp_path: Path, timeout: float = 300) -> Path:
    """The directory of the first trial that wrote an epoch record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list((tmp_path / "runs" / "launch-test").glob("*/metrics.jsonl"))
        if found and found[0].read_text().strip():
            return found[0].parent
        time.sleep(0.2)
    raise AssertionError("no trial finished an epoch")


def results(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs" / "launch-test").glob("*/result.json"))


def test_local_sweep_then_relaunch_submits_nothing(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1])
    proc = launch("--grid", str(grid), "--max-parallel", "2", cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "0 done (skipped), 0 already running, 0 to resume, 2 to start" in out
    assert "2 done, 0 running, 0 failed, 0 pending" in out
    assert len(results(tmp_path)) == 2
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["variant"] in ("IRRA", "BiLMa") and "test/R1" in run.data.metrics

    again = launch("--grid", str(grid), cwd=tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "2 done (skipped)" in out and "nothing to submit" in out
    assert len(mlflow_runs(tmp_path)) == 3


def test_sigkill_mid_sweep_and_relaunch_loses_nothing(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1, 2])
    proc = launch("--grid", str(grid), "--max-parallel", "1", cwd=tmp_path, start_new_session=False)
    deadline = time.time() + 300
    while time.time() < deadline and len(results(tmp_path)) < 1:
        time.sleep(0.5)
    assert results(tmp_path), "no trial finished"
    proc.send_signal(signal.SIGKILL)  # the launcher only: its running trial carries on
    proc.communicate()
    again = launch("--grid", str(grid), "--max-parallel", "1", cwd=tmp_path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "done (skipped)" in out
    assert len(results(tmp_path)) == 4
    children = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("kind") == "trial"]
    assert len(children) == 4 and len({r.data.tags["trial_id"] for r in children}) == 4
    assert all(r.info.status == "FINISHED" for r in children)


def test_failing_trial_is_reported_and_others_finish(synth_small, tmp_path):
    variants = {
        "ok": {},
        "broken": {"data.dataset": "rstpreid", "data.root": str(tmp_path / "nowhere")},
    }
    grid = write_grid(tmp_path, synth_small, seeds=[1], variants=variants)
    # the preflight would refuse the launch (test_preflight.py); past it, as with data that
    # only the compute nodes see, the trial fails on its own and the others go on
    proc = launch("--grid", str(grid), "--max-parallel", "2", "--no-preflight", cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    assert "FAILED broken seed=1 (data_error)" in out and "data_captions.json" in out
    assert "log: " in out and "retrying" not in out  # a data error is never retried by itself
    assert "1 done, 0 running, 1 failed" in out
    assert len(results(tmp_path)) == 1
    # a relaunch leaves the failed trial alone unless asked, for its cause or for all
    for flags, planned in (
        ([], "1 failed (use --retry-failed)"),
        (["--retry-failed", "bug,out_of_memory"], "1 failed (use --retry-failed)"),
        (["--retry-failed", "data_error"], "1 to start (1 retried)"),
        (["--retry-failed"], "1 to start (1 retried)"),
    ):
        again = launch("--grid", str(grid), "--dry-run", *flags, cwd=tmp_path)
        out, _ = again.communicate(timeout=300)
        assert planned in out, (flags, out)
    status = launch("--grid", str(grid), "--status", cwd=tmp_path)
    out, _ = status.communicate(timeout=300)
    assert re.search(r"broken\s+1\s+\w+\s+failed\s+data_error\s+1\s", out), out


def test_retry_failed_takes_a_cause_filter(capsys):
    from bilma.sweep.cli import build_parser

    def parse(*args):
        return build_parser().parse_args(["--grid", "g", *args])

    assert parse().retry_failed is False
    assert parse("--retry-failed").retry_failed is True
    assert parse("--retry-failed", "--dry-run").retry_failed is True
    got = parse("--retry-failed", "out_of_memory,node_failure")
    assert got.retry_failed == {"out_of_memory", "node_failure"}
    # an override right after the flag is an override, not causes
    got = parse("--retry-failed", "train.epochs=3", "seed=1")
    assert got.retry_failed is True and got.set_overrides == ["train.epochs=3"]
    assert got.overrides == ["seed=1"]
    with pytest.raises(SystemExit) as info:
        parse("--retry-failed", "oom,bug")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        "error: argument --retry-failed: unknown cause 'oom'; valid causes: out_of_memory, "
        "node_failure, preemption, time_limit, cancelled, communication_timeout, data_error, "
        "config_error, bug (comma-separated)"
    ), err


def test_typo_is_refused_before_anything_runs(tmp_path):
    grid = tmp_path / "typo.yaml"
    grid.write_text(
        f"study: t\nbase: {REPO / 'configs' / 'synth_tiny.yaml'}\nvariants:\n  a: {{mim.mask_ration: 0.3}}\n"
        f"set: {{paths.runs: {tmp_path / 'runs'}}}\n"
    )
    proc = launch("--grid", str(grid), cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert (
        "typo.yaml" in out and "mim.mask_ration" in out and "did you mean 'mim.mask_ratio'" in out
    )
    assert len(out.strip().splitlines()) <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]


def test_dry_run_and_status_write_nothing(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1, 2])
    before = sorted(p.name for p in tmp_path.iterdir())
    out, _ = launch(
        "--grid",
        str(grid),
        "--dry-run",
        "--backend",
        "slurm",
        "--profile",
        "local-slurm",
        cwd=tmp_path,
    ).communicate(timeout=120)
    assert (
        "4 to start" in out
        and "#SBATCH --array=0-3%2" in out
        and "#SBATCH --partition=debug" in out
    )
    out, _ = launch("--grid", str(grid), "--status", cwd=tmp_path).communicate(timeout=120)
    assert out.count("new") == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("backend", ["debug"])
def test_debug_backend_runs_in_process(synth_small, tmp_path, backend):
    grid = write_grid(tmp_path, synth_small, seeds=[1], variants={"only": {}})
    out, _ = launch("--grid", str(grid), "--backend", backend, cwd=tmp_path).communicate(
        timeout=600
    )
    assert "== only seed=1" in out and len(results(tmp_path)) == 1


def test_preempted_trial_is_requeued_and_resumes(synth_small, tmp_path):
    """SIGUSR2 (SLURM's preemption and time-limit signal) mid-trial: the trainer saves, submitit
    requeues the job, and the next attempt resumes from the checkpoint."""
    import json

    grid_path = write_grid(tmp_path, synth_small, seeds=[1], variants={"long": {}})
    text = grid_path.read_text().replace(
        "train.max_steps_per_epoch: 2", "train.max_steps_per_epoch: 12"
    )
    grid_path.write_text(text.replace("train.epochs: 1", "train.epochs: 3"))
    proc = launch("--grid", str(grid_path), "--max-parallel", "1", cwd=tmp_path)
    trial = first_epoch_done(tmp_path)  # then preempt
    pid = json.loads((trial / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGUSR2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    status = json.loads((trial / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    log = "".join(p.read_text() for p in (trial / "logs").glob("*_log.err"))
    assert "SIGUSR2 received" in log and "resuming from" in log
    assert (trial / "result.json").exists()


def test_ctrl_c_stops_trials_cleanly_and_relaunch_resumes(synth_small, tmp_path):
    """Ctrl-C in the terminal (SIGINT to the whole foreground group): trials save and stop,
    the launcher exits 130, and the same command later finishes them."""
    import json

    grid_path = write_grid(tmp_path, synth_small, seeds=[1], variants={"long": {}})
    text = grid_path.read_text().replace(
        "train.max_steps_per_epoch: 2", "train.max_steps_per_epoch: 12"
    )
    grid_path.write_text(text.replace("train.epochs: 1", "train.epochs: 4"))
    proc = launch(
        "--grid", str(grid_path), "--max-parallel", "1", cwd=tmp_path, start_new_session=True
    )
    trial = first_epoch_done(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "stopped; run the same command to resume" in out
    status = json.loads((trial / "status.json").read_text())
    assert status["state"] == "interrupted" and (trial / "ckpt" / "last.pt").exists()
    again = launch("--grid", str(grid_path), cwd=tmp_path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "1 to resume" in out and (trial / "result.json").exists()


def _epoch_records(trial: Path) -> list[tuple[str, int]]:
    import json

    lines = (trial / "metrics.jsonl").read_text().splitlines()
    return [(r["split"], r["epoch"]) for r in map(json.loads, filter(None, lines))]


def test_two_launchers_at_once_run_each_trial_once(synth_small, tmp_path):
    """Two terminals start the same grid at the same moment: every trial runs exactly once."""
    import json

    grid = write_grid(tmp_path, synth_small, seeds=[1])
    procs = [launch("--grid", str(grid), "--max-parallel", "2", cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "2 done, 0 running, 0 failed, 0 pending" in out
    trials = sorted(p.parent for p in (tmp_path / "runs" / "launch-test").glob("*/config.yaml"))
    assert len(trials) == 2 and len(results(tmp_path)) == 2
    for trial in trials:
        records = _epoch_records(trial)
        assert len(records) == len(set(records)), records  # no epoch logged twice
        assert records.count(("train", 1)) == 1
        assert json.loads((trial / "status.json").read_text())["attempts"] == 1
    children = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["trial_id"] for r in children) == [t.name for t in trials]


def _made(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_unknown_profile_is_refused_before_anything_is_made(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1])
    proc = launch("--grid", str(grid), "--backend", "slurm", "--profile", "nope", cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert out.startswith("error: ") and "nope" in out and len(out.strip().splitlines()) <= 3
    assert _made(tmp_path) == ["g.yaml"]  # no runs/, no mlflow.db, no parent run


def test_slurm_without_sbatch_is_one_line_and_makes_nothing(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1])
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = launch(
        "--grid",
        str(grid),
        "--backend",
        "slurm",
        "--profile",
        "local-slurm",
        cwd=tmp_path,
        env_set={"PATH": str(empty)},
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert out.strip() == (
        "error: --backend slurm: sbatch is not on this machine (SLURM is not installed or not on "
        "PATH); run on the cluster's login node, or use --backend local"
    )
    assert _made(tmp_path) == ["bin", "g.yaml"]


def test_bad_max_parallel_is_refused_before_anything_is_made(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1])
    out, _ = launch("--grid", str(grid), "--max-parallel", "0", cwd=tmp_path).communicate(60)
    assert "--max-parallel: '0' must be above 0" in out
    assert _made(tmp_path) == ["g.yaml"]


def _trial_dirs(grid: Path):
    from bilma.sweep.expand import expand, load_grid
    from bilma.sweep.plan import trial_dir

    return [(t, trial_dir(t)) for t in expand(load_grid(grid))]


def test_corrupt_status_stops_only_its_own_trial(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1])
    (irra, bad), (_, good) = _trial_dirs(grid)
    bad.path.mkdir(parents=True)
    bad.status_path.write_text('{"state": "runn')  # a hand edit gone wrong
    reason = f"unreadable status: {bad.status_path}: line 1: invalid JSON: Unterminated string"
    out, _ = launch("--grid", str(grid), "--dry-run", cwd=tmp_path).communicate(timeout=120)
    assert reason in out and "1 unreadable (left alone)" in out and "1 to start" in out
    out, _ = launch("--grid", str(grid), "--status", cwd=tmp_path).communicate(timeout=120)
    assert reason in out and "new" in out

    proc = launch("--grid", str(grid), cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out  # one trial could not be looked at
    assert f"  {irra.variant} seed=1: {reason}" in out
    assert "1 done, 0 running, 0 failed, 0 pending, 1 unreadable" in out
    assert good.result_path.exists() and not bad.result_path.exists()
    assert bad.status_path.read_text() == '{"state": "runn'  # left as it was


def test_a_trial_done_on_another_data_root_is_named(synth_small, tmp_path):
    from bilma.runs.trial_dir import make_result

    grid = write_grid(tmp_path, synth_small, seeds=[1], variants={"only": {}})
    ((trial, d),) = _trial_dirs(grid)
    d.init(trial.config)  # a trial finished earlier on synth_small
    metrics = dict.fromkeys(("R1", "R5", "R10", "mAP", "mINP"), 50.0)
    selection = {"split": "val", "metric": "R1", "epoch": 1, "value": 50.0}
    d.write_result(make_result(trial.config, metrics, selection, None, 1, 1.0))
    new = tmp_path / "other-data"
    proc = launch("--grid", str(grid), "--set", f"data.root={new}", cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "1 done (skipped)" in out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: 1 trial(s) were run on data.root={synth_small}, not {new} (e.g. {d.path}): "
        f"their results and checkpoints come from {synth_small}; data.root is not part of the "
        "trial id, so use another paths.runs or study to train on the new root"
    ]


def test_a_hand_edited_trial_config_is_refused_before_anything_is_made(synth_small, tmp_path):
    grid = write_grid(tmp_path, synth_small, seeds=[1])
    (irra, d), (_, other) = _trial_dirs(grid)
    d.init(irra.config)
    d.config_path.write_text(d.config_path.read_text().replace("epochs: 1", "epochs: 5"))
    proc = launch("--grid", str(grid), cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert out.strip().splitlines()[-1] == (
        f"error: {d.config_path} holds another experiment than {irra.variant} seed=1 (edited "
        f"by hand?); restore it or remove {d.path}"
    )
    assert not other.path.exists() and not (tmp_path / "mlflow.db").exists()


def test_a_changed_default_names_the_finished_trials_and_asks(synth_small, tmp_path):
    """Ids hash every key: a default changed in the code (here: a value of the grid's base
    settings) gives every trial a new folder. The relaunch names the finished trials, the keys
    and both values, and trains nothing until told to rerun them or keep them."""
    grid = write_grid(tmp_path, synth_small, seeds=[1], variants={"only": {}})
    first = launch("--grid", str(grid), "--backend", "debug", cwd=tmp_path)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    (old,) = [p.parent.name for p in results(tmp_path)]
    grid.write_text(grid.read_text().replace("optim.lr: 0.001", "optim.lr: 0.002"))

    def again(*extra: str) -> tuple[int, str]:
        proc = launch("--grid", str(grid), "--backend", "debug", *extra, cwd=tmp_path)
        out, _ = proc.communicate(timeout=600)
        return proc.returncode, out

    code, out = again()
    assert code == 2, out
    lines = out.strip().splitlines()
    assert lines[-3:] == [
        f"error: 1 finished trial(s) in {tmp_path / 'runs' / 'launch-test'} were trained with "
        "other values than this plan (a default changed in the code, or a value edited in the "
        "grid):",
        f"  1 finished trial: only seed=1 ({old}): optim.lr was 0.001, now 0.002",
        "run again with --rerun-changed to train the plan (the finished trials stay; tables "
        "show both, naming the keys that differ) or --keep-changed to keep the finished "
        "results and train only the other trials",
    ]
    code, out = again("--dry-run")
    assert code == 0 and "optim.lr was 0.001, now 0.002" in out and "1 to start" in out
    code, out = again("--keep-changed")
    assert code == 0 and "nothing to submit: every trial is done" in out, out
    assert [p.parent.name for p in results(tmp_path)] == [old]
    assert len(list((tmp_path / "runs" / "launch-test").glob("*/config.yaml"))) == 1
    code, out = again("--rerun-changed")
    assert code == 0, out
    assert len(results(tmp_path)) == 2  # the finished trial is kept beside the new one
