"""The trainer: `python -m bilma train --config FILE [key=value ...]`.

One run = one trial directory (`bilma.runs.trial_dir`). Starting a run whose directory holds
`ckpt/last.pt` resumes from it; one whose `result.json` exists reports it and does nothing,
and so does one stopped early on purpose (`TrialState.STOPPED`).
On SIGTERM, SIGUSR2 (SLURM's preemption and time-limit signals) or SIGINT (Ctrl-C), also when
sent to the whole process group with the DataLoader workers, the trainer finishes the current
step, saves `ckpt/last.pt` and exits with 128 + the signal number; the same command resumes.
metrics.jsonl holds exactly the epochs last.pt committed (a resume drops later records), and
best.pt always agrees with last.pt about the best epoch. last.pt is written by a background
thread from a host copy of the state taken at the epoch's end (one write in flight; the next
save, a stop signal and the end of training wait for it and raise its error), every epoch
or, with `train.checkpoint_every_minutes`, at most that often. A full disk ends the trial `TrialState.FAILED`
with one line naming the folder and the space needed; the previous checkpoint stays intact. In deterministic mode on CPU a resumed run ends with exactly the weights and metrics
of an uninterrupted one: data order and augmentation are functions of (seed, epoch, index),
MIM masks of (seed, step), and the checkpoint holds every optimizer and RNG state.

`train(cfg, on_eval=...)` calls `on_eval(record, trial)` on rank 0 after each evaluation has
been committed (record in metrics.jsonl and ckpt/last.pt saved); raising `StopTrial` there
ends the trial in `TrialState.STOPPED` (how a Ray Tune scheduler such as ASHA stops a trial).
"""

from __future__ import annotations

import logging
import math
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bilma.config import Config
from bilma.data.datasets import (
    EvalImages,
    TrainSet,
    ensure_synthetic,
    load_data,
    shutdown_workers,
    synth_attribute_table,
    train_loader,
)
from bilma.data.splits import SplitCount, counts_of, split_problems, synth_counts
from bilma.device import (
    Dist,
    amp_dtype,
    autocast_for,
    close_distributed,
    init_distributed,
    max_over_processes,
    pick_device,
)
from bilma.errors import DataError, Interrupted  # noqa: F401  (Interrupted importable from here too)
from bilma.evaluation.lookalike import groups_of_config
from bilma.evaluation.metrics import format_metrics
from bilma.evaluation.retrieval import evaluate, split_chance_r1
from bilma.fileio import remove_stale_tmp
from bilma.model.bilma import build_model, caption_length, mlm_capacity, trim_batch
from bilma.runs import retention
from bilma.runs.causes import cause_of_exception
from bilma.runs.lock import acquire_trial_lock, release_trial_lock
from bilma.runs.reuse import data_root_warning
from bilma.runs.schema import TrialState
from bilma.runs.trial_dir import TrialDir, make_result
from bilma.training import checkpoint
from bilma.training.optim import build_optimizer, lr_factor, match_layout
from bilma.training.progress import LossMeter, Progress
from bilma.training.seed import mim_generator, seed_everything
from bilma.training.signals import StopFlag
from bilma.training.sinks import FanOutSink, MlflowSink, TrialSink
from bilma.training.usage import UsageMeter, result_fields

log = logging.getLogger(__name__)

# on_eval(record, trial): the evaluation record just committed, and the trial's directory.
EvalCallback = Callable[[dict[str, Any], TrialDir], None]


class StopTrial(Exception):
    """Raised by an `on_eval` callback: end the trial now, in `TrialState.STOPPED` (not an error).

    A stop after the last epoch's evaluation is no early stop: the trial finishes as usual.
    """


# ----------------------------------------------------------------------------- the run


@dataclass
class State:
    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # {"epoch", "value", "metrics"}
    train_seconds: float = 0.0
    # running loss sums of the epoch in progress, so a resumed epoch reports the same means
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_count: int = 0
    usage: dict[str, Any] = field(default_factory=dict)  # UsageMeter.total() at the last commit


