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
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_parser(prog: str = "python sweeps/launch.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.set_defaults(prog=prog)  # the status command printed after a submit is said the same way
    p.add_argument("--grid", required=True, help="grid YAML, or a name in sweeps/grids/")
    p.add_argument("--backend", choices=("local", "slurm", "ray", "debug"), default="local")
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
    p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every trial"
    )
    p.add_argument("--ray-address", default=None, help="ray: a running cluster (or $RAY_ADDRESS)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="ray (default 1 or profile)")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="ray (default 0 or profile)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


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
    from bilma.logs import configure

    configure(logging.DEBUG if args.verbose else logging.WARNING)
    from bilma.errors import run_command

    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from bilma.sweep import launcher, report
    from bilma.sweep.expand import expand_report, load_grid

    grid = load_grid(args.grid, args.set)
    trials, dropped = expand_report(grid)  # validates every trial before anything runs
    problem = _backend_problem(args)  # before any folder, dataset or MLflow run is made
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    planned = launcher.plan(trials, retry_failed=args.retry_failed)
    for line in launcher.data_root_warnings(planned):
        print(f"warning: {line}", file=sys.stderr)
    from bilma.sweep.backends.slurm import reconcile

    planned = reconcile(planned)  # scancel'ed trials resume rather than count as failed
    if args.status:
        from bilma.sweep.backends.slurm import slurm_states

        print(report.status_table(planned, slurm=slurm_states(planned)))
        return 0
    header = f"{grid.study}: {len(trials)} trials" + (
        f" ({dropped} duplicates merged)" if dropped else ""
    )
    if args.dry_run:
        print(header + " (dry run: nothing runs, nothing is written)")
        print(report.plan_table(planned))
        print(launcher.summary(planned))
        if args.backend == "slurm":
            from bilma.sweep.backends.slurm import sbatch_script

            print("\nsbatch script of the array:\n")
            print(sbatch_script(planned, args.profile))
        return 0
    print(header + ": " + launcher.summary(planned), flush=True)
    for p in planned:
        if p.action == launcher.SKIP_UNREADABLE:
            print(f"  {p.trial.variant} seed={p.trial.seed}: {p.note}; fix or delete that file")
    launcher.check_trial_configs(planned)
    if not any(p.action in launcher.TO_RUN + (launcher.SKIP_RUNNING,) for p in planned):
        stuck = any(p.action in (launcher.SKIP_FAILED, launcher.SKIP_UNREADABLE) for p in planned)
        print("nothing to submit: every trial is done" + (" or failed" if stuck else ""))
        return 1 if stuck else 0
    if args.backend == "slurm":
        from bilma.sweep.backends.slurm import preflight, submit

        preflight(args.profile)  # a bad profile or no SLURM: say so before writing anything
        parent = launcher.prepare(grid, planned)
        return submit(planned, args.profile, grid, parent, _status_command(args))
    if args.backend == "ray":
        from bilma.sweep.backends import ray as ray_backend

        metric = ray_backend.check(grid, trials)  # before anything is written
    parent = launcher.prepare(grid, planned)
    if args.backend == "ray":
        code = ray_backend.run_ray(grid, trials, parent, ray_backend.options(args), metric)
    elif args.backend == "debug":
        code = launcher.run_debug(planned)
    else:
        max_parallel = args.max_parallel or max(1, (os.cpu_count() or 1) // 2)
        code = launcher.run_local(planned, max_parallel, args.timeout_min)
    if code != 130:
        launcher.finish_parent(trials[0].config, parent, failed=code != 0)
    print(report.status_table(launcher.plan(trials)))
    if trials[0].config.tracking.enabled:
        print(f"\ncompare runs: mlflow ui --backend-store-uri {trials[0].config.tracking.uri}")
    return code


def _backend_problem(args: argparse.Namespace) -> str | None:
    """What stops the backend (a missing SLURM, an unknown profile: ProfileError), up front."""
    if args.backend != "slurm":
        return None
    from bilma.sweep.backends.profiles import load_profile

    load_profile(args.profile)  # ProfileError names the file and the profiles there are
    if not (args.dry_run or args.status) and shutil.which("sbatch") is None:
        return (
            "--backend slurm: sbatch is not on this machine (SLURM is not installed or not on "
            "PATH); run on the cluster's login node, or use --backend local"
        )
    return None


def _status_command(args: argparse.Namespace) -> str:
    """The command that shows this study's table (same grid and overrides)."""
    import shlex

    sets = [a for s in args.set for a in ("--set", s)]
    return shlex.join([*shlex.split(args.prog), "--grid", args.grid, *sets, "--status"])
