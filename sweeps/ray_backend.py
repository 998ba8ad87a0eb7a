"""Ray Tune backend: `python sweeps/launch.py --grid FILE --backend ray`.

Each Tune trial trains one trial directory through `bilma.train.train`, exactly as the local
and SLURM backends do (same ids, same MLflow child runs). The trainer knows no Ray: it gets an
`on_eval` callback that reports every evaluation to Tune with a small checkpoint (which epoch
of which trial directory; the weights stay in `ckpt/last.pt`), so a scheduler (ASHA) can stop
a trial and Tune can restart one whose worker died; the trainer then resumes from its own
checkpoint. A trial stopped early ends as state "stopped" with its last metrics, its MLflow run
KILLED with the tag stopped_early=true, whether the trainer or (when Ray killed the worker
first) this driver records it.

Tune's own files live in `runs/<study>/.tune/<experiment>/`; the experiment's name is a hash of
the trials, the search and the scheduler, so running the same command again restores it:
finished and stopped trials are not run again (their evaluations are only reported) and
unfinished ones resume.

Ray itself: a running cluster (--ray-address or $RAY_ADDRESS), else a local one bound to
127.0.0.1 with this machine's cores ($BILMA_RAY_NUM_CPUS to give it fewer) and a temporary
directory of its own, shut down at the end. cluster/ray.sbatch starts one across a SLURM
allocation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from bilma.config import Config, ConfigError, apply_values
from bilma.tracking import MlflowMirror, TrialDir, atomic_write_json
from sweeps.grid import Grid, GridError, Trial
from sweeps.job import LAUNCH_FILE, read_launch
from sweeps.search import Scheduler, Search, SearchError, check_optuna

log = logging.getLogger(__name__)

TUNE_DIR = ".tune"  # runs/<study>/.tune/: hidden, so find_trials never walks it
REPO_ROOT = Path(__file__).resolve().parents[1]
POINTER = "trial.json"  # the one file of a Tune checkpoint
_DDP_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class RayOptions:
    address: str | None = None  # a running cluster; None: $RAY_ADDRESS, else a local Ray
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_cpus: int | None = None  # local Ray only (default: every core)
    verbose: bool = False


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


def check_space(grid: Grid, base: Config) -> None:
    """Every bound and choice of `search.space` must make a valid config (found before Ray)."""
    for key, (dist, args) in grid.search.space.items():
        for value in args:
            try:
                apply_values(base, {key: value}, "x")
            except ConfigError as e:
                body = str(e).split(": ", 1)[-1]
                raise GridError(f"{grid.path}: search.space: {key} {dist} {args}: {body}") from None


def fingerprint(trials: list[Trial], search: Search, scheduler: Scheduler) -> str:
    text = json.dumps(
        [sorted(t.trial_id for t in trials), repr(search), repr(scheduler)], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:10]


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
        from bilma.train import StopTrial

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
def _trial_lock(trial: TrialDir) -> Iterator[None]:
    """One process trains a directory at a time (two samples of one config, a worker of a
    killed driver still exiting): the second waits, then finds the trial done or resumes."""
    trial.path.mkdir(parents=True, exist_ok=True)
    with open(trial.path / ".ray.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def run_trial(config: dict[str, Any], bases: list[Config], parent: str | None) -> None:
    """Tune's trainable: train (or resume, or replay) one trial directory."""
    from bilma.train import StopTrial, train

    # One trial is one process: inside a SLURM allocation the worker inherits the Ray node's
    # task variables, which would make the trainer start DDP across the job's tasks.
    for key in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NPROCS", *_DDP_VARS):
        os.environ.pop(key, None)
    cfg = trial_config(bases[config["base"]], config.get("space") or {})
    trial = TrialDir.for_config(cfg)
    with _trial_lock(trial), _log_to(trial.path / "ray.log"):
        trial.init(cfg)
        if not read_launch(trial.path):  # a sampled trial: prepare() never saw it
            atomic_write_json(
                trial.path / LAUNCH_FILE,
                {
                    "study": cfg.tracking.study,
                    "variant": cfg.tracking.variant,
                    "seed": cfg.train.seed,
                    "parent_run_id": parent,
                    "launched": time.time(),
                },
            )
        # A trial a scheduler stopped stays stopped, like a done one: a relaunch (even one
        # whose driver died before Tune saved that decision) only reports its evaluations.
        stopped = trial.status().get("state") == "stopped" and trial.read_result() is None
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