def train(
    cfg: Config,
    parent_run_id: str | None = None,
    progress: bool = True,
    on_eval: EvalCallback | None = None,
) -> dict[str, Any]:
    """Run (or resume, or report) the trial of `cfg`; returns its result.json content, or {}
    on a non-zero rank and for a trial stopped early (`TrialState.STOPPED`).

    Raises `Interrupted` after saving when a stop signal arrives. `on_eval(record, trial)`
    runs on rank 0 after each committed evaluation; it may raise `StopTrial`.
    """
    trial = TrialDir.for_config(cfg)
    if moved := data_root_warning(trial.config_path, cfg):  # data.root: not in the trial id
        log.warning(moved)
    if (done := trial.read_result()) is not None:  # final: no lock, no write (a read-only
        return _report_done(trial, done)  # folder, a colleague's runs) to say so
    if cfg.data.dataset == "synth" and not trial.path.exists():
        # Known from the config: refuse before anything is made. A folder a launcher prepared
        # gets the same check in `setup`, after the attempt starts, so the failure is recorded.
        _check_splits(synth_counts(cfg), cfg)
    acquire_trial_lock(trial.path)  # one process per trial, whoever started it (bilma/lock.py)
    try:
        return _train(cfg, trial, parent_run_id, progress, on_eval)
    finally:
        release_trial_lock(trial.path)


def _report_done(trial: TrialDir, done: dict[str, Any]) -> dict[str, Any]:
    log.info("trial %s is already done: %s", trial.path, format_metrics(done["metrics"]))
    return done


def _check_splits(counts: dict[str, SplitCount], cfg: Config, world: int = 1) -> None:
    """Raise DataError (one line) if the splits cannot train or rank a model."""
    problems = split_problems(counts, cfg, world)
    if problems:
        raise DataError(problems[0].line())


def _train(
    cfg: Config,
    trial: TrialDir,
    parent_run_id: str | None,
    progress: bool,
    on_eval: EvalCallback | None,
) -> dict[str, Any]:
    done = trial.read_result()
    if done is not None:  # finished by another process while this one waited for the lock
        return _report_done(trial, done)
    status = trial.status()
    if trial.state() is TrialState.STOPPED:
        log.info(
            "trial %s was stopped early after epoch %s; it is not trained again (remove the "
            "folder to start it over)",
            trial.path,
            status.get("stopped_epoch", "?"),
        )
        return {}
    d = init_distributed()
    device = pick_device(d)
    sinks = FanOutSink()
    if d.main:
        trial.init(cfg)
        stale = [p for folder in (trial.path, trial.ckpt_dir) for p in remove_stale_tmp(folder)]
        if stale:
            log.info("removed %d temporary file(s) a killed run left", len(stale))
        attempt = trial.start_attempt()
        trial.write_provenance()
        log.info("trial %s, attempt %d, on %s", trial.path, attempt, device)
        sinks.add(TrialSink(trial))

    trainer = Trainer(cfg, trial, d, device, sinks, on_eval=on_eval, progress=progress)
    try:
        trainer.setup()
        if d.main and cfg.tracking.enabled:
            sinks.add(MlflowSink.start(trial, cfg, parent_run_id))
        trainer.stop.install()  # after data loading: its helper processes keep default handlers
        return trainer.fit()
    except Interrupted as e:
        sinks.close(TrialState.INTERRUPTED, error=str(e))
        raise
    except StopTrial as e:
        epochs = trainer.state.epoch
        sinks.close(
            TrialState.STOPPED, stopped_epoch=epochs, stop_reason=str(e) or "on_eval stopped it"
        )
        if d.main:
            log.info("trial %s stopped early after epoch %d: %s", trial.path, epochs, e)
        return {}
    except BaseException as e:
        sinks.close(
            TrialState.FAILED,
            error=f"{type(e).__name__}: {e}".splitlines()[0],
            traceback=traceback.format_exc(),
            cause=cause_of_exception(e),  # out of memory, data, config, NCCL timeout, bug
        )
        raise
    finally:
        trainer.close()
        trainer.stop.restore()
        close_distributed(d)


