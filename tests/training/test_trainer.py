"""The trainer: a run finishes and reports, resumes exactly after SIGTERM, refuses to redo."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.runs.launch import Launch, write_launch
from bilma.runs.trial_dir import TrialDir
from bilma.training.optim import lr_factor, param_rates


def run_cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "bilma", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_irra_schedule_and_groups():
    cfg = load_config(None, ["train.epochs=60"])
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(4, cfg) == pytest.approx(0.1 * 0.2 + 0.8)
    assert lr_factor(5, cfg) == pytest.approx(1.0)
    assert lr_factor(59, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 54 / 55)))
    from bilma.model.bilma import build_model

    model = build_model(
        load_config(None, ["data.image_size=[64,32]", "model.embed_dim=64", "model.cross_heads=4"]),
        40,
        39,
        3,
    )
    lrs = {name: (lr, wd) for name, _, lr, wd in param_rates(model, cfg)}
    assert lrs["encoders.vision.encoder.layers.0.mlp.fc1.weight"] == (1e-5, 4e-5)
    assert lrs["encoders.vision.encoder.layers.0.mlp.fc1.bias"] == (2e-5, 0.0)
    assert lrs["mlm_cross.cross_attn.in_proj_weight"] == (5e-5, 4e-5)
    assert lrs["mlm_cross.cross_attn.in_proj_bias"] == (2e-5, 0.0)  # IRRA: bias rule wins
    assert lrs["classifier.weight"] == (5e-5, 4e-5)
    assert lrs["mlm_head.fc.bias"] == (5e-5, 0.0)  # heads: lr factor after the bias rule
    assert lrs["mim_head.fc.weight"] == (5e-5, 4e-5)


def test_kill_and_resume_is_exact(synth_small, tmp_path):
    """SIGTERM at a random step, then the same command: same weights and metrics as a clean run."""
    clean = run_cli(
        ["train", "--config", "/dev/null", *tiny_overrides(synth_small, tmp_path / "a")], tmp_path
    )
    out_clean, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, out_clean

    args = [
        "train",
        "--config",
        "/dev/null",
        *tiny_overrides(synth_small, tmp_path / "b"),
        "train.log_every=1",
    ]
    proc = run_cli(args, tmp_path)
    target = 2 + int(time.time()) % 7  # a step between 2 and 8 of 12 (epoch 1 or 2)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"] {(target - 1) % 6 + 1}/6 " in line and f"epoch {(target - 1) // 6 + 1}/2" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "SIGTERM received" in rest and "run the same command to resume" in rest
    trial_b = next((tmp_path / "b").glob("*/*"))
    assert TrialDir(trial_b).status()["state"] == "interrupted"
    assert not (trial_b / "result.json").exists()

    resumed = run_cli(args, tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming from" in out

    trial_a = next((tmp_path / "a").glob("*/*"))
    assert trial_a.name == trial_b.name  # same trial id: paths are not part of it
    ra = json.loads((trial_a / "result.json").read_text())
    rb = json.loads((trial_b / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"] and ra["selection"] == rb["selection"]
    assert ra["chance_R1"] == pytest.approx(100 / 3)  # synth_small's test split: 3 identities
    # the live view's progress.json: last written when the test split was evaluated
    progress = json.loads((trial_a / "progress.json").read_text())
    assert progress["phase"] == "test" and progress["epoch"] == progress["epochs"] == 2
    wa, wb = weights(trial_a / "ckpt" / "last.pt"), weights(trial_b / "ckpt" / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    # the per-epoch records agree too (losses and validation metrics)
    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in recs]

    assert strip(TrialDir(trial_a).read_metrics()) == strip(TrialDir(trial_b).read_metrics())
    assert TrialDir(trial_b).status()["attempts"] == 2

    # a finished trial is reported, not trained again
    again = run_cli(args, tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "already done" in out and "resuming" not in out


def test_eval_cli_matches_result(synth_small, tmp_path):
    from bilma.training.trainer import train

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1"))
    result = train(cfg, progress=False)
    ckpt = TrialDir.for_config(cfg).best_ckpt
    proc = run_cli(["eval", "--checkpoint", str(ckpt), "--split", "test"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"{result['metrics']['R1']:.2f}" in out and f"{result['metrics']['mAP']:.2f}" in out


def test_bad_config_is_one_line(tmp_path):
    proc = run_cli(["train", "--config", "/dev/null", "mim.mask_ratoi=0.3"], tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert (
        out.strip()
        == "error: command line: unknown key 'mim.mask_ratoi'; did you mean 'mim.mask_ratio'?"
    )


def test_distributed_two_cpu_processes(synth_small, tmp_path):
    """DistributedDataParallel over gloo with two processes started by torchrun."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "bilma",
        "train",
        "--config",
        "/dev/null",
        *tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "batch 8 x 2 process(es)" in out
    trial = next((tmp_path / "runs").glob("*/*"))
    result = json.loads((trial / "result.json").read_text())
    assert set(result["metrics"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    # each process trains on its own half: 6 steps of 8 per process cover 96 pairs
    train_records = [r for r in TrialDir(trial).read_metrics() if r["split"] == "train"]
    assert len(train_records) == 1 and train_records[0]["step"] == 6


def test_mlflow_shows_the_run(synth_small, tmp_path, monkeypatch):
    """Params, per-epoch metrics, final metrics and tags of a trained run in MLflow's store."""
    import mlflow

    from bilma.training.trainer import train

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        tiny_overrides(
            synth_small,
            tmp_path / "runs",
            "tracking.enabled=true",
            f"tracking.uri={uri}",
            "tracking.study=demo-study",
            "tracking.variant=BiLMa",
        ),
    )
    # What a sweep writes beside the config: the trial's row and grid point.
    point = {"mim.mask_ratio": 0.3, "mim.target": "semantic"}
    write_launch(TrialDir.for_config(cfg).path, Launch(variant_base="BiLMa", grid_point=point))
    result = train(cfg, progress=False)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("demo-study")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["study"] == "demo-study" and tags["variant"] == "BiLMa" and tags["seed"] == "1"
    assert tags["trial_id"] == TrialDir.for_config(cfg).trial_id and tags["dataset"] == "synth"
    assert run.data.params["mim.target"] == "semantic" and run.data.params["train.epochs"] == "2"
    val = client.get_metric_history(run.info.run_id, "val/R1")
    assert [m.step for m in val] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert run.data.metrics["test/R1"] == pytest.approx(result["metrics"]["R1"])
    assert tags["variant_base"] == "BiLMa"
    assert (tags["grid.mim.mask_ratio"], tags["grid.mim.target"]) == ("0.3", "semantic")
    assert result["variant_base"] == "BiLMa"
    assert result["grid_point"] == {"mim.mask_ratio": 0.3, "mim.target": "semantic"}


def test_on_eval_sees_committed_records_and_stop_trial_stops(synth_small, tmp_path, monkeypatch):
    """on_eval runs after each evaluation is on disk; StopTrial ends the trial as "stopped"."""
    import mlflow

    from bilma.training.trainer import StopTrial, train

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
            "tracking.study=asha",
        ),
    )
    seen = []

    def on_eval(record, trial):
        ckpt = torch.load(trial.last_ckpt, weights_only=True)
        on_disk = trial.read_metrics()
        seen.append((record["epoch"], record["split"], ckpt["state"]["epoch"], on_disk[-1]))
        if record["epoch"] == 2:
            raise StopTrial("ASHA: below the rung's cut-off")

    assert train(cfg, progress=False, on_eval=on_eval) == {}
    trial = TrialDir.for_config(cfg)
    # called after epochs 1 and 2, each time with the record already appended and last.pt saved
    assert [s[:3] for s in seen] == [(1, "val", 1), (2, "val", 2)]
    assert all(s[3]["split"] == "val" and s[3]["epoch"] == s[0] for s in seen)
    assert "time" in seen[0][3]
    status = trial.status()
    assert status["state"] == "stopped" and status["stopped_epoch"] == 2
    assert status["stop_reason"] == "ASHA: below the rung's cut-off"
    assert not trial.result_path.exists() and trial.is_finished()
    assert [r["epoch"] for r in trial.read_metrics()] == [1, 1, 2, 2]

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("asha").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["stopped_early"] == "true"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/R1")] == [1, 2]

    # Running it again does not train it again.
    assert train(cfg, progress=False) == {}
    assert trial.status()["attempts"] == 1
    assert len(trial.read_metrics()) == 4


