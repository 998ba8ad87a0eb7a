"""Ray Tune backend: `python sweeps/launch.py --grid FILE --backend ray`.

Each Tune trial trains one trial directory through `bilma.training.trainer.train`, exactly as the local
and SLURM backends do (same ids, same MLflow child runs). The trainer knows no Ray: it gets an
`on_eval` callback that reports every evaluation to Tune with a small checkpoint (which epoch
of which trial directory; the weights stay in `ckpt/last.pt`), so a scheduler (ASHA) can stop
a trial and Tune can restart one whose worker died; the trainer then resumes from its own
checkpoint. A trial stopped early ends as `TrialState.STOPPED` with its last metrics, its
MLflow run KILLED with the tag stopped_early=true, whether the trainer or (when Ray killed the
worker first) this driver records it.

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
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray import tune

from bilma.config import Config, ConfigError, apply_values
from bilma.errors import BilmaError
from bilma.runs.causes import cause_of_ray_error
from bilma.runs.launch import read_launch
from bilma.runs.lock import is_locked, local_holder_pid
from bilma.runs.schema import TrialState
from bilma.runs.trial_dir import TrialDir
from bilma.sweep.backends.base import Backend
from bilma.sweep.backends.ray_trainable import config_of, record_failed, record_stopped, run_trial
from bilma.sweep.expand import Grid, GridError, Trial
from bilma.sweep.plan import Planned
from bilma.sweep.search import Scheduler, Search, SearchError, check_optuna
from bilma.sweep.snapshot import in_snapshot, job_env, trial_snapshot
from bilma.tracking.mirror import MlflowMirror

log = logging.getLogger(__name__)

TUNE_DIR = ".tune"  # runs/<study>/.tune/: hidden, so find_trials never walks it
UNFINISHED = "unfinished"  # a Tune trial that ended in no state of its own (counted so)


@dataclass
class RayOptions:
    address: str | None = None  # a running cluster; None: $RAY_ADDRESS, else a local Ray
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_cpus: int | None = None  # local Ray only (default: every core)
    verbose: bool = False
    # More environment for the workers: the launch's code snapshot first on their path.
    env: dict[str, str] = field(default_factory=dict)
    code: Path | None = None  # that snapshot's folder


# ----------------------------------------------------------------------------- checks


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


# ----------------------------------------------------------------------------- the driver


class Recorder(tune.Callback):
    """Progress lines, and the end of each trial written into its directory."""

    def __init__(self, metric: str, bases: list[Config]) -> None:
        self.metric = metric
        self.bases = bases  # the trainable's: a Tune trial's config names its base and sample

    def _dir(self, trial) -> TrialDir | None:
        """The trial's folder: from its last report, else (it died before reporting) from
        its config, the way `run_trial` finds it."""
        path = (trial.last_result or {}).get("trial_dir")
        if path:
            return TrialDir(path)
        try:  # a callback that raises would stop the whole experiment
            return TrialDir.for_config(config_of(trial.config or {}, self.bases))
        except (KeyError, IndexError, TypeError, ConfigError):
            return None

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
        if d is None or not d.path.is_dir():
            print(f"  FAILED Ray trial {trial.trial_id} before its folder was made", flush=True)
            return
        try:
            error = trial.get_pickled_error()  # what Ray knows of the failure
        except Exception:  # unpicklable or gone: no cause, as for a local job killed silently
            error = None
        why = f"Ray trial {trial.trial_id} failed: " + (
            str(error).strip().splitlines()[0] if error and str(error).strip() else "worker died?"
        )
        record_failed(d, d.read_config(), why, cause_of_ray_error(error))
        print(f"  FAILED {_name(d.path)}: {d.status().get('error', '')}", flush=True)


def _name(path: str | Path) -> str:
    launch = read_launch(Path(path))
    seed = "?" if launch.seed is None else launch.seed
    return f"{launch.variant or Path(path).name} seed={seed}"


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

    # Workers import the launch's code snapshot (opts.env) or else the installed bilma, like
    # the driver: no other checkout goes on their path (another copy trains something else).
    env = {}
    for key in ("HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    env.update(opts.env)
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        with in_snapshot(opts.code):
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
    with in_snapshot(opts.code):
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


class RayBackend(Backend):
    """`--backend ray`: the grid's trials (and its search: and scheduler:) on Ray Tune."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        cpus_per_trial: float | None = None,
        gpus_per_trial: float | None = None,
        profile: str = "default",
        verbose: bool = False,
        submits: bool = True,
    ):
        self.address = address
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.profile = profile  # per-trial resources, when it is not the default one
        self.verbose = verbose
        self.submits = submits  # False for --status and --dry-run: Ray is not started

    def check(self, grid: Grid, trials: list[Trial]) -> None:
        """The search (Optuna installed, every bound a valid config), one metric for every
        trial, and the profile named for the resources (when the command runs the trials)."""
        if self.submits:
            check(grid, trials)
            self.options()

    def options(self) -> RayOptions:
        """Per-trial resources from --cpus/--gpus-per-trial, else from --profile when it is
        not the default one (cpus_per_task, gpus_per_node: one trial per job in the SLURM
        backend), else 1 CPU."""
        cpus, gpus = 1.0, 0.0
        if self.profile != "default":
            from bilma.sweep.backends.profiles import load_profile

            prof = load_profile(self.profile)
            cpus, gpus = float(prof.cpus_per_task), float(prof.gpus_per_node)
        return RayOptions(
            address=self.address,
            cpus_per_trial=self.cpus_per_trial if self.cpus_per_trial is not None else cpus,
            gpus_per_trial=self.gpus_per_trial if self.gpus_per_trial is not None else gpus,
            verbose=self.verbose,
        )

    def submit(self, grid: Grid, planned: list[Planned], parent_run_id: str | None) -> int:
        # Tune runs every trial of the grid: done and stopped ones only report (see above).
        trials = [p.trial for p in planned]
        to_run = [p for p in planned if p.action.runs()]
        code = trial_snapshot(to_run[0].dir.path) if to_run else None  # the launch's
        env = job_env(to_run[0].dir.path) if to_run else {}
        opts = replace(self.options(), env=env, code=code)
        return run_ray(grid, trials, parent_run_id, opts, dirs=[p.dir.path for p in planned])