class Trainer:
    """One trial's training recipe: the state lives on self, one method per phase.

    `setup()` builds data, model, optimizer and scaler (and resumes from ckpt/last.pt);
    `fit()` trains epoch by epoch (`_train_epoch`, `_step`, `_end_epoch`, `_evaluate`,
    `_save_last`) and returns `finish()`'s result. Rank 0 writes every record to `sinks`.
    """

    def __init__(
        self,
        cfg: Config,
        trial: TrialDir,
        d: Dist,
        device: torch.device,
        sinks: FanOutSink,
        on_eval: EvalCallback | None = None,
        progress: bool = True,
    ):
        self.cfg, self.trial, self.d, self.device = cfg, trial, d, device
        self.sinks, self.on_eval, self.progress = sinks, on_eval, progress
        self.stop = StopFlag()
        self.state = State()
        self.factor = 1.0  # learning-rate factor of the epoch in progress
        # Checkpoints are written on a background thread (one in flight) from a host copy.
        self.saver = checkpoint.BackgroundSaver()
        self._best_due = False  # a new best epoch whose best.pt candidate is not written yet
        self._saved_at = time.monotonic()  # of the last last.pt (train.checkpoint_every_minutes)
        self.usage = UsageMeter(device, d.world)  # GPU-hours etc., from this attempt's start

    # -- setup
    def setup(self) -> None:
        """Seed, data, model, optimizer, scaler; the state of ckpt/last.pt if there is one."""
        cfg, d = self.cfg, self.d
        seed_everything(cfg.train.seed + d.rank, cfg.train.deterministic)
        if cfg.data.dataset == "synth" and d.main:
            ensure_synthetic(cfg.data)  # one process generates, the others wait for it
        if d.world > 1:
            dist.barrier()
        self.data = data = load_data(cfg)
        self.train_set = TrainSet(data, cfg)
        table, attributes = None, ()
        if cfg.loss.attribute_weight > 0:  # the positive control's labels (synth only)
            table, attributes = synth_attribute_table(data)
        self.model = build_model(
            cfg, data.tokenizer.vocab_size, data.tokenizer.eot_id, data.num_train_ids, attributes
        )
        if table is not None:
            self.model.set_attribute_table(table)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        fp16 = amp_dtype(cfg, self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if self.trial.last_ckpt.exists():
            self._resume(self.trial.last_ckpt)
            log.info(
                "resuming from %s: epoch %d, step %d",
                self.trial.last_ckpt,
                self.state.epoch + 1,
                self.state.step_in_epoch,
            )
        if d.main:
            self._settle_after_kill()

    def _settle_after_kill(self) -> None:
        """Undo what a kill left past the committed last.pt: records of later epochs, and a
        best-checkpoint candidate that last.pt does not name."""
        trial, state = self.trial, self.state
        dropped = trial.truncate_metrics(state.epoch)
        if dropped:
            log.info(
                "dropped %d metrics record(s) past epoch %d (not in ckpt/last.pt)",
                dropped,
                state.epoch,
            )
        checkpoint.settle_best(trial.best_candidate, trial.best_ckpt, state.best.get("epoch"))

    def _resume(self, path: Path) -> None:
        try:
            ckpt = checkpoint.load(path, self.device)
        except checkpoint.UnreadableCheckpoint as e:
            raise self._damaged(path, e.reason) from None
        checkpoint.load_model_state(self.model, ckpt, path)
        self.optimizer.load_state_dict(match_layout(ckpt["optimizer"], self.optimizer, path))
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_state(ckpt["rng"])
        self.state = State(**ckpt["state"])
        self.usage.carry(self.state.usage)  # the attempts before this one

    def _load_best(self) -> None:
        """The selected epoch's weights into the model, for the test. A best.pt that cannot be
        read (a disk fault, a damaged copy) is only replaceable when it is the last epoch's:
        the model holds those weights already. Otherwise one line says what is lost and how to
        go on; nothing is moved (best.pt stays for a look, last.pt stays resumable)."""
        path, best_epoch = self.trial.best_ckpt, self.state.best.get("epoch")
        try:
            best = checkpoint.load(path, self.device)
        except checkpoint.UnreadableCheckpoint as e:
            if best_epoch == self.state.epoch:
                log.warning("%s cannot be read (%s): testing the same epoch's weights from "
                            "last.pt", path, e.reason)  # fmt: skip
                return
            last = self.trial.last_ckpt
            raise DataError(
                f"{path} cannot be read ({e.reason}), and the selected epoch {best_epoch}'s "
                "weights are nowhere else: put an intact copy back and run the same command "
                f"again, retrain the trial (move {last.parent} aside first), or test its last "
                f"epoch: python -m bilma eval --checkpoint {last}"
            ) from None
        checkpoint.load_model_state(self.model, best, path)

    def _damaged(self, path: Path, reason: str) -> DataError:
        """The error for a last.pt that cannot be resumed from (a truncated copy, a disk
        fault). It is set aside, so that running the command again restarts the trial instead
        of hitting the same wall (`--retry-failed` included); best.pt and the records stay
        until the new run replaces them."""
        where = path
        if self.d.main and path.exists():
            where = checkpoint.set_aside(path)
        return DataError(
            f"{path} cannot be resumed from ({reason}); it is kept as {where.name}: run the same "
            "command again to train this trial from epoch 1, or put an intact copy back at "
            f"{path} to resume"
        )

    def build_net(self) -> None:
        """The network the step runs: the model, its encoders and cross-modal modules compiled
        with `train.compile`, wrapped in DDP with several processes. Each step runs the same
        parts (a static graph: DDP skips its per-step search), and gradients live in DDP's
        buckets (no copy)."""
        if self.cfg.train.compile:
            self.model.compile_parts(self.cfg.train.length_bucket)
        self.net: torch.nn.Module = self.model
        if self.d.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                static_graph=True,
                gradient_as_bucket_view=True,
            )

    def _setup_loop(self) -> None:
        """The network (`build_net`), the loader and its sampler, steps per epoch."""
        cfg, d, data = self.cfg, self.d, self.data
        # Here, not in `setup`: the trial's MLflow run exists by now, so it records the failure.
        _check_splits(counts_of(data.records), cfg, d.world)
        self.build_net()
        self.loader, self.sampler = train_loader(
            self.train_set, cfg.train.batch_size, cfg.data.num_workers, d.rank, d.world
        )
        # Workers ship uint8; the float half of the augmentation runs here, on the device.
        self.augment = self.train_set.device_augment()
        self.gallery = EvalImages(
            data, cfg.data.image_size, cfg.eval.batch_size, cfg.data.num_workers
        )
        steps_full = len(self.sampler) // cfg.train.batch_size  # >= 1: `_check_splits`
        self.steps = min(steps_full, cfg.train.max_steps_per_epoch or steps_full)
        self.select_split = cfg.eval.select_split
        if not data.split(self.select_split)[0]:
            log.warning(
                "%s has no %s split: selecting checkpoints on test",
                cfg.data.dataset,
                self.select_split,
            )
            self.select_split = "test"
        if d.main:
            log.info(
                "training %s on %s: %d pairs, %d ids, %d steps/epoch x %d epochs, batch %d x "
                "%d process(es)",
                cfg.model.pretrained or cfg.model.name,
                cfg.data.dataset,
                len(self.train_set),
                data.num_train_ids,
                self.steps,
                cfg.train.epochs,
                cfg.train.batch_size,
                d.world,
            )

    # -- the loop
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, then `finish()`."""
        self._setup_loop()
        self.net.train()
        while self.state.epoch < self.cfg.train.epochs:
            bar = self._train_epoch()
            self._end_epoch(bar)
        return self.finish()

    def _train_epoch(self) -> Progress:
        """The remaining steps of the epoch in progress; raises `Interrupted` on a signal."""
        state = self.state
        bar = self._begin_epoch()
        t_epoch = time.perf_counter()
        it = iter(self.loader)
        self.stop.guard_sigchld()  # torch installs its SIGCHLD handler with the iterator
        while state.step_in_epoch < self.steps:
            try:
                batch = next(it)
            except RuntimeError as e:
                # The failed fetch comes before the step: the state is that of the last step.
                if self.stop.worker_died(e):
                    self._interrupt(bar, time.perf_counter() - t_epoch)
                raise
            self._step(batch, bar)
            if self._should_stop():
                self._interrupt(bar, time.perf_counter() - t_epoch)
        del it
        state.train_seconds += time.perf_counter() - t_epoch
        return bar

    def _begin_epoch(self) -> Progress:
        """The epoch's learning rate, data order and progress, its loss sums on the device."""
        cfg, state = self.cfg, self.state
        self.factor = lr_factor(state.epoch, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * self.factor
        self.sampler.set_epoch(state.epoch, start=state.step_in_epoch * cfg.train.batch_size)
        show = self.progress and self.d.main
        write = self.trial.write_progress if self.d.main else None
        bar = Progress(state.epoch, cfg.train.epochs, self.steps, cfg.train.log_every, show, write)
        bar.set_sums(state.loss_sums, state.loss_count)
        self.meter = LossMeter(state.loss_sums, state.loss_count, self.device)
        self.read_at = state.step_in_epoch  # the step of the last loss read
        return bar

    def _interrupt(self, bar: Progress, seconds: float) -> None:
        """Save ckpt/last.pt at the current step and raise `Interrupted`."""
        state = self.state
        state.train_seconds += seconds
        self._read_losses(bar)  # a non-finite loss fails here: no checkpoint of its weights
        state.loss_sums, state.loss_count = dict(bar.sums), bar.count
        if self.d.main:
            self._save_last()
            self.saver.wait()  # on disk before the process goes (the save in flight too)
        signum = self.stop.signum or signal.SIGTERM
        raise Interrupted(signum, state.epoch, state.step_in_epoch, self.trial.last_ckpt)

    def _prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The batch on the device, captions cut to their length bucket, with the MLM head's
        row count and the MIM masks' generator. Lengths and counts are read from the host's
        copy (no sync); the full pinned tensors are copied, then sliced on the device."""
        cfg = self.cfg
        length = caption_length(batch["caption_ids"], cfg.train.length_bucket)
        out: dict[str, Any] = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        out = trim_batch(out, keep_mlm=cfg.mlm.attend_padding, length=length)
        if "mlm_labels" in batch:
            labels = batch["mlm_labels"]
            labels = labels if cfg.mlm.attend_padding else labels[:, :length]
            out["mlm_capacity"] = mlm_capacity(labels)
        where = self.device if cfg.mim.masking == "patch" else torch.device("cpu")
        out["mim_generator"] = mim_generator(
            cfg.train.seed, self.state.global_step, self.d.rank, where
        )
        return out

    def _step(self, batch: dict[str, torch.Tensor], bar: Progress) -> None:
        """One optimizer step. Reads nothing from the device but the loss sums every
        `train.log_every` steps (`_read_losses`)."""
        cfg, state = self.cfg, self.state
        # On the device: captions cut to their bucket, then the float half of the augmentation.
        batch = self.augment(self._prepare(batch))
        with autocast_for(cfg, self.device):
            out = self.net(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        state.step_in_epoch += 1
        state.global_step += 1
        self.meter.add(out)
        if self._due():
            self._read_losses(bar)
        bar.update(state.step_in_epoch, None, len(batch["pids"]) * self.d.world)

    def _due(self) -> bool:
        """Whether this step reads from the device: every `train.log_every` steps and at the
        epoch's last."""
        step = self.state.step_in_epoch
        return step % self.cfg.train.log_every == 0 or step == self.steps

    def _read_losses(self, bar: Progress) -> None:
        """Read the epoch's loss sums (one sync) into `bar`; fail on a non-finite loss."""
        sums, count = self.meter.read()
        state = self.state
        if sums and not math.isfinite(sums["loss"]):
            raise FloatingPointError(
                f"loss is {sums['loss']} in epoch {state.epoch + 1}, steps "
                f"{self.read_at + 1}-{state.step_in_epoch}: lower optim.lr or set optim.grad_clip"
            )
        self.read_at = state.step_in_epoch
        bar.set_sums(sums, count)

    def _should_stop(self) -> bool:
        """Every process stops at the same step: the flag is shared with an all-reduce (a
        sync), with several processes only on the steps that read the losses (`_due`)."""
        if self.d.world > 1 and not self._due():
            return False
        self.stop.signum = max_over_processes(self.stop.signum, self.d)
        return bool(self.stop.signum)

    def _end_epoch(self, bar: Progress) -> None:
        """Records of the epoch (train, and evaluation when due), committed with last.pt."""
        cfg, state, d = self.cfg, self.state, self.d
        epoch = state.epoch + 1  # 1-based: the epoch just trained
        records: list[dict[str, Any]] = [
            {
                "epoch": epoch,
                "step": state.global_step,
                "split": "train",
                **bar.means(),
                "lr": cfg.optim.lr * self.factor,
                "samples_per_s": bar.rate,
            }
        ]
        due = epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs
        if d.main and due:
            self.trial.write_progress(bar.snapshot(self.steps, phase="eval"))
        try:
            evaluated = self._evaluate(epoch) if d.main and due else None
        except RuntimeError as e:  # its loader's workers died of a stop signal
            if self.stop.worker_died(e):
                self._interrupt(bar, 0.0)  # resumes with this evaluation
            raise
        if evaluated is not None:
            records.append(evaluated)
        state.epoch += 1
        state.step_in_epoch = 0
        state.loss_sums, state.loss_count = {}, 0
        if d.main:
            for record in records:
                self.sinks.log_record(record)
            if self._commit_due(evaluated):
                self._save_last()  # commits the epoch, and names the best one
            else:
                self._queue_saves(commit=False)  # a new best epoch's candidate only
        self._after_commit(evaluated)

    def _evaluate(self, epoch: int) -> dict[str, Any]:
        """Evaluate on the selection split; keep ckpt/best.pt. The record of it."""
        cfg, state = self.cfg, self.state
        metrics = evaluate(
            self.model, self.data, self.select_split, cfg, self.device, gallery=self.gallery
        )
        value = metrics[cfg.eval.select_metric]
        log.info("epoch %d %s: %s", epoch, self.select_split, format_metrics(metrics))
        if not state.best or value > state.best["value"]:
            state.best = {"epoch": epoch, "value": value, "metrics": metrics}
            self._best_due = True  # written with this epoch's last.pt (`_save_last`)
        return {"epoch": epoch, "step": state.global_step, "split": self.select_split, **metrics}

    def _after_commit(self, evaluated: dict[str, Any] | None) -> None:
        """Call on_eval with a committed evaluation; every process learns whether it stopped
        the trial (the all-reduce also keeps the processes in step, as a barrier did)."""
        request: StopTrial | None = None
        if evaluated is not None and self.on_eval is not None:
            self.saver.wait()  # on_eval sees the evaluation committed: last.pt on disk
            try:
                self.on_eval(evaluated, self.trial)
            except StopTrial as e:
                request = e
        stop = max_over_processes(int(request is not None), self.d)
        if not stop:
            return
        if self.state.epoch >= self.cfg.train.epochs:
            log.info("stop requested after the last epoch: finishing the trial as usual")
            return
        raise request or StopTrial("stopped on rank 0")

    def _commit_due(self, evaluated: dict[str, Any] | None) -> bool:
        """Whether this epoch's end writes last.pt: always, unless
        `train.checkpoint_every_minutes` is set and that time has not passed (the last epoch
        and an evaluation an `on_eval` callback will see are always committed)."""
        minutes = self.cfg.train.checkpoint_every_minutes
        return (
            minutes is None
            or time.monotonic() - self._saved_at >= 60 * minutes
            or self.state.epoch >= self.cfg.train.epochs
            or (evaluated is not None and self.on_eval is not None)
        )

    def _save_last(self) -> None:
        """Commit the state: ckpt/last.pt (and best.pt), written in the background."""
        self._queue_saves(commit=True)

    def _queue_saves(self, commit: bool) -> None:
        """Queue ckpt/last.pt (if `commit`) and a new best epoch's best.pt candidate, then
        best.pt's promotion, on the background writer. The state is copied now; the files
        are on disk after `self.saver.wait()` (the next save, `finish`, `close`)."""
        state, scaler, trial = self.state, self.scaler, self.trial
        weights = self.model.state_dict()  # one dict in both files: copied to the host once
        writes = []
        if self._best_due:
            best = state.best
            candidate = checkpoint.payload(
                self.model, self.cfg, epoch=best["epoch"], metrics=best["metrics"]
            )
            writes.append((trial.best_candidate, {**candidate, "model": weights}))
            self._best_due = False
        if commit:
            state.usage = self.usage.total()
            last = checkpoint.payload(
                self.model,
                self.cfg,
                optimizer=self.optimizer.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
                rng=checkpoint.rng_state(),
                state=state.__dict__.copy(),
                epoch=state.epoch,
                step=state.global_step,
            )
            writes.append((trial.last_ckpt, {**last, "model": weights}))
            self._saved_at = time.monotonic()
        if writes:
            # best.pt is replaced only after last.pt names its epoch (or at the next start)
            promote = partial(checkpoint.promote_best, trial.best_candidate, trial.best_ckpt)
            then = None
            if commit:  # and, with train.keep_checkpoints=every:N, an epoch's snapshot
                keep = self.cfg.train.keep_checkpoints
                then = retention.after_commit(
                    keep, trial.last_ckpt, state.epoch, state.step_in_epoch, promote
                )
            self.saver.submit(writes, then=then)

    # -- the end
    def close(self) -> None:
        """Let the checkpoint in flight reach the disk; stop the loaders' persistent workers
        (also on the way out of an error)."""
        self.saver.close()
        if hasattr(self, "loader"):
            shutdown_workers(self.loader)
            self.gallery.close()

    def finish(self) -> dict[str, Any]:
        """Test the best checkpoint, write the result, close the sinks (rank 0; others: {})."""
        if not self.d.main:
            return {}
        cfg, state, trial = self.cfg, self.state, self.trial
        self.saver.wait()  # last.pt and best.pt of the last epoch on disk (its error raised)
        self._load_best()
        epochs = cfg.train.epochs
        self.trial.write_progress({"phase": "test", "epoch": epochs, "epochs": epochs})
        groups = groups_of_config(cfg)  # look-alike metrics beside the usual ones (synth)
        test = evaluate(self.model, self.data, "test", cfg, self.device, groups, self.gallery)
        selection = {
            "split": self.select_split,
            "metric": cfg.eval.select_metric,
            "epoch": state.best["epoch"],
            "value": state.best["value"],
        }
        val = state.best["metrics"] if self.select_split == "val" else None
        result = make_result(
            cfg,
            test,
            selection,
            val,
            cfg.train.epochs,
            state.train_seconds,
            launch=self.trial.read_launch(),  # the sweep's row and grid point, if any
            chance_R1=split_chance_r1(self.data, "test"),
            usage=result_fields(
                self.usage.total(),
                state.train_seconds,
                state.global_step * cfg.train.batch_size * self.d.world,
            ),
        )
        self.sinks.log_result(result)
        self.sinks.close(TrialState.DONE)
        retention.apply(trial.path, cfg.train.keep_checkpoints)  # done: never resumed again
        log.info(
            "done: test %s (checkpoint of epoch %d, selected by %s %s)",
            format_metrics(test),
            selection["epoch"],
            self.select_split,
            cfg.eval.select_metric,
        )
        return result
