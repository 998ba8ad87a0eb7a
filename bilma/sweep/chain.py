"""Chained jobs: a SemMIM launch whose parse maps are missing parses them first, in one command.

The preflight names each label set whose parse maps are missing (a `PARSE_KEY` problem).
With `--parser FOLDER`, instead of refusing, the launch plans one parse step per distinct
(dataset, root, parsing root, label set) of the trials to run, and:

- `--backend slurm`: submits each step as a parse-shard job array (`bilma parse-shards`' own
  submission), then the training arrays of the trials that read its maps with
  `--dependency=afterok:<parse array>` and `--kill-on-invalid-dep=yes`. A failed shard makes
  SLURM cancel those training jobs (without the flag they would wait forever, reason
  DependencyNeverSatisfied); `reconcile` then records "parse failed (job X)" in their
  status.json, `--status` shows it, and a relaunch submits them again only after parsing
  first (`--parser`) or once the maps are there;
- any other backend: runs the shards on this machine (`parse_shards.run_local`), then the
  training; the trials of a step whose parse failed are recorded failed and not started.

Any other preflight problem (a missing dataset, missing weights) still refuses the whole
launch: nothing is parsed and nothing is queued. With `--no-preflight` and `--parser` every
SemMIM group is parsed first (a parse skips the images that already have a valid map).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rest is imported when used: `bilma sweep --help` stays quick
    from bilma.sweep.backends.base import Backend
    from bilma.sweep.expand import Grid
    from bilma.sweep.plan import Planned
    from bilma.sweep.preflight import Problem

PARSE_FAILED = "parse failed"  # how status.json's error of a trial cancelled with its parse starts
SLURM_SHARDS = 8  # parse shards (array tasks) per step on SLURM unless --parse-shards says
LOCAL_SHARDS = 1  # on this machine: one process with every core (or --parse-shards, one a GPU)
# SLURM states of a parse task that ended without its maps: the dependants never start.
_ENDED_BADLY = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED")  # fmt: skip


def add_args(p: argparse.ArgumentParser) -> None:
    """`bilma sweep`'s options of the chain."""
    p.add_argument(
        "--parser",
        type=Path,
        default=None,
        help="SemMIM: a local human-parser folder; missing parse maps are written first by a "
        "parse job array that the training jobs wait on (local: run first)",
    )
    p.add_argument(
        "--parse-shards",
        type=int,
        default=None,
        help=f"with --parser: parse jobs per label set (default {SLURM_SHARDS} on SLURM, "
        f"{LOCAL_SHARDS} locally)",
    )


@dataclass
class ParseStep:
    """The parse maps of one (dataset, root, parsing root, label set) and the trials that
    read them."""

    dataset: str
    root: str
    parsing_root: str | None
    labels: str
    trials: list[Planned] = field(default_factory=list)

    def args(self, parser: Path, shards: int, backend: str, profile: str) -> argparse.Namespace:
        """`bilma parse-shards`' options for this step."""
        from bilma.sweep.parse_shards import build_parser

        argv = ["--dataset", self.dataset, "--root", self.root, "--model", str(parser)]
        argv += ["--labels", self.labels, "--shards", str(shards), "--backend", backend]
        argv += ["--profile", profile]
        if self.parsing_root:
            argv += ["--parsing-root", self.parsing_root]
        return build_parser().parse_args(argv)

    def where(self) -> Path:
        return Path(self.parsing_root or Path(self.root) / "parsing") / self.labels


