"""`python sweeps/launch.py --grid ablation.yaml`: run a grid of trials.

    --backend local   submitit's LocalExecutor on this machine, at most --max-parallel at once,
                      with a live progress view; waits for the end (default)
    --backend debug   in this process, one trial after another (for pdb)
    --backend slurm   submitit job arrays on SLURM (--profile); submits, prints the job ids, exits
    --backend ray     Ray Tune (the grid's search: and scheduler:), on --ray-address or a local Ray
    --status          the study's trials as their directories say
    --dry-run         what would run; nothing runs and nothing is written

Relaunching the same command skips finished trials, resumes interrupted ones from their
checkpoints and never starts a trial that is already running.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from bilma.config.load import add_override_args, merge_overrides
from bilma.sweep import chain

if TYPE_CHECKING:
    from bilma.sweep.backends.base import Backend
    from bilma.sweep.expand import Grid

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_parser(prog: str = "python sweeps/launch.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.set_defaults(prog=prog)  # the status command printed after a submit is said the same way
    p.add_argument("--grid", required=True, help="grid YAML, or a name in sweeps/grids/")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="local")
    p.add_argument(
        "--profile", default="default", help="SLURM profile in cluster/profiles/ (slurm backend)"
    )
    p.add_argument(
        "--max-parallel",
        type=_positive(int),
        default=None,
        help="local: trials at once (default: cores / 2)",
    )
    p.add_argument(
        "--timeout-min",
        type=_positive(float),
        default=7 * 24 * 60,
        help="local: time limit per trial",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would run; write nothing")
    p.add_argument("--status", action="store_true", help="table of the study's trials")
    p.add_argument(
        "--retry-failed",
        nargs="?",
        const=True,
        default=False,
        action=_RetryFailed,
        metavar="CAUSES",
        help="run failed trials again: all, or those whose last attempt ended of one of the "
        "comma-separated CAUSES (out_of_memory,node_failure,...)",
    )
    changed = p.add_mutually_exclusive_group()
    changed.add_argument(
        "--rerun-changed",
        dest="changed",
        action="store_const",
        const="rerun",
        help="train trials whose finished twin (same variant and seed) had other values",
    )
    changed.add_argument(
        "--keep-changed",
        dest="changed",
        action="store_const",
        const="keep",
        help="keep finished trials trained with other values instead of training the plan's",
    )
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="train trials that another study under the same runs folder has finished",
    )
    p.add_argument(
        "--notify",
        metavar="URL",
        default=os.environ.get("BILMA_NOTIFY_URL") or None,
        help="webhook: a JSON POST at the study's first failure and at its end "
        "(default: $BILMA_NOTIFY_URL)",
    )
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the check of datasets, weights and parse maps (data only compute nodes see)",
    )
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="jobs import the code on disk when they start, not a copy made at launch "
        "(runs/<study>/.code/): for developing; an edit then reaches queued trials",
    )
    p.add_argument(
        "--no-disk-check",
        action="store_true",
        help="skip the preflight's check that the checkpoints fit in paths.runs' free space",
    )
    p.add_argument(
        "--max-trials",
        type=_positive(int),
        default=None,
        help="a grid of more trials needs --yes (default 500: bilma.sweep.size.MAX_TRIALS)",
    )
    p.add_argument("--yes", action="store_true", help="go on with a grid above --max-trials")
    add_override_args(p)  # every trial's: `k=v` or `--set k=v`
    p.add_argument("--ray-address", default=None, help="ray: a running cluster (or $RAY_ADDRESS)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="ray (default 1 or profile)")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="ray (default 0 or profile)")
    p.add_argument("-v", "--verbose", action="store_true")
    chain.add_args(p)  # --parser, --parse-shards: SemMIM's parse maps first, in one command
    return p


class _RetryFailed(argparse.Action):
    """--retry-failed [CAUSES]: True (every failed trial) or the set of causes
    (bilma.runs.causes.parse_causes); a KEY=VALUE after it is an override, not causes."""

    def __call__(self, parser, namespace, values, option_string=None):
        from bilma.runs.causes import parse_causes

        if isinstance(values, str) and "=" in values:
            namespace.set_overrides = [*namespace.set_overrides, values]
            values = True
        if isinstance(values, str):
            try:
                values = parse_causes(values)
            except ValueError as e:
                parser.error(f"argument {option_string}: {e}")
        setattr(namespace, self.dest, values)


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value

    return parse


def main(argv: list[str] | None = None, prog: str = "python sweeps/launch.py") -> int:
    args = build_parser(prog).parse_args(argv)
    merge_overrides(args)
    from bilma.logs import configure

    configure(logging.DEBUG if args.verbose else logging.WARNING)
    from bilma.errors import run_command

    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from bilma.sweep import notify, report
    from bilma.sweep.expand import expand_report, load_grid
    from bilma.sweep.plan import (
        Action,
        changed_lines,
        changed_trials,
        check_trial_configs,
        data_root_warnings,
        plan,
        resolve_changed,
        summary,
    )
    from bilma.sweep.preflight import raise_problems
    from bilma.sweep.preflight import report as preflight_report
    from bilma.sweep.prepare import finish_parent, prepare, rename_skipped
    from bilma.sweep.reuse import apply_reuse, mirror_reused, plan_reuse

    if args.notify:
        notify.check_url(args.notify)  # a bad URL: one error line before anything runs
    grid = load_grid(args.grid, args.overrides)
    _check_size(args, grid)  # from the grid file alone: a huge grid answers at once
    trials, dropped = expand_report(grid)  # validates every trial before anything runs
    backend = BACKENDS[args.backend](args)
    backend.check(grid, trials)  # before any folder, dataset or MLflow run is made
    planned = plan(trials, retry_failed=args.retry_failed)
    for line in data_root_warnings(planned):
        print(f"warning: {line}", file=sys.stderr)
    # What the backend that ran a trial knows of its job counts whatever --backend says
    # (a scancel'ed SLURM trial resumes rather than counting as failed; --status shows it).
    recorded = {p.backend for p in planned}
    ran_by = [make(args) for name, make in BACKENDS.items() if name in recorded]
    for b in ran_by:
        b.reconcile(planned)
    chain.reconcile(planned, args)  # trials cancelled with their failed parse array
    changed = changed_trials(planned)
    if changed and (args.status or args.dry_run) and args.changed is None:
        print(f"note: {len(changed)} finished trial(s) were trained with other values than "
              "this plan (--rerun-changed or --keep-changed):", file=sys.stderr)  # fmt: skip
        for line in changed_lines(changed):
            print(f"  {line}", file=sys.stderr)
    elif changed:
        resolve_changed(changed, args.changed)
    plan_reuse(planned, enabled=not args.no_reuse)  # trials another study finished or runs
    if args.status:
        views = {b.name: b.status(planned) for b in ran_by}
        views = {name: view for name, view in views.items() if view}
        jobs = {path: job for view in views.values() for path, job in view.items()}
        jobs.update(chain.job_notes(planned, jobs))
        print(report.status_table(planned, jobs, f"{'/'.join(views)} job"))
        return 0
    header = f"{grid.study}: {len(trials)} trials" + (
        f" ({dropped} duplicates merged)" if dropped else ""
    )
    problems = _preflight(args, planned)
    steps, problems = chain.plan_steps(args, planned, problems)  # missing maps: parse first
    if args.dry_run:
        print(header + " (dry run: nothing runs, nothing is written)")
        print(report.plan_table(planned))
        print(summary(planned))
        from bilma.sweep.estimate import estimate_lines  # GPU-hours and checkpoint disk

        print("\n".join(estimate_lines(p.trial.config for p in planned if p.action.runs())))
        extra = backend.dry_run(planned)
        if extra:
            print(extra)
        if steps:
            print(chain.describe(steps, args))
        if problems:
            print(f"\n{preflight_report(problems)}", file=sys.stderr)
            return 2
        return 0
    raise_problems(problems)
    print(header + ": " + summary(planned), flush=True)
    for p in planned:
        if p.action is Action.SKIP_UNREADABLE:
            print(f"  {p.name}: {p.note}; fix or delete that file")
    check_trial_configs(planned)
    for line in rename_skipped(grid, planned):
        print(line)
    reused = apply_reuse(grid, planned)
    if not any(p.action.runs() or p.action is Action.SKIP_RUNNING for p in planned):
        mirror_reused(grid, reused, None)
        stuck = any(p.action in (Action.SKIP_FAILED, Action.SKIP_UNREADABLE) for p in planned)
        elsewhere = any(p.action is Action.SKIP_ELSEWHERE for p in planned)
        print("nothing to submit: every trial is done" + (" or failed" if stuck else "")
              + (" or runs in another study" if elsewhere else ""))  # fmt: skip
        return 1 if stuck else 0
    from bilma.sweep.snapshot import for_launch

    # The code the launch's jobs import, whatever is edited on disk while they wait.
    snap = for_launch(planned, enabled=backend.snapshots and not args.no_snapshot)
    parent = prepare(grid, planned, code=snap.id if snap else None)
    mirror_reused(grid, reused, parent)
    study_dir = planned[0].dir.path.parent
    follows = [
        p.dir.trial_id for p in planned if p.action.runs() or p.action is Action.SKIP_RUNNING
    ]
    notify.arm(args.notify, study_dir, str(grid.path), follows)  # bilma.sweep.notify
    code = chain.submit(backend, grid, planned, parent, steps, args)  # parse steps first
    if not backend.waits:
        return code  # queued: the parent run stays open, --status follows the trials
    notify.check(study_dir)  # what the jobs could not send (a killed job, Ray's trials)
    # A launch stopped by a signal (exit 128 + its number) leaves trials to resume: KILLED.
    finish_parent(trials[0].config, parent, failed=code != 0, stopped=code > 128)
    print(report.status_table(plan(trials)))
    if trials[0].config.tracking.enabled:
        print(_compare_runs(trials[0].config.tracking.uri, trials[0].config.tracking.study))
    return code


def _compare_runs(uri: str, study: str) -> str:
    """Where to see the study's runs: the UI's command, and the URL of its runs table in the
    model-training view (a fresh browser opens the GenAI pages otherwise, mlflow/mlflow#24498)."""
    from bilma.tracking.store import resolve_uri, runs_url

    text = f"\ncompare runs: make ui  (or: mlflow ui --backend-store-uri {uri})"
    server = resolve_uri(uri)  # a tracking server serves its own UI
    http = server.startswith(("http://", "https://"))
    url = runs_url(uri, study, base=server) if http else runs_url(uri, study)
    return text + (f"\nthen open {url}" if url else "")


def _check_size(args: argparse.Namespace, grid: Grid) -> None:
    """Show a large grid's size before its expansion; refuse one above --max-trials without
    --yes (bilma.sweep.size). `--status` only reads: a study launched with --yes is looked at
    without it."""
    from bilma.sweep.size import MAX_TRIALS, SHOW_FROM, check_size, grid_size

    size = grid_size(grid)
    if size.count >= SHOW_FROM:
        print(size.line(grid.study), flush=True)
    check_size(size, grid.study, args.max_trials or MAX_TRIALS, args.yes or args.status)


def _preflight(args: argparse.Namespace, planned: list) -> list:
    """The problems of the inputs of the trials this launch would run (none: --no-preflight)."""
    from bilma.sweep.preflight import preflight, skipped_note

    if args.no_preflight:
        print(skipped_note(), file=sys.stderr)
        return []
    configs = (p.trial.config for p in planned if p.action.runs())
    return preflight(configs, disk_check=not args.no_disk_check)


# ----------------------------------------------------------------------------- backends
# Each imported when used (Ray's import alone takes seconds), built from the options it needs.


def _submits(args: argparse.Namespace) -> bool:
    """Whether the command runs trials (not --status or --dry-run)."""
    return not (args.dry_run or args.status)


def _local(args: argparse.Namespace) -> Backend:
    from bilma.sweep.backends.local import LocalBackend
    from bilma.sweep.backends.profiles import load_profile
    from bilma.sweep.retry import RetryPolicy

    # --profile's max_transient_retries and retry_backoff_s: trials that end of a transient
    # cause run again in the launcher
    retry = RetryPolicy.of(load_profile(args.profile)) if _submits(args) else None
    return LocalBackend(args.max_parallel, args.timeout_min, retry)


def _slurm(args: argparse.Namespace) -> Backend:
    from bilma.sweep.backends.slurm import SlurmBackend

    return SlurmBackend(args.profile, _submits(args), _status_command(args), args.retry_failed)


def _ray(args: argparse.Namespace) -> Backend:
    from bilma.sweep.backends.ray import RayBackend

    return RayBackend(
        address=args.ray_address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        profile=args.profile,
        verbose=args.verbose,
        submits=_submits(args),
    )


def _debug(args: argparse.Namespace) -> Backend:
    from bilma.sweep.backends.debug import DebugBackend

    return DebugBackend()


# --backend NAME -> the backend (in the order --help lists them).
BACKENDS: dict[str, Callable[[argparse.Namespace], Backend]] = {
    "local": _local,
    "slurm": _slurm,
    "ray": _ray,
    "debug": _debug,
}


def _status_command(args: argparse.Namespace) -> str:
    """The command that shows this study's table (same grid and overrides)."""
    import shlex

    sets = [a for s in args.overrides for a in ("--set", s)]
    return shlex.join([*shlex.split(args.prog), "--grid", args.grid, *sets, "--status"])
