"""Reliability: signals to the whole process group, kills between writes, a full disk, an
MLflow store that is down. The trial directory must always be complete and resumable."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.paths import REPO
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.runs.trial_dir import TrialDir

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "bilma", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def strip(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in recs]


def the_trial(runs: Path) -> TrialDir:
    (path,) = list(runs.glob("*/*"))
    return TrialDir(path)


def assert_same_run(a: TrialDir, b: TrialDir) -> None:
    ra, rb = a.read_result(), b.read_result()
    assert ra["metrics"] == rb["metrics"] and ra["selection"] == rb["selection"]
    wa = torch.load(a.last_ckpt, weights_only=True)["model"]
    wb = torch.load(b.last_ckpt, weights_only=True)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert strip(a.read_metrics()) == strip(b.read_metrics())


# ----------------------------------------------------------------------------- group signals


@pytest.fixture(scope="module")
def clean_run(synth_small, tmp_path_factory) -> TrialDir:
    """The uninterrupted reference run (2 epochs x 6 steps, DataLoader workers)."""
    tmp = tmp_path_factory.mktemp("clean")
    args = ["train", "--config", "/dev/null", *tiny_overrides(synth_small, tmp / "runs")]
    proc = cli([*args, "data.num_workers=2"], tmp)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return the_trial(tmp / "runs")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_group_signal_with_workers_interrupts_and_resumes_exactly(
    signum, clean_run, synth_small, tmp_path
):
    """`timeout`/`scancel`/Ctrl-C signal every process of the group, workers included: the
    trial ends interrupted with last.pt at the current step, and resumes to the same result."""
    args = [
        "train",
        "--config",
        "/dev/null",
        *tiny_overrides(synth_small, tmp_path / "runs"),
        "data.num_workers=2",
        "train.log_every=1",
    ]
    proc = cli(args, tmp_path, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "] 3/6 " in line and "epoch 1/2" in line:  # mid-epoch, workers busy prefetching
            os.killpg(proc.pid, signum)
            break
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 128 + signum, out
    assert "is killed by signal" not in out and "Traceback" not in out, out
    trial = the_trial(tmp_path / "runs")
    status = trial.status()
    assert status["state"] == "interrupted", status
    name = signal.Signals(signum).name
    assert status["error"].startswith(f"{name} received: saved epoch 1 step ")
    state = torch.load(trial.last_ckpt, weights_only=True)["state"]
    assert state["epoch"] == 0 and 3 <= state["step_in_epoch"] < 6

    resumed = cli(args, tmp_path, start_new_session=True)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming from" in out
    assert_same_run(clean_run, trial)


# ----------------------------------------------------------------------------- kills between writes


def test_kill_between_records_and_last_pt_keeps_history_exact(synth_small, tmp_path, monkeypatch):
    """A kill after epoch 2's records but before its last.pt: the resumed run holds each
    (epoch, split) once in metrics.jsonl and MLflow, best.pt agrees with last.pt, and the
    killed writer's temporary files are gone."""
    import mlflow

    from bilma.training import trainer as train_mod

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        tiny_overrides(
            synth_small,
            tmp_path / "runs",
            "train.epochs=3",
            "tracking.enabled=true",
            f"tracking.uri={uri}",
            "tracking.study=kills",
        ),
    )

    class Killed(BaseException):
        pass

    real_save_last = train_mod.Trainer._save_last

    def save_last(self):
        if self.state.epoch == 2 and self.state.step_in_epoch == 0:
            raise Killed  # as SIGKILL would: records of epoch 2 are written, last.pt is not
        real_save_last(self)

    monkeypatch.setattr(train_mod.Trainer, "_save_last", save_last)
    with pytest.raises(Killed):
        train_mod.train(cfg, progress=False)
    trial = TrialDir.for_config(cfg)
    assert [(r["epoch"], r["split"]) for r in trial.read_metrics()][-2:] == [
        (2, "train"),
        (2, "val"),
    ]
    last = torch.load(trial.last_ckpt, weights_only=True)
    best = torch.load(trial.best_ckpt, weights_only=True)
    assert last["state"]["epoch"] == 1 and best["epoch"] == last["state"]["best"]["epoch"] == 1
    stale = trial.ckpt_dir / ".last.pt.4194000.deadbeef.tmp"  # a killed writer's (pid gone)
    stale.write_bytes(b"torn")

    monkeypatch.setattr(train_mod.Trainer, "_save_last", real_save_last)
    result = train_mod.train(cfg, progress=False)
    keys = [(r["epoch"], r["split"]) for r in trial.read_metrics()]
    assert keys == [(e, s) for e in (1, 2, 3) for s in ("train", "val")]
    assert not stale.exists() and not trial.best_candidate.exists()
    last = torch.load(trial.last_ckpt, weights_only=True)
    best = torch.load(trial.best_ckpt, weights_only=True)
    assert best["epoch"] == last["state"]["best"]["epoch"] == result["selection"]["epoch"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kills").experiment_id])
    for key in ("val/R1", "train/loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3]


# A training run whose background write of epoch 2's last.pt stops half-way (then is killed).
SLOW_SECOND_SAVE = """
import sys, threading, time, torch
real = torch.save
def save(obj, f, *args, **kw):
    state = obj.get("state") if isinstance(obj, dict) else None
    if state and state["epoch"] == 2 and threading.current_thread() is not threading.main_thread():
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        print("WRITING last.pt of epoch 2 in the background", flush=True)
        time.sleep(600)
    return real(obj, f, *args, **kw)
torch.save = save
from bilma.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_a_background_save_keeps_the_previous_last_pt(
    clean_run, synth_small, tmp_path
):
    """SIGKILL while last.pt of the last epoch is half-written by the background thread:
    the previous last.pt is intact and loadable, and the same command resumes from it to
    the clean run's result."""
    from bilma.training import checkpoint

    args = [
        "train",
        "--config",
        "/dev/null",
        *tiny_overrides(synth_small, tmp_path / "runs"),
        "data.num_workers=2",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SECOND_SAVE, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("WRITING last.pt of epoch 2"):
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    trial = the_trial(tmp_path / "runs")
    (torn,) = trial.ckpt_dir.glob(".last.pt.*.tmp")  # the half-written one
    assert torn.read_bytes().startswith(b"PK")
    last = checkpoint.load(trial.last_ckpt)  # the previous one, whole
    assert last["state"]["epoch"] == 1 and last["state"]["step_in_epoch"] == 0
    assert checkpoint.load(trial.best_ckpt)["epoch"] == last["state"]["best"]["epoch"]

    resumed = cli(args, tmp_path, start_new_session=True)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming from" in out and "removed 1 temporary file(s)" in out
    assert not torn.exists()
    assert_same_run(clean_run, trial)


def test_a_stop_signal_waits_for_the_save_in_flight(synth_small, tmp_path, monkeypatch):
    """SIGTERM arrives while epoch 1's last.pt is still being written in the background:
    the trainer finishes the step, lets that write end, then writes its own last.pt, and
    only then stops (nothing lost, nothing torn, the two writes in order)."""
    import threading

    from bilma.errors import Interrupted
    from bilma.training import checkpoint
    from bilma.training.trainer import train

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=3"))
    writes = []
    real = checkpoint.write

    def write(path, content):
        state = content.get("state")
        if path.name == "last.pt" and state["epoch"] == 1 and not state["step_in_epoch"]:
            assert threading.current_thread() is not threading.main_thread()
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer goes on meanwhile
            time.sleep(1.0)
        real(path, content)
        if state is not None:
            writes.append((state["epoch"], state["step_in_epoch"]))

    monkeypatch.setattr(checkpoint, "write", write)
    with pytest.raises(Interrupted) as info:
        train(cfg, progress=False)
    assert info.value.signum == signal.SIGTERM
    # epoch 1's save completed, then the stop's own save (one step into epoch 2)
    assert writes == [(1, 0), (1, 1)]
    trial = TrialDir.for_config(cfg)
    state = torch.load(trial.last_ckpt, weights_only=True)["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    assert trial.status()["state"] == "interrupted"
    assert torch.load(trial.best_ckpt, weights_only=True)["epoch"] == 1
    assert not list(trial.ckpt_dir.glob(".*.tmp"))


def test_a_leftover_best_candidate_is_promoted_or_dropped(tmp_path):
    from bilma.training.checkpoint import settle_best

    best, cand = tmp_path / "best.pt", tmp_path / "best.next.pt"
    torch.save({"epoch": 1}, best)
    torch.save({"epoch": 2}, cand)
    settle_best(cand, best, best_epoch=1)  # killed before last.pt named epoch 2: drop it
    assert not cand.exists() and torch.load(best, weights_only=True)["epoch"] == 1
    torch.save({"epoch": 2}, cand)
    settle_best(cand, best, best_epoch=2)  # killed after last.pt, before the rename
    assert not cand.exists() and torch.load(best, weights_only=True)["epoch"] == 2


def test_truncate_metrics_keeps_committed_epochs(tmp_path):
    trial = TrialDir(tmp_path / "t")
    for e in (1, 2, 3):
        trial.append_metrics({"epoch": e, "split": "train", "loss": 1.0 / e})
    with open(trial.metrics_path, "ab") as f:
        f.write(b'{"epoch": 3, "split": "va')  # torn by a kill
    assert trial.truncate_metrics(2) == 2
    assert [r["epoch"] for r in trial.read_metrics()] == [1, 2]
    assert trial.truncate_metrics(2) == 0
    assert not list(trial.path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs (needs mount privileges; tests run as root here)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the disk of `folder`, then free `leave` bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    with open(filler, "ab") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_is_one_line_and_the_relaunch_resumes(synth_small, tmp_path, small_disk):
    from bilma.training.checkpoint import DiskFull
    from bilma.training.trainer import train

    cfg = load_config(None, tiny_overrides(synth_small, small_disk / "runs"))
    filler: list[Path] = []

    def on_eval(record, trial):
        if record["epoch"] == 1:  # epoch 1 is committed; the disk fills up now
            filler.append(fill(small_disk, leave=256 * 1024))

    with pytest.raises(DiskFull) as info:
        train(cfg, progress=False, on_eval=on_eval)
    trial = TrialDir.for_config(cfg)
    msg = str(info.value)
    assert msg.startswith("disk full: cannot write ") and f"in {trial.ckpt_dir}: it needs" in msg
    assert "MB free now" in msg and "run the same command to resume" in msg
    status = trial.status()
    assert status["state"] == "failed" and status["error"] == f"DiskFull: {msg}"
    assert torch.load(trial.last_ckpt, weights_only=True)["state"]["epoch"] == 1  # intact
    assert not list(trial.ckpt_dir.glob(".*.tmp"))

    filler[0].unlink()
    result = train(cfg, progress=False)
    assert result["epochs"] == 2
    keys = [(r["epoch"], r["split"]) for r in trial.read_metrics()]
    assert keys == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]


def test_a_truncated_last_pt_is_set_aside_and_the_next_run_restarts(synth_small, tmp_path):
    from bilma.data.records import DataError
    from bilma.training.trainer import train

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs"))

    def crash(record, trial):
        if record["epoch"] == 1:  # epoch 1 is committed to last.pt; then the node dies
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        train(cfg, progress=False, on_eval=crash)
    trial = TrialDir.for_config(cfg)
    data = trial.last_ckpt.read_bytes()
    trial.last_ckpt.write_bytes(data[: len(data) // 3])  # an interrupted rsync of the runs folder

    with pytest.raises(DataError) as info:
        train(cfg, progress=False)
    assert str(info.value) == (
        f"{trial.last_ckpt} cannot be resumed from (a truncated or damaged PyTorch file: copy "
        "it again); it is kept as last.pt.damaged: run the same command again to train this "
        f"trial from epoch 1, or put an intact copy back at {trial.last_ckpt} to resume"
    )
    assert trial.status()["state"] == "failed"
    aside = trial.ckpt_dir / "last.pt.damaged"
    assert aside.read_bytes() == data[: len(data) // 3]  # kept as it was, for a look

    result = train(cfg, progress=False)  # the same command again: from epoch 1
    assert result["epochs"] == 2 and trial.status()["state"] == "done"
    keys = [(r["epoch"], r["split"]) for r in trial.read_metrics()]
    assert keys == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert torch.load(trial.last_ckpt, weights_only=True)["state"]["epoch"] == 2


def test_a_read_only_runs_folder(synth_small, read_only):
    """A colleague's runs, an NFS snapshot: a done trial is reported without writing a byte;
    a trial to train is one line naming the folder (it was an OSError traceback)."""
    from bilma.training.trainer import train

    src, view = read_only
    done = train(load_config(None, tiny_overrides(synth_small, src / "runs", "train.epochs=1")))
    cfg = load_config(None, tiny_overrides(synth_small, view / "runs", "train.epochs=1"))
    assert train(cfg, progress=False) == done  # no lock file, no status write
    new = tiny_overrides(synth_small, view / "runs", "train.epochs=1", "train.seed=5")
    proc = cli(["train", "--config", "/dev/null", *new], view.parent)
    out, _ = proc.communicate(timeout=300)
    trial = TrialDir.for_config(load_config(None, new))
    assert proc.returncode == 1, out
    assert out.strip().splitlines()[-1] == (
        f"error: cannot write {trial.path} (read-only file system); make its folder writable "
        "or choose another path (paths.runs=<folder> for trials, --out for outputs)"
    )
    assert "Traceback" not in out


def test_disk_full_at_start_is_one_line(synth_small, tmp_path, small_disk):
    fill(small_disk, leave=0)
    args = ["train", "--config", "/dev/null", *tiny_overrides(synth_small, small_disk / "runs")]
    proc = cli(args, tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith(f"error: disk full: cannot write in {small_disk}/runs")


# ----------------------------------------------------------------------------- MLflow down


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_warnings(text: str, uri: str) -> list[str]:
    return [ln for ln in text.splitlines() if f"MLflow at {uri}" in ln]


def test_train_cli_with_no_server_trains_warns_once_and_sync_mirrors_later(synth_small, tmp_path):
    """An http tracking URI with nothing listening: the trial trains to the end, one warning
    line names the URI and the fix, and `sync` mirrors the trial afterwards."""
    from bilma.tracking.sync import sync

    uri = f"http://127.0.0.1:{free_port()}"
    runs = tmp_path / "runs"
    args = [
        "train",
        "--config",
        "/dev/null",
        *tiny_overrides(synth_small, runs, "train.epochs=1", "tracking.study=down"),
        "tracking.enabled=true",
        f"tracking.uri={uri}",
    ]
    proc = cli(args, tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    (line,) = mlflow_warnings(out, uri)
    assert "python -m bilma sync" in line and "Traceback" not in out
    trial = the_trial(runs)
    assert trial.status()["state"] == "done" and trial.read_result()["epochs"] == 1
    assert trial.last_ckpt.exists() and trial.best_ckpt.exists()

    store = f"sqlite:///{tmp_path}/later.db"
    assert sync(runs, store)["runs_created"] == 1
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("down").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/R1")] == [1]


@pytest.mark.parametrize("kind", ["under_a_file", "locked"])
def test_train_with_an_unusable_sqlite_store(kind, synth_small, tmp_path, monkeypatch, caplog):
    """A SQLite store that cannot be created (its folder would be under a regular file: root
    writes read-only folders, so that is the honest unwritable case here) or that another
    connection holds locked in a write transaction: the trial trains and warns once."""
    from bilma.tracking.store import ensure_experiment
    from bilma.training.trainer import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lock = None
    if kind == "under_a_file":
        (tmp_path / "plain").write_text("a file, not a folder\n")
        uri = f"sqlite:///{tmp_path}/plain/mlflow.db"
    else:
        uri = f"sqlite:///{tmp_path}/locked.db"
        ensure_experiment(uri, "other")  # the store exists; its tables too
        lock = sqlite3.connect(tmp_path / "locked.db", isolation_level=None, timeout=0)
        lock.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    overrides = ("train.epochs=1", "tracking.enabled=true", f"tracking.uri={uri}")
    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", *overrides))
    try:
        t0 = time.monotonic()
        result = train(cfg, progress=False)
        took = time.monotonic() - t0
    finally:
        if lock is not None:
            lock.rollback()
            lock.close()
    trial = TrialDir.for_config(cfg)
    assert trial.status()["state"] == "done" and result == trial.read_result()
    lines = mlflow_warnings(caplog.text, uri)
    assert len(lines) == 1 and "python -m bilma sync" in lines[0], caplog.text
    assert took < 120


def test_a_relaunch_mirrors_where_the_current_command_says(synth_small, tmp_path, monkeypatch):
    """--retry-failed and relaunches: launch.json's tracking settings (the current command)
    win over the ones frozen in the trial's config.yaml."""
    import mlflow

    from bilma.config import dump_yaml
    from bilma.fileio import atomic_write_json
    from bilma.sweep.job import LAUNCH_FILE, TrialJob

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").write_text("x\n")
    old_uri = f"sqlite:///{tmp_path}/plain/old.db"  # where the first launch pointed: broken
    new_uri = f"sqlite:///{tmp_path}/new.db"
    overrides = ("train.epochs=1", "tracking.enabled=true", f"tracking.uri={old_uri}")
    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", *overrides))
    trial = TrialDir.for_config(cfg)
    trial.init(cfg)
    assert f"uri: {old_uri}" in dump_yaml(trial.read_config())
    launch = {"parent_run_id": None, "tracking": {"enabled": True, "uri": new_uri}}
    atomic_write_json(trial.path / LAUNCH_FILE, launch)
    TrialJob(trial.path)()
    client = mlflow.MlflowClient(tracking_uri=new_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["trial_id"] == trial.trial_id


@pytest.mark.slow
def test_debug_backend_with_no_server_finishes(synth_small, tmp_path):
    """The launcher: no parent run (one warning naming the URI and `sync`), trials train."""
    import yaml

    from bilma.config import parse_override

    uri = f"http://127.0.0.1:{free_port()}"
    overrides = tiny_overrides(
        synth_small, tmp_path / "runs", "train.epochs=1", "train.max_steps_per_epoch=2"
    )
    settings = dict(parse_override(o) for o in overrides)
    settings.update({"data.root": str(synth_small), "paths.runs": str(tmp_path / "runs")})
    settings.update({"tracking.enabled": True, "tracking.uri": uri})
    grid = {"study": "nodb", "seeds": [1], "set": settings, "variants": {"only": {}}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    repo = REPO
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(repo / "sweeps" / "launch.py"),
            "--grid",
            "g.yaml",
            "--backend",
            "debug",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert len(list((tmp_path / "runs" / "nodb").glob("*/result.json"))) == 1, out
    parent = [ln for ln in out.splitlines() if "without a parent run" in ln]
    assert len(parent) == 1 and uri in parent[0] and "python -m bilma sync" in parent[0], out
    assert "Traceback" not in out


def _train_then_damage_best(cfg) -> tuple[dict, TrialDir, bytes]:
    """A finished trial whose best.pt is then truncated and whose test is due again."""
    from bilma.training.trainer import train

    first = train(cfg, progress=False)
    trial = TrialDir.for_config(cfg)
    intact = trial.best_ckpt.read_bytes()
    trial.best_ckpt.write_bytes(intact[: len(intact) // 3])
    trial.result_path.unlink()  # the next run resumes from last.pt and tests again
    return first, trial, intact


def test_a_damaged_best_pt_of_an_earlier_epoch_says_what_is_lost(synth_small, tmp_path):
    from bilma.data.records import DataError
    from bilma.training.trainer import train

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs"))
    first, trial, intact = _train_then_damage_best(cfg)
    assert first["selection"]["epoch"] == 1  # of 2: its weights are in best.pt only
    with pytest.raises(DataError) as info:
        train(cfg, progress=False)
    assert str(info.value) == (
        f"{trial.best_ckpt} cannot be read (a truncated or damaged PyTorch file: copy it again), "
        "and the selected epoch 1's weights are nowhere else: put an intact copy back and run "
        f"the same command again, retrain the trial (move {trial.ckpt_dir} aside first), or "
        f"test its last epoch: python -m bilma eval --checkpoint {trial.last_ckpt}"
    )
    trial.best_ckpt.write_bytes(intact)  # the advice: an intact copy back, the same command
    assert train(cfg, progress=False)["metrics"] == first["metrics"]


def test_a_damaged_best_pt_of_the_last_epoch_is_tested_from_last_pt(synth_small, tmp_path):
    from bilma.training.trainer import train

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1"))
    first, trial, _ = _train_then_damage_best(cfg)
    assert first["selection"]["epoch"] == 1  # the last epoch: last.pt holds its weights
    assert train(cfg, progress=False)["metrics"] == first["metrics"]