def plan_steps(
    args: argparse.Namespace, planned: list[Planned], problems: list[Problem]
) -> tuple[list[ParseStep], list[Problem]]:
    """(the parse steps to chain before the training, the problems that still refuse the
    launch). Chained only when every problem is a missing parse map and `--parser` is given."""
    from bilma.sweep.preflight import (
        PARSE_KEY,
        Problem,
        needs_parse_maps,
        parse_group,
        parse_maps_problem,
    )

    if args.parser is None or any(p.key != PARSE_KEY for p in problems):
        return [], problems
    if not problems and not args.no_preflight:
        return [], []  # every map is there
    if not (args.parser / "config.json").is_file():
        message = (
            "not a local parser folder with config.json; download one first, e.g. `hf download "
            "mattmdjaga/segformer_b2_clothes --local-dir parsers/segformer_b2_clothes`"
        )
        return [], [*problems, Problem("--parser", str(args.parser), message)]
    steps: dict[tuple, ParseStep] = {}
    for p in planned:
        if p.action.runs() and needs_parse_maps(p.trial.config):
            key = parse_group(p.trial.config)
            steps.setdefault(key, ParseStep(*key)).trials.append(p)
    if not args.no_preflight:  # only the groups whose maps the preflight found missing
        steps = {k: s for k, s in steps.items() if parse_maps_problem(s.trials[0].trial.config)}
    return list(steps.values()), []


def shards(args: argparse.Namespace) -> int:
    if args.parse_shards is not None:
        return max(1, args.parse_shards)
    return SLURM_SHARDS if args.backend == "slurm" else LOCAL_SHARDS


def describe(steps: list[ParseStep], args: argparse.Namespace) -> str:
    """The chain as --dry-run shows it: each parse step, then what waits on it."""
    n = shards(args)
    lines = []
    for s in steps:
        trials = f"{len(s.trials)} trial{'s' if len(s.trials) != 1 else ''}"
        if args.backend == "slurm":
            lines.append(
                f"chain: parse array: {n} shards ({s.dataset} {s.labels} -> {s.where()}) -> "
                f"training: {trials} after it (--dependency=afterok:<parse array> "
                "--kill-on-invalid-dep=yes)"
            )
        else:
            lines.append(
                f"chain: parse {n} shard{'s' if n != 1 else ''} on this machine "
                f"({s.dataset} {s.labels} -> {s.where()}), then training: {trials}"
            )
    return "\n".join(lines)


def submit(
    backend: Backend,
    grid: Grid,
    planned: list[Planned],
    parent: str | None,
    steps: list[ParseStep],
    args: argparse.Namespace,
) -> int:
    """Parse first (SLURM: a job array the training waits on; else: here, to the end), then
    `backend.submit` the trials."""
    if not steps:
        return backend.submit(grid, planned, parent)
    from bilma.runs.schema import TrialState
    from bilma.sweep import parse_shards
    from bilma.sweep.plan import Action

    n = shards(args)
    if backend.name == "slurm":
        after: dict[Path, str] = {}
        for s in steps:
            ns = s.args(args.parser, n, "slurm", args.profile)
            array = parse_shards.submit_slurm_array(ns, parse_shards.shard_options(ns))
            after.update({p.dir.path: array for p in s.trials})
            print(f"chain: {len(s.trials)} trial(s) start after parse array {array} (afterok)")
        backend.after = after  # type: ignore[attr-defined]  (SlurmBackend's)
        return backend.submit(grid, planned, parent)
    failed = 0
    for s in steps:
        ns = s.args(args.parser, n, "local", args.profile)
        print(f"chain: parsing {s.dataset} {s.labels} into {s.where()} before training", flush=True)
        if parse_shards.run_local(ns, parse_shards.shard_options(ns)) == 0:
            continue
        failed += len(s.trials)
        logs = parse_shards.jobs_folder(ns)
        error = f"{PARSE_FAILED} (local parse shards, logs in {logs}); not started"
        for p in s.trials:
            p.dir.set_status(TrialState.FAILED, error=error)
            p.action, p.note = Action.SKIP_FAILED, error
    if failed:
        print(f"chain: {failed} trial(s) not started: their parse failed", flush=True)
    if not any(p.action.runs() for p in planned):
        return 1
    code = backend.submit(grid, planned, parent)
    return code or (1 if failed else 0)


# ----------------------------------------------------------------------------- after a failure


