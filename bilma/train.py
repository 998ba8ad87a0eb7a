"""The trainer: `python -m bilma train --config FILE [key=value ...]`.

One run = one trial directory (`bilma.tracking`). Starting a run whose directory holds
`ckpt/last.pt` resumes from it; one whose `result.json` exists reports it and does nothing.
On SIGTERM or SIGUSR2 (SLURM's preemption and time-limit signals) the trainer finishes the
current step, saves `ckpt/last.pt` and exits with 128 + the signal number; the same command
resumes. In deterministic mode on CPU a resumed run ends with exactly the weights and metrics
of an uninterrupted one: data order and augmentation are functions of (seed, epoch, index),
MIM masks of (seed, step), and the checkpoint holds every optimizer and RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bilma import checkpoint
from bilma.config import Config
from bilma.data.datasets import TrainSet, ensure_synthetic, load_data, train_loader
from bilma.evaluate import amp_dtype, autocast_for, evaluate
from bilma.metrics import format_metrics
from bilma.model.bilma import BiLMa, build_model
from bilma.tracking import MlflowMirror, TrialDir, ensure_experiment, make_result

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopTrial(Exception):
    """Raised by an `on_eval` callback to end the trial early (e.g. a scheduler's decision):
    the trial is recorded as "stopped" with its last metrics; no result.json is written."""


class Interrupted(Exception):
    """Training stopped by a signal after saving `ckpt/last.pt`."""

    def __init__(self, signum: int, epoch: int, step: int, path: Path):
        self.signum, self.epoch, self.step, self.path = signum, epoch, step, path
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: saved epoch {epoch + 1} step {step} to {path}; run the same "
            "command to resume"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _slurm_master(nodelist: str) -> str:
    """First host of a SLURM node list ('gpu[01-04],cpu7' -> 'gpu01')."""
    import subprocess

    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:  # expand the first range by hand when scontrol is not there
        prefix, rng = head.split("[", 1)
        return prefix + rng.rstrip("]").split(",")[0].split("-")[0]
    return head


def init_distributed() -> Dist:
    """From torchrun's variables, or SLURM's when srun started one process per task."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        d = Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        d = Dist(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        )
        env.setdefault("MASTER_ADDR", _slurm_master(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        return Dist()
    if d.world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=d.rank, world_size=d.world)
    return d


# ----------------------------------------------------------------------------- recipe


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def param_groups(model: BiLMa, cfg: Config) -> list[dict[str, Any]]:
    """IRRA's groups: new modules and heads at lr x lr_factor, biases at lr x bias_lr_factor
    without weight decay (bias rule applied after the cross-module rule, as in IRRA)."""
    o = cfg.optim
    new = model.new_module_names() | {"encoders.mask_token"}
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".")[0]
        is_new = top in new or name in new
        lr, wd = o.lr, o.weight_decay
        if is_new and "cross" in name:
            lr = o.lr * o.lr_factor
        if name.endswith("bias"):
            lr, wd = o.lr * o.bias_lr_factor, o.weight_decay_bias
        if is_new and "cross" not in name:  # classifier, heads, mask token
            lr = o.lr * o.lr_factor
        groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": name})
    return groups


def lr_factor(epoch: int, cfg: Config) -> float:
    """IRRA's per-epoch schedule: linear warm-up from warmup_factor, then cosine to 0."""
    o, total = cfg.optim, cfg.train.epochs
    if epoch < o.warmup_epochs:
        alpha = epoch / o.warmup_epochs
        return o.warmup_factor * (1 - alpha) + alpha
    if o.schedule == "constant" or total <= o.warmup_epochs:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / (total - o.warmup_epochs)))


