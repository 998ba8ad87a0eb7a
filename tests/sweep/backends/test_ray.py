"""The Ray Tune backend on a real local Ray (one head for the module, 2 CPUs, 127.0.0.1):
an ASHA search on the synthetic dataset, a driver killed mid-experiment and relaunched,
and MLflow's view of it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from support.paths import REPO
from support.tiny import tiny_overrides

from bilma.config import parse_override

pytest.importorskip("ray")

STUDY = "ray-test"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with ports, temp dir and auth token of its own; stopped (with
    every process it started) by SIGTERM to `ray start --block`."""
    tmp = Path(tempfile.mkdtemp(prefix="bilma-rayhead-"))  # short: socket paths < 108
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    p = _free_ports(8)
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={p[0]}",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        f"--dashboard-port={p[1]}",
        f"--dashboard-agent-listen-port={p[2]}",
        f"--dashboard-agent-grpc-port={p[3]}",
        f"--runtime-env-agent-port={p[4]}",
        f"--metrics-export-port={p[5]}",
        f"--node-manager-port={p[6]}",
        f"--object-manager-port={p[7]}",
        f"--temp-dir={tmp}",
        "--disable-usage-stats",
    ]
    log = tmp / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    deadline = time.time() + 180
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.3)
    yield {"address": f"127.0.0.1:{p[0]}", **env}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def write_grid(tmp_path: Path, root: Path, epochs: int = 4) -> Path:
    overrides = tiny_overrides(
        root,
        tmp_path / "runs",
        f"train.epochs={epochs}",
        "train.max_steps_per_epoch=2",
        "eval.every=1",
        "eval.select_metric=mAP",  # continuous: ASHA's cut-offs see no ties
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    )
    settings = dict(parse_override(o) for o in overrides)
    grid = {
        "study": STUDY,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": [1, 2],
        "set": settings,
        "variants": {"A": {"optim.lr": 0.001}, "B": {"optim.lr": 0.0001}},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def launch(grid: Path, head: dict, cwd: Path, out: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": head["RAY_AUTH_MODE"],
        "RAY_AUTH_TOKEN_PATH": head["RAY_AUTH_TOKEN_PATH"],
    }
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", str(grid)]
    cmd += ["--backend", "ray", "--ray-address", head["address"]]
    with open(out, "w") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)


def trial_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "runs" / STUDY).glob("*/config.yaml"))


def status(d: Path) -> dict:
    path = d / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def epochs_of(d: Path) -> list[int]:
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line]
    return [r["epoch"] for r in recs if r["split"] != "train"]


def test_asha_search_survives_a_killed_driver(tmp_path, synth_small, ray_head):
    grid = write_grid(tmp_path, synth_small)
    first = launch(grid, ray_head, tmp_path, tmp_path / "first.txt")
    # Kill the driver once a trial has ended (done or stopped by ASHA) and others have not.
    deadline = time.time() + 900
    ended: list[Path] = []
    while not ended:
        assert first.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
        assert time.time() < deadline, "no trial ended in 15 minutes"
        ended = [d for d in trial_dirs(tmp_path) if status(d).get("state") in ("done", "stopped")]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {d.name: (status(d)["attempts"], epochs_of(d)) for d in ended}
    states = {d.name: status(d).get("state") for d in trial_dirs(tmp_path)}
    assert len(states) < 4 or any(s not in ("done", "stopped") for s in states.values()), states

    second = launch(grid, ray_head, tmp_path, tmp_path / "second.txt")
    assert second.wait(900) == 0, (tmp_path / "second.txt").read_text()[-3000:]
    text = (tmp_path / "second.txt").read_text()
    assert "restoring the Ray Tune experiment" in text

    dirs = trial_dirs(tmp_path)
    assert len(dirs) == 4
    final = {d.name: status(d)["state"] for d in dirs}
    assert set(final.values()) <= {"done", "stopped"}, final
    assert "stopped" in final.values(), final  # ASHA cut at least one trial
    for d in dirs:
        epochs = epochs_of(d)
        assert epochs == list(range(1, len(epochs) + 1)), (d.name, epochs)  # none twice
        assert (d / "result.json").exists() == (final[d.name] == "done")
        if final[d.name] == "stopped":
            assert 1 <= len(epochs) < 4 and "stopped early" in status(d)["error"]
    # Trials that had ended before the kill were not run again.
    for name, (attempts, epochs) in before.items():
        assert status(tmp_path / "runs" / STUDY / name)["attempts"] == attempts
        assert epochs_of(tmp_path / "runs" / STUDY / name) == epochs
    # Tune's own files stay under the study's directory.
    assert list((tmp_path / "runs" / STUDY / ".tune").glob("tune-*/experiment_state-*.json"))

    # The killed driver's trial actors can outlive it on the shared Ray head and write their
    # MLflow run after the second driver returns (seen once under load): wait until no trial
    # process holds its lock. (The relaunch itself should wait for them: open, see the note.)
    from bilma.runs.lock import is_locked

    deadline = time.time() + 180
    while any(is_locked(d) for d in dirs) and time.time() < deadline:
        time.sleep(0.5)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1
    assert sorted(r.data.tags["trial_id"] for r in trials) == sorted(final)  # each exactly once
    for r in trials:
        tid = r.data.tags["trial_id"]
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        if final[tid] == "done":
            assert r.info.status == "FINISHED" and "test/R1" in r.data.metrics
            assert r.data.tags.get("stopped_early") is None
        else:
            assert r.info.status == "KILLED" and r.data.tags.get("stopped_early") == "true"
            assert "test/R1" not in r.data.metrics
            # its last metrics are there, at the epoch it was stopped
            hist = client.get_metric_history(r.info.run_id, "val/mAP")
            assert [m.step for m in hist] == epochs_of(tmp_path / "runs" / STUDY / tid)

    # The status table tells stopped trials apart.
    table = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", str(grid), "--status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert table.count(" stopped ") == list(final.values()).count("stopped")