def record_stopped(trial: TrialDir, cfg: Config, why: str) -> None:
    """State "stopped" with the last metrics, MLflow run KILLED + stopped_early=true.
    Idempotent; a done trial (result.json) is left alone."""
    if trial.read_result() is not None:
        return
    if trial.status().get("state") != "stopped":
        trial.set_status("stopped", error=f"stopped early {why}".strip())
    if cfg.tracking.enabled:
        try:
            mirror = MlflowMirror(trial, cfg)
            mirror.sync()  # run KILLED, last metrics logged
            import mlflow

            mlflow.MlflowClient(mirror.uri).set_tag(mirror.run_id, "stopped_early", "true")
        except Exception as e:  # MLflow down: `python -m bilma sync` later
            log.warning("MLflow: could not mark %s stopped (%s)", trial.trial_id, e)


def record_failed(trial: TrialDir, cfg: Config, why: str) -> None:
    """A trial whose worker died without the trainer recording it."""
    if trial.read_result() is not None or trial.status().get("state") in ("failed", "stopped"):
        return
    trial.set_status("failed", error=why)
    if cfg.tracking.enabled:
        with contextlib.suppress(Exception):
            MlflowMirror(trial, cfg).sync()


class Recorder(tune.Callback):
    """Progress lines, and the end of each trial written into its directory."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    @staticmethod
    def _dir(trial) -> TrialDir | None:
        path = (trial.last_result or {}).get("trial_dir")
        return TrialDir(path) if path else None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        print(
            f"{time.strftime('%H:%M:%S')} {_name(result['trial_dir'])}: epoch {result['epoch']} "
            f"{self.metric} {result[self.metric]:.2f}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        d = self._dir(trial)
        if d is None:
            return
        result = d.read_result()
        if result is not None:
            m = result["metrics"]
            print(
                f"  finished {_name(d.path)}: test R1 {m['R1']:.2f} mAP {m['mAP']:.2f}", flush=True
            )
            return
        epoch = (trial.last_result or {}).get("epoch", "?")
        record_stopped(d, d.read_config(), f"by the scheduler after epoch {epoch}")
        print(f"  stopped early {_name(d.path)} after epoch {epoch}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        d = self._dir(trial)
        if d is None:
            print(f"  FAILED Ray trial {trial.trial_id} before its first evaluation", flush=True)
            return
        record_failed(d, d.read_config(), f"Ray trial {trial.trial_id} failed (worker died?)")
        print(f"  FAILED {_name(d.path)}: {d.status().get('error', '')}", flush=True)


def _name(path: str | Path) -> str:
    launch = read_launch(Path(path))
    return f"{launch.get('variant', Path(path).name)} seed={launch.get('seed', '?')}"


def _distribution(dist: str, args: list[Any]):
    if dist == "choice":
        return tune.choice(args)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[dist](
        *args
    )


def tune_setup(grid: Grid, n_bases: int) -> tuple[dict[str, Any], Any, int]:
    """(param_space, search_alg, num_samples) for the grid's `search:`."""
    search: Search = grid.search
    space = {k: _distribution(d, a) for k, (d, a) in search.space.items()}
    if search.method == "grid":
        return {"base": tune.grid_search(list(range(n_bases)))}, None, 1
    if search.method == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        alg = BasicVariantGenerator(random_state=search.seed)
        # Tune's grid x samples: num_samples draws of the space for each trial of the grid.
        return (
            {"base": tune.grid_search(list(range(n_bases))), "space": space},
            alg,
            search.num_samples,
        )
    check_optuna()
    from ray.tune.search.optuna import OptunaSearch

    base = tune.choice(list(range(n_bases))) if n_bases > 1 else 0
    return {"base": base, "space": space}, OptunaSearch(seed=search.seed), search.num_samples


def make_scheduler(grid: Grid, trials: list[Trial]):
    sched: Scheduler = grid.scheduler
    if sched.name == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = sched.max_t or max(t.config.train.epochs for t in trials)
    return ASHAScheduler(
        time_attr="epoch",
        grace_period=sched.grace_period,
        reduction_factor=sched.reduction_factor,
        max_t=max_t,
    )


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator[str]:
    """Connect to a running Ray, or start a local one on 127.0.0.1 (shut down at the end)."""
    import ray

    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    for key in ("HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=opts.verbose)
        try:
            yield f"the Ray cluster at {address}"
        finally:
            ray.shutdown()  # disconnects; the cluster keeps running
        return
    os.environ.pop("RAY_ADDRESS", None)  # set but empty: ray.init would look for a cluster
    os.environ.update(env)  # the local workers inherit this process's environment
    tmp = tempfile.mkdtemp(prefix="bilma-ray-")  # short: Ray's socket paths must stay < 108
    cpus = opts.num_cpus or int(os.environ.get("BILMA_RAY_NUM_CPUS") or 0) or os.cpu_count() or 1
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tmp,
        log_to_driver=opts.verbose,
    )
    try:
        yield f"a local Ray on 127.0.0.1 with {cpus} CPUs"
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def check(grid: Grid, trials: list[Trial]) -> str:
    """What can be found wrong before anything is written or started; the Tune metric."""
    if grid.search.method == "optuna":
        try:
            check_optuna()
        except SearchError as e:
            raise GridError(f"{grid.path}: {e}") from None
    check_space(grid, trials[0].config)
    metrics = {t.config.eval.select_metric for t in trials}
    if len(metrics) > 1:
        raise GridError(f"{grid.path}: trials select on different metrics ({metrics}); use one")
    return metrics.pop()