def mim_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """MIM masks are a function of (seed, step, rank), so a resumed run draws the same ones."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 97 + rank)


# ----------------------------------------------------------------------------- progress


class Progress:
    """One line per `every` steps (rewritten in place on a terminal): loss parts, samples/s."""

    def __init__(self, epoch: int, epochs: int, steps: int, every: int, enabled: bool):
        self.epoch, self.epochs, self.steps, self.every = epoch, epochs, steps, every
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.samples = 0
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, step: int, parts: dict[str, float], batch: int) -> None:
        self.samples += batch
        self.count += 1
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        if self.enabled and (step % self.every == 0 or step == self.steps):
            end = "\r" if self.tty and step < self.steps else "\n"
            print(self.line(step), end=end, file=sys.stderr, flush=True)

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    @property
    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.t0, 1e-9)

    def line(self, step: int) -> str:
        m = self.means()
        parts = " ".join(f"{k} {v:.3f}" for k, v in m.items() if k != "loss")
        bar_len = 20
        done = int(bar_len * step / max(self.steps, 1))
        bar = "#" * done + "." * (bar_len - done)
        return (
            f"epoch {self.epoch + 1}/{self.epochs} [{bar}] {step}/{self.steps} "
            f"loss {m.get('loss', float('nan')):.3f} ({parts}) {self.rate:.0f} samples/s"
        )


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


class _StopFlag:
    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}
        self._owner = os.getpid()

    def install(self) -> None:
        for s in STOP_SIGNALS:
            # Outside the main thread (an in-process debug backend) there is no handler.
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._owner:
            # A forked helper process (not a DataLoader worker, which ignores these signals)
            # inherited this handler: behave as if it had none.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.signum:
            log.warning(
                "%s received: stopping after this step and saving", signal.Signals(signum).name
            )
        self.signum = signum


def train(
    cfg: Config,
    parent_run_id: str | None = None,
    progress: bool = True,
    on_eval: Callable[[dict[str, Any], TrialDir], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or report) the trial of `cfg`; returns its result.json content.

    `on_eval(record, trial)` is called on rank 0 after each evaluation record is committed
    (metrics.jsonl appended and ckpt/last.pt saved); raising `StopTrial` there ends the
    trial as "stopped" and returns {} (no result.json). Raises `Interrupted` after saving
    when a stop signal arrives.
    """
    trial = TrialDir.for_config(cfg)
    done = trial.read_result()
    if done is not None:
        log.info("trial %s is already done: %s", trial.path, format_metrics(done["metrics"]))
        return done

    d = init_distributed()
    device = _device(d)
    if d.main:
        trial.init(cfg)
        attempt = trial.start_attempt()
        trial.write_provenance()
        log.info("trial %s, attempt %d, on %s", trial.path, attempt, device)

    stop = _StopFlag()
    mirror = None
    try:
        seed_everything(cfg.train.seed + d.rank, cfg.train.deterministic)
        if cfg.data.dataset == "synth" and d.main:
            ensure_synthetic(cfg.data)  # one process generates, the others wait for it
        if d.world > 1:
            dist.barrier()
        data = load_data(cfg)
        train_set = TrainSet(data, cfg)
        model = build_model(
            cfg, data.tokenizer.vocab_size, data.tokenizer.eot_id, data.num_train_ids
        )
        model.to(device)
        optimizer = torch.optim.Adam(
            param_groups(model, cfg), betas=tuple(cfg.optim.betas), eps=cfg.optim.eps
        )
        for g in optimizer.param_groups:
            g["initial_lr"] = g["lr"]
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg, device) == torch.float16)
        state = State()
        if trial.last_ckpt.exists():
            state = _resume(trial.last_ckpt, model, optimizer, scaler, device)
            log.info(
                "resuming from %s: epoch %d, step %d",
                trial.last_ckpt,
                state.epoch + 1,
                state.step_in_epoch,
            )
        if d.main and cfg.tracking.enabled:
            ensure_experiment(cfg.tracking.uri, cfg.tracking.study)
            mirror = MlflowMirror(trial, cfg, parent_run_id)
            mirror.start()
        stop.install()  # after data loading: its helper processes keep default handlers
        result = _fit(
            cfg,
            trial,
            data,
            train_set,
            model,
            optimizer,
            scaler,
            state,
            d,
            device,
            stop,
            mirror,
            progress,
            on_eval,
        )
    except StopTrial as e:
        if d.main:
            trial.set_status("stopped", error=f"stopped early: {e}" if str(e) else "stopped early")
            if mirror is not None:
                mirror.set_tag("stopped_early", "true")
                mirror.finish("KILLED")
        return {}
    except Interrupted as e:
        if d.main:
            trial.set_status("interrupted", error=str(e))
            if mirror is not None:
                mirror.finish("KILLED")
        raise
    except BaseException as e:
        if d.main:
            import traceback

            trial.set_status(
                "failed",
                error=f"{type(e).__name__}: {e}".splitlines()[0],
                traceback=traceback.format_exc(),
            )
            if mirror is not None:
                mirror.finish("FAILED")
        raise
    finally:
        stop.restore()
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return result