def test_sampled_values_make_their_own_trial(tmp_path, synth_small):
    """A searcher's values: rounded to 4 significant digits, named in the variant label, and
    a trial id of their own that the same values always give again."""
    from bilma.config import trial_id
    from bilma.sweep.backends.ray_trainable import trial_config
    from bilma.sweep.expand import expand, load_grid

    base = expand(load_grid(write_grid(tmp_path, synth_small)))[0].config
    cfg = trial_config(base, {"optim.lr": 0.000123456789, "loss.mim_weight": 0.5})
    assert cfg.optim.lr == 0.0001235 and cfg.loss.mim_weight == 0.5
    assert cfg.tracking.variant == "A {lr=0.0001235, mim_weight=0.5}"
    assert trial_id(cfg) != trial_id(base)
    assert trial_id(trial_config(base, {"optim.lr": 0.00012346, "loss.mim_weight": 0.5})) == (
        trial_id(cfg)
    )
    assert trial_config(base, {}) is base


def test_tune_setup_follows_the_search_section(tmp_path, synth_small):
    from ray.tune.search.sample import Float

    from bilma.sweep.backends.ray import make_scheduler, tune_setup
    from bilma.sweep.expand import expand, load_grid

    path = write_grid(tmp_path, synth_small)
    tree = yaml.safe_load(path.read_text())
    grid = load_grid(path)
    space, alg, n = tune_setup(grid, 4)
    assert space == {"base": {"grid_search": [0, 1, 2, 3]}} and alg is None and n == 1
    sched = make_scheduler(grid, expand(grid))  # max_t defaults to train.epochs
    assert type(sched).__name__ == "AsyncHyperBandScheduler"
    assert (sched._time_attr, sched._max_t, sched._reduction_factor) == ("epoch", 4, 2)
    tree["search"] = {
        "method": "random",
        "num_samples": 3,
        "seed": 5,
        "space": {"loss.mim_weight": {"uniform": [0.0, 1.0]}},
    }
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    grid = load_grid(path)
    space, alg, n = tune_setup(grid, 4)
    assert space["base"] == {"grid_search": [0, 1, 2, 3]} and n == 3
    dist = space["space"]["loss.mim_weight"]
    assert isinstance(dist, Float) and (dist.lower, dist.upper) == (0.0, 1.0)
    assert type(alg).__name__ == "BasicVariantGenerator"


def test_a_trial_whose_worker_keeps_dying_is_recorded_failed_by_ray(
    tmp_path, synth_small, ray_head
):
    """SIGKILL to the trial's worker process, three times (Tune restores it twice: max_failures
    2): the trial ends failed, recorded by the Ray callback with Ray's own words, source ray,
    and no cause (a killed process says nothing; like a local job killed without a record)."""
    from bilma.runs.lock import local_holder_pid

    overrides = tiny_overrides(
        synth_small, tmp_path / "runs", "train.epochs=200", "train.max_steps_per_epoch=2"
    )
    grid = {
        "study": STUDY,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": [1],
        "set": dict(parse_override(o) for o in overrides),
        "variants": {"A": {}},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    proc = launch(path, ray_head, tmp_path, tmp_path / "out.txt")
    killed: list[int] = []
    deadline = time.time() + 600
    while len(killed) < 3 and proc.poll() is None:
        assert time.time() < deadline, (tmp_path / "out.txt").read_text()[-3000:]
        dirs = trial_dirs(tmp_path)
        pid = local_holder_pid(dirs[0]) if dirs else None
        if pid is not None and pid not in killed and status(dirs[0]).get("state") == "running":
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.2)
    assert proc.wait(300) != 0, (tmp_path / "out.txt").read_text()[-3000:]
    assert len(killed) == 3
    (d,) = trial_dirs(tmp_path)
    st = status(d)
    assert st["state"] == "failed" and st.get("cause") is None
    last = st["attempt_log"][-1]
    assert (last["state"], last["source"]) == ("failed", "ray"), st["attempt_log"]
    # Ray's own words when Tune has pickled them by the callback's time, else "worker died?"
    assert last["error"].startswith("Ray trial ") and " failed: " in last["error"]
    assert "FAILED A seed=1" in (tmp_path / "out.txt").read_text()