def stop_orphans(dirs: list[Path], timeout_s: float = 300.0) -> None:
    """Before an experiment is restored: trial processes of an earlier driver still holding
    their trial's lock (a SIGKILLed driver's actors outlive it on a shared Ray head) are asked
    to save and stop (SIGTERM), and waited for; restoring under them would race their
    checkpoints (Tune deletes a trial's older checkpoint as it writes the next)."""
    held = [d for d in dirs if is_locked(d)]
    if not held:
        return
    print(f"{len(held)} trial(s) of an earlier launch still train: stopping them (they save)",
          flush=True)  # fmt: skip
    for d in held:
        pid = local_holder_pid(d)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(is_locked(d) for d in held):
        if time.monotonic() > deadline:
            still = [str(d) for d in held if is_locked(d)]
            raise BilmaError(
                f"trial process(es) of an earlier launch still hold {', '.join(still)}; stop "
                "them (their lock file names the pid and host), then run the same command again"
            )
        time.sleep(1.0)


def run_ray(
    grid: Grid,
    trials: list[Trial],
    parent: str | None,
    opts: RayOptions,
    metric: str | None = None,
    dirs: list[Path] | None = None,
) -> int:
    """Run the grid's trials on Ray Tune; 0 when every trial is done or stopped early.
    `dirs`: the trials' folders, whose processes of an earlier driver a restore stops first."""
    metric = metric or check(grid, trials)
    cfg0 = trials[0].config
    # One checkpoint kept per trial forces an experiment snapshot at each report: wanted
    # (a relaunch restores the latest state), so Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    storage = (Path(cfg0.paths.runs) / grid.study / TUNE_DIR).resolve()
    name = f"tune-{fingerprint(trials, grid.search, grid.scheduler)}"
    if dirs and tune.Tuner.can_restore(str(storage / name)):
        stop_orphans(dirs)
    with ray_session(opts) as where:
        print(f"Ray Tune on {where}; Tune's files in {storage / name}", flush=True)
        recorder = Recorder(metric, [t.config for t in trials])
        tuner = _tuner(grid, trials, parent, opts, storage, name, metric, recorder)
        results = tuner.fit()
    return _summary(results, recorder, metric)


def _tuner(grid, trials, parent, opts, storage: Path, name: str, metric: str, recorder):
    bases = [t.config for t in trials]
    # A sampled trial's launch.json is its base trial's, with its own label and seed.
    launches = [
        t.launch(
            str(grid.path),
            parent,
            {"enabled": t.config.tracking.enabled, "uri": t.config.tracking.uri},
        )
        for t in trials
    ]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, bases=bases, parent=parent, launches=launches),
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
    ended = (TrialState.DONE, TrialState.STOPPED, TrialState.FAILED)
    counts: Counter = Counter()
    for r in results:
        path = (r.metrics or {}).get("trial_dir")
        state = _settle(TrialDir(path)) if path else None
        counts[state if state in ended else (TrialState.FAILED if r.error else UNFINISHED)] += 1
    print(
        f"Ray Tune: {counts[TrialState.DONE]} done, {counts[TrialState.STOPPED]} stopped early, "
        f"{counts[TrialState.FAILED]} failed"
        + (f", {counts[UNFINISHED]} unfinished" if counts[UNFINISHED] else ""),
        flush=True,
    )
    return 1 if counts[TrialState.FAILED] or counts[UNFINISHED] else 0


def _settle(trial: TrialDir) -> TrialState | None:
    """The trial's final state; its MLflow run brought up to date from the directory (a worker
    killed between result.json and ending its run would leave the run RUNNING)."""
    state = trial.state()
    cfg = trial.read_config()
    ended = state is not None and (state.is_finished() or state is TrialState.FAILED)
    if ended and cfg.tracking.enabled:
        try:
            MlflowMirror(trial, cfg).sync()
        except Exception as e:  # MLflow down: the directory has it all
            log.warning("MLflow: could not sync %s (%s); run `python -m bilma sync`", trial.path, e)
    return state
