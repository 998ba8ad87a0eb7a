"""The Ray side of one trial: Tune's trainable (it trains a trial directory through
`bilma.training.trainer.train` with an `on_eval` that reports to Tune) and how a trial's end is written
into its directory and MLflow run. The driver (Tuner, callbacks) is `bilma.sweep.backends.ray`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from bilma.config import Config, apply_values
from bilma.runs.causes import end_fields
from bilma.runs.launch import Launch, write_launch
from bilma.runs.lock import trial_lock
from bilma.runs.schema import LAUNCH_FILE, TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.tracking.mirror import MlflowMirror

log = logging.getLogger(__name__)

POINTER = "trial.json"  # the one file of a Tune checkpoint
_DDP_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# ----------------------------------------------------------------------------- trial configs


def _short(value: Any) -> Any:
    """Sampled floats rounded to 4 significant digits: readable labels, reproducible ids."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def trial_config(base: Config, sampled: dict[str, Any], where: str = "search") -> Config:
    """`base` with the searcher's values; the variant label names them like a grid axis."""
    if not sampled:
        return base
    values = {k: _short(v) for k, v in sampled.items()}
    cfg = apply_values(base, values, where)
    label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())
    variant = f"{base.tracking.variant} {{{label}}}"
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, variant=variant))


def config_of(config: dict[str, Any], bases: list[Config]) -> Config:
    """The trial config of a Tune trial's `config` (its base's index and sampled values):
    what `run_trial` trains, and where the driver's callback finds its folder."""
    return trial_config(bases[config["base"]], config.get("space") or {})


# ----------------------------------------------------------------------------- the trainable


class Reporter:
    """The trainer's `on_eval`: one `tune.report` per evaluation record, with a checkpoint
    naming the trial directory and epoch. Ray ends a stopped trial by raising SystemExit in
    `tune.report`; that becomes the trainer's StopTrial.

    The last epoch's evaluation is reported only after the trainer has written result.json
    (`final`): ASHA stops every trial that reaches max_t, which must not cut the test
    evaluation of a trial that finished its epochs."""

    def __init__(self, cfg: Config, after_epoch: int = 0):
        self.metric = cfg.eval.select_metric
        self.last_epoch = cfg.train.epochs
        self.after = after_epoch  # records up to this epoch were reported before a restore

    def __call__(self, record: dict[str, Any], trial: TrialDir) -> None:
        from bilma.training.trainer import StopTrial

        epoch = int(record["epoch"])
        if epoch >= self.last_epoch:
            return  # see `final`
        try:
            self._report(record, trial)
        except SystemExit:
            raise StopTrial(f"by the scheduler after epoch {epoch}") from None

    def final(self, trial: TrialDir) -> None:
        """Report the last evaluation and the test metrics of a done trial."""
        result = trial.read_result()
        evals = [r for r in trial.read_metrics() if r.get("split") != "train"]
        if result is None or not evals:
            return
        test = {f"test/{k}": float(v) for k, v in result["metrics"].items()}
        with contextlib.suppress(SystemExit):  # a stop decision now has nothing to stop
            self._report(evals[-1], trial, test)

    def _report(self, record: dict[str, Any], trial: TrialDir, extra: dict | None = None) -> None:
        epoch = int(record["epoch"])
        if epoch <= self.after or self.metric not in record:
            return
        split = record.get("split")
        metrics = {
            f"{split}/{k}": float(v)
            for k, v in record.items()
            if isinstance(v, int | float) and k not in ("epoch", "step", "time")
        }
        metrics.update(extra or {})
        metrics.update(
            {"epoch": epoch, self.metric: float(record[self.metric]), "trial_dir": str(trial.path)}
        )
        with tempfile.TemporaryDirectory(prefix="bilma-tune-ckpt-") as tmp:
            pointer = {"trial_dir": str(trial.path), "epoch": epoch}
            (Path(tmp) / POINTER).write_text(json.dumps(pointer))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        self.after = epoch