def test_stop_trial_after_the_last_epoch_finishes(synth_small, tmp_path):
    from bilma.training.trainer import StopTrial, train

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1"))

    def on_eval(record, trial):
        raise StopTrial("too late")

    result = train(cfg, progress=False, on_eval=on_eval)
    trial = TrialDir.for_config(cfg)
    assert trial.status()["state"] == "done" and trial.read_result() == result
    assert result["selection"]["epoch"] == 1


def test_checkpoint_every_minutes_commits_less_often_and_keeps_best_consistent(
    synth_small, tmp_path, monkeypatch
):
    """train.checkpoint_every_minutes: last.pt only when that time has passed, and always at
    the last epoch; a new best epoch's best.pt candidate is still written when it happens,
    and best.pt agrees with last.pt at the end."""
    from bilma.training import trainer as train_mod

    cfg = load_config(
        None,
        tiny_overrides(
            synth_small, tmp_path / "runs", "train.epochs=3", "train.checkpoint_every_minutes=600"
        ),
    )
    commits, candidates = [], []
    real_save_last, real_write = train_mod.Trainer._save_last, train_mod.checkpoint.write

    def save_last(self):
        commits.append(self.state.epoch)
        real_save_last(self)

    def write(path, content):
        if path.name != "last.pt":
            candidates.append(content["epoch"])
        real_write(path, content)

    monkeypatch.setattr(train_mod.Trainer, "_save_last", save_last)
    monkeypatch.setattr(train_mod.checkpoint, "write", write)
    result = train_mod.train(cfg, progress=False)
    assert commits == [3]  # not after epochs 1 and 2 (600 minutes had not passed)
    assert candidates and candidates[0] == 1  # epoch 1 is always a new best
    trial = TrialDir.for_config(cfg)
    last = torch.load(trial.last_ckpt, weights_only=True)
    best = torch.load(trial.best_ckpt, weights_only=True)
    assert best["epoch"] == last["state"]["best"]["epoch"] == result["selection"]["epoch"]
    assert best["epoch"] == candidates[-1] and not trial.best_candidate.exists()

    # the default: every epoch
    commits.clear()
    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "every", "train.epochs=2"))
    train_mod.train(cfg, progress=False)
    assert commits == [1, 2]


