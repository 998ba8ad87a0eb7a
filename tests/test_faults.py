"""Reliability: signals to the whole process group, kills between writes, a full disk, an
MLflow store that is down. The trial directory must always be complete and resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from bilma.config import load_config
from bilma.trial import TrialDir

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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
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

    from bilma import train as train_mod

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


def test_a_leftover_best_candidate_is_promoted_or_dropped(tmp_path):
    from bilma.checkpoint import settle_best

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
    from bilma.checkpoint import DiskFull
    from bilma.train import train

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


def test_disk_full_at_start_is_one_line(synth_small, tmp_path, small_disk):
    fill(small_disk, leave=0)
    args = ["train", "--config", "/dev/null", *tiny_overrides(synth_small, small_disk / "runs")]
    proc = cli(args, tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith(f"error: disk full: cannot write in {small_disk}/runs")