def reconcile(planned: list[Planned], args: argparse.Namespace) -> None:
    """Trials whose SLURM job was cancelled because the parse array it waited on failed:
    record `parse failed (job X)` in their status.json (once), and run them again only when
    this launch parses first (`--parser`) or their maps are there now; else leave them failed
    with the reason (never resubmitted blindly while the maps are missing)."""
    from bilma.runs.reading import read_status
    from bilma.runs.schema import STATUS_AFTER_JOB, TrialState
    from bilma.sweep.plan import Action

    chained = {}
    for p in planned:
        if p.backend != "slurm" or not (p.action.runs() or p.action is Action.SKIP_FAILED):
            continue  # (no file read for the others: a study may hold 1,000 trials)
        status = read_status(p.dir)
        if status.get("backend") == "slurm" and status.get(STATUS_AFTER_JOB):
            chained[p.dir.path] = (p, status)
    if not chained:
        return
    from bilma.sweep.backends.slurm import array_states, job_states
    from bilma.sweep.preflight import parse_maps_problem

    jobs = job_states(sorted({str(st["job_id"]) for _, st in chained.values()}))
    arrays: dict[str, dict[str, str]] = {}
    for p, status in chained.values():
        array, job = str(status[STATUS_AFTER_JOB]), str(status["job_id"])
        if not jobs.get(job, "").startswith("CANCELLED"):
            continue  # started (its own end is its own), still waiting, or cancelled by hand
        bad = _failed_tasks(arrays.setdefault(array, array_states(array)))
        if not bad:
            continue
        error = status.get("error", "")
        if status.get("state") != TrialState.FAILED or not error.startswith(PARSE_FAILED):
            log = _parse_log(p.trial.config, bad.split()[0])
            why = _last_exception(log)
            error = (
                f"{PARSE_FAILED} (job {array}: {bad}){': ' + why if why else ''}; log {log}; "
                f"SLURM cancelled this trial's job {job} that waited on it"
            )
            p.dir.set_status(TrialState.FAILED, error=error)
        if args.parser is not None or parse_maps_problem(p.trial.config) is None:
            p.action = Action.RESUME if p.dir.last_ckpt.exists() else Action.SUBMIT
            p.note = f"{PARSE_FAILED} (job {array}); its maps are parsed first or there now"
        else:
            p.action = Action.SKIP_FAILED
            p.note = (
                f"{PARSE_FAILED} (job {array}) and its parse maps are still missing: add "
                "--parser <parser folder> to parse them first"
            )


def _parse_log(cfg, task: str) -> Path:
    """Where parse task `task` ('12_1') wrote its errors (`parse_shards.jobs_folder`)."""
    d = cfg.data
    parsing = Path(d.parsing_root) if d.parsing_root else Path(d.root) / "parsing"
    return parsing.absolute() / "jobs" / task / f"{task}_0_log.err"


def _last_exception(log: Path) -> str:
    """The last 'SomeError: message' line of a job's log ('' if none or unreadable)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [ln.strip() for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b.*: ", ln)]
    return found[-1][:500] if found else ""


def _failed_tasks(states: dict[str, str]) -> str:
    """'12_1 FAILED, 12_3 TIMEOUT' for the tasks that ended without their maps; '' if none."""
    bad = [f"{t} {s}" for t, s in sorted(states.items()) if s.split()[0] in _ENDED_BADLY]
    return ", ".join(bad)


def job_notes(planned: list[Planned], jobs: dict[Path, str]) -> dict[Path, str]:
    """--status' job column of the trials whose parse failed: their job, then why."""
    from bilma.runs.reading import read_status
    from bilma.sweep.plan import Action

    notes = {}
    for p in planned:
        if not (p.action.runs() or p.action is Action.SKIP_FAILED):
            continue
        error = str(read_status(p.dir).get("error", ""))
        if error.startswith(PARSE_FAILED):
            head = error.split(")")[0] + ")"  # 'parse failed (job 12: 12_1 FAILED)'
            job = jobs.get(p.dir.path)
            notes[p.dir.path] = f"{job}: {head}" if job else head
    return notes