# ----------------------------------------------------------------------------- the step


@pytest.fixture
def trainer(synth_small, tmp_path):
    """A Trainer set up as a run sets it up (tiny model, synth_small), before its first epoch:
    6 steps per epoch, the losses read every 3."""
    from bilma.device import Dist
    from bilma.training.sinks import FanOutSink
    from bilma.training.trainer import Trainer

    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs", "train.log_every=3"))
    t = Trainer(
        cfg, TrialDir.for_config(cfg), Dist(), torch.device("cpu"), FanOutSink(), progress=False
    )
    t.setup()
    t._setup_loop()
    return t


def test_the_step_reads_the_device_only_when_it_logs(trainer):
    """Syncs per step (counted as bilma.training.syncs counts them): none, but the one loss
    read every train.log_every steps and at the epoch's end. Before: 17 per step."""
    from bilma.training.syncs import SyncCounter

    bar = trainer._begin_epoch()
    syncs = []
    for batch in trainer.loader:
        with SyncCounter(optimizers=[trainer.optimizer], trace=True) as c:
            trainer._step(batch, bar)
        syncs.append(c.count)
        if trainer.state.step_in_epoch == trainer.steps:
            break
    assert syncs == [0, 0, 1, 0, 0, 1], c.where
    assert bar.count == 6 and set(bar.sums) == {"sdm", "id", "mlm", "mim", "loss"}


def test_the_stop_flag_is_shared_only_on_logging_steps_with_several_processes(trainer, monkeypatch):
    from bilma.device import Dist
    from bilma.training import trainer as trainer_mod

    calls = []
    monkeypatch.setattr(trainer_mod, "max_over_processes", lambda v, d: calls.append(v) or v)
    steps = trainer.steps
    for world, expected in ((1, steps), (2, 2)):  # steps 3 and 6 of 6
        trainer.d, calls[:] = Dist(0, world, 0), []
        for step in range(1, steps + 1):
            trainer.state.step_in_epoch = step
            assert not trainer._should_stop()
        assert len(calls) == expected


def test_a_non_finite_loss_fails_at_the_next_read_naming_the_steps(trainer):
    bar = trainer._begin_epoch()
    with torch.no_grad():
        trainer.model.classifier.weight.fill_(float("nan"))
    it = iter(trainer.loader)
    trainer._step(next(it), bar)
    trainer._step(next(it), bar)  # not read yet
    with pytest.raises(
        FloatingPointError, match=r"loss is nan in epoch 1, steps 1-3: lower optim.lr"
    ):
        trainer._step(next(it), bar)


@pytest.mark.slow  # inductor generates and compiles the tiny model's kernels: minutes on 2 cores
def test_compiled_training_matches_eager(synth_small, tmp_path):
    """`python -m bilma train ... train.compile=true` trains a tiny model, and its first
    epoch's loss equals the eager run's to 1e-3 (relative)."""
    loss = {}
    for mode in ("false", "true"):
        runs = tmp_path / mode
        args = ["train", "--config", "/dev/null"]
        args += tiny_overrides(synth_small, runs, "train.epochs=1", f"train.compile={mode}")
        proc = run_cli(args, tmp_path)
        out, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, out[-3000:]
        records = TrialDir(next(runs.glob("*/*"))).read_metrics()
        loss[mode] = next(r["loss"] for r in records if r["split"] == "train")
    assert loss["true"] == pytest.approx(loss["false"], rel=1e-3)


def test_last_pt_holds_one_optimizer_group_per_rate(trainer):
    """At most 8 groups in a last.pt (4 here: base, biases, x lr_factor, heads' biases)."""
    bar = trainer._begin_epoch()
    trainer._step(next(iter(trainer.loader)), bar)
    trainer.trial.init(trainer.cfg)
    trainer._save_last()
    trainer.saver.wait()  # written in the background
    saved = torch.load(trainer.trial.last_ckpt, weights_only=True)["optimizer"]
    assert len(saved["param_groups"]) == 4
    names = [n for g in saved["param_groups"] for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in trainer.model.named_parameters())