def _device(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _resume(path: Path, model: BiLMa, optimizer, scaler, device) -> State:
    ckpt = checkpoint.load(path, device)
    checkpoint.load_model_state(model, ckpt, path)
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    checkpoint.set_rng_state(ckpt["rng"])
    s = ckpt["state"]
    return State(**s)


def _save_last(trial: TrialDir, model: BiLMa, cfg: Config, optimizer, scaler, state: State) -> None:
    checkpoint.save(
        trial.last_ckpt,
        model,
        cfg,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
        rng=checkpoint.rng_state(),
        state=state.__dict__.copy(),
        epoch=state.epoch,
        step=state.global_step,
    )


def _fit(
    cfg,
    trial,
    data,
    train_set,
    model,
    optimizer,
    scaler,
    state,
    d,
    device,
    stop,
    mirror,
    progress,
    on_eval=None,
):
    raw = model
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None
        )
    loader, sampler = train_loader(
        train_set, cfg.train.batch_size, cfg.data.num_workers, d.rank, d.world
    )
    steps_full = len(sampler) // cfg.train.batch_size
    steps = min(steps_full, cfg.train.max_steps_per_epoch or steps_full)
    if steps == 0:
        raise ValueError(
            f"train.batch_size = {cfg.train.batch_size} is larger than the {len(train_set)} training "
            "pairs per process; lower it"
        )
    select_split = cfg.eval.select_split
    if not data.split(select_split)[0]:
        log.warning(
            "%s has no %s split: selecting checkpoints on test", cfg.data.dataset, select_split
        )
        select_split = "test"
    if d.main:
        log.info(
            "training %s on %s: %d pairs, %d ids, %d steps/epoch x %d epochs, batch %d x %d process(es)",
            cfg.model.name if not cfg.model.pretrained else cfg.model.pretrained,
            cfg.data.dataset,
            len(train_set),
            data.num_train_ids,
            steps,
            cfg.train.epochs,
            cfg.train.batch_size,
            d.world,
        )
    model.train()
    while state.epoch < cfg.train.epochs:
        epoch = state.epoch
        factor = lr_factor(epoch, cfg)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        sampler.set_epoch(epoch, start=state.step_in_epoch * cfg.train.batch_size)
        bar = Progress(epoch, cfg.train.epochs, steps, cfg.train.log_every, progress and d.main)
        bar.sums, bar.count = dict(state.loss_sums), state.loss_count
        t_epoch = time.perf_counter()
        it = iter(loader)
        while state.step_in_epoch < steps:
            batch = next(it)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            batch["mim_generator"] = mim_generator(cfg.train.seed, state.global_step, d.rank)
            with autocast_for(cfg, device):
                out = model(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            state.step_in_epoch += 1
            state.global_step += 1
            parts = {k: float(v.detach()) for k, v in out.items()}
            if not math.isfinite(parts["loss"]):
                raise FloatingPointError(
                    f"loss is {parts['loss']} at epoch {epoch + 1} step {state.step_in_epoch}: lower "
                    "optim.lr or set optim.grad_clip"
                )
            bar.update(state.step_in_epoch, parts, len(batch["pids"]) * d.world)
            if _should_stop(stop, d):
                state.train_seconds += time.perf_counter() - t_epoch
                state.loss_sums, state.loss_count = dict(bar.sums), bar.count
                if d.main:
                    _save_last(trial, raw, cfg, optimizer, scaler, state)
                raise Interrupted(
                    stop.signum or signal.SIGTERM, epoch, state.step_in_epoch, trial.last_ckpt
                )
        del it
        state.train_seconds += time.perf_counter() - t_epoch
        records: list[dict[str, Any]] = [
            {
                "epoch": epoch + 1,
                "step": state.global_step,
                "split": "train",
                **bar.means(),
                "lr": cfg.optim.lr * factor,
                "samples_per_s": bar.rate,
            }
        ]
        if d.main and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs):
            metrics = evaluate(raw, data, select_split, cfg, device)
            records.append(
                {"epoch": epoch + 1, "step": state.global_step, "split": select_split, **metrics}
            )
            value = metrics[cfg.eval.select_metric]
            log.info("epoch %d %s: %s", epoch + 1, select_split, format_metrics(metrics))
            if not state.best or value > state.best["value"]:
                state.best = {"epoch": epoch + 1, "value": value, "metrics": metrics}
                checkpoint.save(trial.best_ckpt, raw, cfg, epoch=epoch + 1, metrics=metrics)
        state.epoch += 1
        state.step_in_epoch = 0
        state.loss_sums, state.loss_count = {}, 0
        if d.main:
            for record in records:
                trial.append_metrics(record)
                if mirror is not None:
                    mirror.log_record(record)
            _save_last(trial, raw, cfg, optimizer, scaler, state)
            if on_eval is not None and len(records) > 1:
                on_eval(records[-1], trial)  # may raise StopTrial
        if d.world > 1:
            dist.barrier()
    return _finish(cfg, trial, data, raw, state, select_split, device, d, mirror)


def _should_stop(stop: _StopFlag, d: Dist) -> bool:
    """Every process stops at the same step: the flag is shared with an all-reduce."""
    if d.world == 1:
        return bool(stop.signum)
    flag = torch.tensor([stop.signum], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    stop.signum = int(flag.item())
    return bool(stop.signum)


def _finish(cfg, trial, data, model, state, select_split, device, d, mirror) -> dict[str, Any]:
    if not d.main:
        return {}
    best = checkpoint.load(trial.best_ckpt, device)
    checkpoint.load_model_state(model, best, trial.best_ckpt)
    test = evaluate(model, data, "test", cfg, device)
    selection = {
        "split": select_split,
        "metric": cfg.eval.select_metric,
        "epoch": state.best["epoch"],
        "value": state.best["value"],
    }
    val = state.best["metrics"] if select_split == "val" else None
    result = make_result(cfg, test, selection, val, cfg.train.epochs, state.train_seconds)
    trial.write_result(result)
    trial.set_status("done")
    if mirror is not None:
        mirror.finish("FINISHED")
    log.info(
        "done: test %s (checkpoint of epoch %d, selected by %s %s)",
        format_metrics(test),
        selection["epoch"],
        select_split,
        cfg.eval.select_metric,
    )
    return result
