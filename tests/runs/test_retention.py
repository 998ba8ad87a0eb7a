"""Checkpoint retention (train.keep_checkpoints): what a trial keeps, never a resumable
trial's last.pt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support.tiny import tiny_overrides

from bilma.config import ConfigError, load_config, trial_id
from bilma.runs import retention
from bilma.runs.retention import Policy
from bilma.runs.trial_dir import TrialDir


def make_trial(tmp_path: Path, done: bool, snapshots: tuple[int, ...] = ()) -> TrialDir:
    trial = TrialDir(tmp_path / "t")
    trial.ckpt_dir.mkdir(parents=True)
    trial.last_ckpt.write_bytes(b"last")
    trial.best_ckpt.write_bytes(b"best")
    for epoch in snapshots:
        retention.snapshot_path(trial.ckpt_dir, epoch).write_bytes(b"snap")
    if done:
        trial.result_path.write_text("{}")
    return trial


def names(trial: TrialDir) -> set[str]:
    return {p.name for p in trial.ckpt_dir.iterdir()}


def test_the_values_and_a_bad_one():
    assert retention.parse("last_and_best") == Policy(keep_last=True)
    assert retention.parse("best") == Policy(keep_last=False)
    assert retention.parse("every:5") == Policy(keep_last=True, every=5)
    for bad in ("every:0", "every", "every:x", "last"):
        assert retention.problem(bad) is not None
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.keep_checkpoints=every-5"])
    assert str(e.value) == (
        "command line: train.keep_checkpoints = 'every-5': expected last_and_best, best or "
        "every:N (N >= 1 epochs), e.g. every:10"
    )


def test_the_key_is_not_part_of_the_trial_id():
    default = load_config(None, [])
    assert trial_id(load_config(None, ["train.keep_checkpoints=best"])) == trial_id(default)


def test_best_deletes_last_and_snapshots_of_a_done_trial_only(tmp_path):
    trial = make_trial(tmp_path, done=True, snapshots=(2, 4))
    removed = retention.apply(trial.path, "best")
    assert names(trial) == {"best.pt"}
    assert {p.name for p in removed} == {"last.pt", "epoch_0002.pt", "epoch_0004.pt"}


@pytest.mark.parametrize("value", ["last_and_best", "every:2"])
def test_the_other_policies_delete_nothing(tmp_path, value):
    trial = make_trial(tmp_path, done=True, snapshots=(2,))
    assert retention.apply(trial.path, value) == []
    assert names(trial) == {"last.pt", "best.pt", "epoch_0002.pt"}


def test_an_unfinished_trial_keeps_its_last_pt(tmp_path):
    trial = make_trial(tmp_path, done=False)
    assert retention.apply(trial.path, "best") == []
    assert trial.last_ckpt.read_bytes() == b"last"


def test_a_done_trial_without_best_pt_keeps_last_pt(tmp_path):
    trial = make_trial(tmp_path, done=True)
    trial.best_ckpt.unlink()
    assert retention.apply(trial.path, "best") == [] and trial.last_ckpt.exists()


def test_every_n_snapshots_an_epoch_end_as_a_hard_link(tmp_path):
    trial = make_trial(tmp_path, done=False)
    promoted = []
    then = retention.after_commit("every:2", trial.last_ckpt, 4, 0, lambda: promoted.append(1))
    then()
    snap = retention.snapshot_path(trial.ckpt_dir, 4)
    assert promoted == [1] and snap.name == "epoch_0004.pt"
    assert os.stat(snap).st_ino == os.stat(trial.last_ckpt).st_ino  # no copy written
    (trial.ckpt_dir / "new").write_bytes(b"epoch 5")
    os.replace(trial.ckpt_dir / "new", trial.last_ckpt)  # as the next save replaces last.pt
    assert snap.read_bytes() == b"last"
    marker = lambda: None  # noqa: E731
    # Not due: epoch 3, a mid-epoch save (a stop signal), another policy: `then` alone.
    assert retention.after_commit("every:2", trial.last_ckpt, 3, 0, marker) is marker
    assert retention.after_commit("every:2", trial.last_ckpt, 4, 2, marker) is marker
    assert retention.after_commit("best", trial.last_ckpt, 4, 0, marker) is marker


def test_footprint_of_each_policy():
    # (bytes kept once done, most bytes while training: best.next.pt beside best.pt)
    # for last.pt of 12 bytes and best.pt of 4
    assert retention.footprint("last_and_best", 10, 12, 4) == (16, 20)
    assert retention.footprint("best", 10, 12, 4) == (4, 20)
    # every:3 of 10 epochs: snapshots 3, 6, 9 on top of last and best
    assert retention.footprint("every:3", 10, 12, 4) == (16 + 36, 20 + 36)
    # every:5 of 10 epochs: epoch 10's snapshot is last.pt itself
    assert retention.footprint("every:5", 10, 12, 4) == (16 + 12, 20 + 12)


def test_a_trial_with_every_1_keeps_each_epoch(synth_small, tmp_path):
    from bilma.training import checkpoint
    from bilma.training.trainer import train

    cfg = load_config(
        None, tiny_overrides(synth_small, tmp_path / "runs", "train.keep_checkpoints=every:1")
    )
    train(cfg, progress=False)
    trial = TrialDir.for_config(cfg)
    assert names(trial) == {"last.pt", "best.pt", "epoch_0001.pt", "epoch_0002.pt"}
    first = torch.load(retention.snapshot_path(trial.ckpt_dir, 1), weights_only=True)
    assert first["state"]["epoch"] == 1 and first["epoch"] == 1
    checkpoint.load(retention.snapshot_path(trial.ckpt_dir, 1))  # a checkpoint like last.pt