def options(args: Any) -> RayOptions:
    """From the launcher's flags; per-trial resources from --profile when it is not the
    default one (cpus_per_task, gpus_per_node: one trial per job in the SLURM backend)."""
    cpus, gpus = 1.0, 0.0
    if getattr(args, "profile", "default") != "default":
        from cluster.profiles import load_profile

        prof = load_profile(args.profile)
        cpus, gpus = float(prof.cpus_per_task), float(prof.gpus_per_node)
    return RayOptions(
        address=args.ray_address,
        cpus_per_trial=args.cpus_per_trial if args.cpus_per_trial is not None else cpus,
        gpus_per_trial=args.gpus_per_trial if args.gpus_per_trial is not None else gpus,
        verbose=bool(getattr(args, "verbose", False)),
    )


def run_ray(
    grid: Grid, trials: list[Trial], parent: str | None, opts: RayOptions, metric: str | None = None
) -> int:
    """Run the grid's trials on Ray Tune; 0 when every trial is done or stopped early."""
    metric = metric or check(grid, trials)
    cfg0 = trials[0].config
    # One checkpoint kept per trial forces an experiment snapshot at each report: wanted
    # (a relaunch restores the latest state), so Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    storage = (Path(cfg0.paths.runs) / grid.study / TUNE_DIR).resolve()
    name = f"tune-{fingerprint(trials, grid.search, grid.scheduler)}"
    with ray_session(opts) as where:
        print(f"Ray Tune on {where}; Tune's files in {storage / name}", flush=True)
        recorder = Recorder(metric)
        tuner = _tuner(grid, trials, parent, opts, storage, name, metric, recorder)
        results = tuner.fit()
    return _summary(results, recorder, metric)


def _tuner(grid, trials, parent, opts, storage: Path, name: str, metric: str, recorder):
    bases = [t.config for t in trials]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, bases=bases, parent=parent),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial},
    )
    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        print(f"restoring the Ray Tune experiment {name}", flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    param_space, alg, num_samples = tune_setup(grid, len(bases))
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            scheduler=make_scheduler(grid, trials),
            search_alg=alg,
            num_samples=num_samples,
            reuse_actors=False,  # a fresh process per trial: its own threads and state
        ),
        run_config=tune.RunConfig(
            storage_path=str(storage),
            name=name,
            callbacks=[recorder],
            verbose=1 if opts.verbose else 0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # A dead worker: Tune restarts the trial, the trainer resumes from ckpt/last.pt.
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )


def _summary(results, recorder, metric: str) -> int:
    counts = {"done": 0, "stopped": 0, "failed": 0, "other": 0}
    for r in results:
        path = (r.metrics or {}).get("trial_dir")
        state = _settle(TrialDir(path)) if path else None
        counts[state if state in counts else ("failed" if r.error else "other")] += 1
    print(
        f"Ray Tune: {counts['done']} done, {counts['stopped']} stopped early, "
        f"{counts['failed']} failed"
        + (f", {counts['other']} unfinished" if counts["other"] else ""),
        flush=True,
    )
    return 1 if counts["failed"] or counts["other"] else 0


def _settle(trial: TrialDir) -> str | None:
    """The trial's final state; its MLflow run brought up to date from the directory (a worker
    killed between result.json and ending its run would leave the run RUNNING)."""
    state = "done" if trial.read_result() is not None else trial.status().get("state")
    cfg = trial.read_config()
    if state in ("done", "stopped", "failed") and cfg.tracking.enabled:
        try:
            MlflowMirror(trial, cfg).sync()
        except Exception as e:  # MLflow down: the directory has it all
            log.warning("MLflow: could not sync %s (%s); run `python -m bilma sync`", trial.path, e)
    return state