def _checkpoint_epoch() -> int:
    """The epoch of the Tune checkpoint this trial was restored from (0: a fresh start)."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d, contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((Path(d) / POINTER).read_text())["epoch"])
    return 0


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()


def run_trial(
    config: dict[str, Any],
    bases: list[Config],
    parent: str | None,
    launches: list[Launch] | None = None,
) -> None:
    """Tune's trainable: train (or resume, or replay) one trial directory."""
    from bilma.training.trainer import StopTrial, train

    # One trial is one process: inside a SLURM allocation the worker inherits the Ray node's
    # task variables, which would make the trainer start DDP across the job's tasks.
    for key in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NPROCS", *_DDP_VARS):
        os.environ.pop(key, None)
    cfg = config_of(config, bases)
    trial = TrialDir.for_config(cfg)
    # One process trains a directory at a time (two samples of one config, a worker of a
    # killed driver still exiting): the second waits, then finds the trial done or resumes.
    with trial_lock(trial.path, wait_s=math.inf), _log_to(trial.path / "ray.log"):
        trial.init(cfg)
        if not (trial.path / LAUNCH_FILE).exists():  # a sampled trial: prepare() never saw it
            base = launches[config["base"]] if launches else Launch(study=cfg.tracking.study)
            write_launch(trial.path, sampled_launch(base, cfg, parent))
        # A trial a scheduler stopped stays stopped, like a done one: a relaunch (even one
        # whose driver died before Tune saved that decision) only reports its evaluations.
        stopped = trial.state() is TrialState.STOPPED
        reporter = Reporter(cfg, _checkpoint_epoch())
        try:
            # Evaluations already on disk (a relaunch, a retried worker, a trial done by
            # another backend) are reported first, so the scheduler sees every epoch.
            for record in trial.read_metrics():
                if record.get("split") != "train":
                    reporter(record, trial)
            if stopped:
                log.info("%s was stopped early; not resumed", trial.path)
                return
            train(cfg, parent_run_id=parent, progress=False, on_eval=reporter)
            reporter.final(trial)
        except StopTrial as e:  # stopped during the replay: the trainer did not run
            record_stopped(trial, cfg, str(e))


# ----------------------------------------------------------------------------- the driver


def sampled_launch(base: Launch, cfg: Config, parent: str | None) -> Launch:
    """launch.json of a trial a searcher sampled: its base trial's (the same table row and
    grid point) under its own label and seed."""
    return dataclasses.replace(
        base, variant=cfg.tracking.variant, seed=cfg.train.seed, parent_run_id=parent
    )


def record_stopped(trial: TrialDir, cfg: Config, why: str) -> None:
    """State `TrialState.STOPPED` with the last metrics, MLflow run KILLED + stopped_early=true.
    Idempotent; a done trial (result.json) is left alone."""
    if trial.read_result() is not None:
        return
    if trial.status().get("state") != TrialState.STOPPED:
        trial.set_status(TrialState.STOPPED, error=f"stopped early {why}".strip())
    if cfg.tracking.enabled:
        try:
            mirror = MlflowMirror(trial, cfg)
            mirror.sync()  # run KILLED, last metrics logged
            import mlflow

            mlflow.MlflowClient(mirror.uri).set_tag(mirror.run_id, "stopped_early", "true")
        except Exception as e:  # MLflow down: `python -m bilma sync` later
            log.warning("MLflow: could not mark %s stopped (%s)", trial.trial_id, e)


def record_failed(trial: TrialDir, cfg: Config, why: str, cause: str | None = None) -> None:
    """A trial whose worker died without the trainer recording it; `cause` from Ray's error
    (`bilma.runs.causes.cause_of_ray_error`), None when Ray does not say."""
    if trial.state() in (TrialState.DONE, TrialState.FAILED, TrialState.STOPPED):
        return
    ended = end_fields(trial.status(), TrialState.FAILED.value, cause, why, source="ray")
    trial.set_status(TrialState.FAILED, error=why, **ended)
    if cfg.tracking.enabled:
        with contextlib.suppress(Exception):
            MlflowMirror(trial, cfg).sync()
