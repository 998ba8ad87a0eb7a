"""`python sweeps/parse.py`: `python -m bilma parse` over N shards, on local GPUs or SLURM.

    --backend local   N submitit local jobs at once on this machine, shard k on GPU k % G
                      (G = --gpus, default: the GPUs torch sees; 0 = CPU); waits for all
    --backend slurm   one SLURM job array of N tasks, one shard and at most one GPU each, with
                      a cluster profile (cluster/profiles/); submits, prints the ids, exits
    --dry-run         the shards' commands and the SLURM parameters; nothing runs

Every shard is `bilma parse --shard k/N`, so running the same command again (or a requeued
task) skips the images that already have a map. The jobs go out through the sweep backends'
own helpers (`backends.local.submit_local`, `backends.slurm.submit_array`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import submitit  # noqa: E402


class ParseShardJob(submitit.helpers.Checkpointable):
    """One shard of a parse run; a requeue (time limit, preemption) just runs it again."""

    def __init__(self, options: dict[str, Any]):
        self.options = dict(options)

    def __repr__(self) -> str:
        return f"ParseShardJob(shard {self.options['shard']})"

    def __call__(self) -> dict[str, Any]:
        from bilma.logs import configure
        from bilma.parse.run import ParseOptions, parse_dataset

        configure()
        return parse_dataset(ParseOptions(**self.options))


def build_parser(prog: str = "python sweeps/parse.py") -> argparse.ArgumentParser:
    from bilma.data.formats import ALL_DATASETS
    from bilma.parse.cli import LABEL_SET_NAMES

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=ALL_DATASETS)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--model", required=True, type=Path, help="local parser folder")
    p.add_argument("--labels", choices=LABEL_SET_NAMES)
    p.add_argument("--shards", type=int, required=True, help="N: slices run as N jobs")
    p.add_argument("--backend", choices=("local", "slurm"), default="local")
    p.add_argument("--profile", default="default", help="slurm: profile in cluster/profiles/")
    p.add_argument("--gpus", type=int, help="local: GPUs to spread shards over (0 = CPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes per shard")
    p.add_argument("--parsing-root", type=Path, help="default: <root>/parsing")
    p.add_argument("--dry-run", action="store_true")
    return p


def shard_options(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The `ParseOptions` fields of each shard (absolute paths: jobs start elsewhere)."""
    base = {
        "dataset": args.dataset,
        "root": args.root.resolve(),
        "model": args.model.resolve(),
        "labels": args.labels,
        "batch_size": args.batch_size,
        "parsing_root": (args.parsing_root or args.root / "parsing").resolve(),
        "workers": args.workers,
        "progress": False,  # job logs: the final counts, not a line per 2 s
    }
    return [dict(base, shard=(k, args.shards)) for k in range(args.shards)]


def jobs_folder(args: argparse.Namespace) -> Path:
    """Submitit's job folders (pickles, logs): beside the label-set folders of the maps."""
    return (args.parsing_root or args.root / "parsing").resolve() / "jobs"


def slurm_parameters(profile_name: str) -> tuple[dict[str, Any], Any]:
    """The profile's submitit parameters for one single-process shard per array task.

    A training profile may ask for several tasks or GPUs per trial (DDP); a shard is one
    process on at most one GPU, so those are brought down to one.
    """
    from bilma.sweep.backends.profiles import load_profile

    profile = load_profile(profile_name)
    params = profile.submitit_parameters()
    params.update(ntasks_per_node=1)
    params.pop("gpus_per_task", None)
    if params.get("nodes"):
        params["nodes"] = 1
    if params.get("gpus_per_node"):
        params["gpus_per_node"] = 1
    return params, profile


def submit_slurm(args: argparse.Namespace, shards: list[dict[str, Any]]) -> int:
    array = submit_slurm_array(args, shards)
    print(f"follow: squeue -j {array}   |   logs: {jobs_folder(args)}/<job id>/")
    print("the same command later parses only what is still missing")
    return 0


def submit_slurm_array(args: argparse.Namespace, shards: list[dict[str, Any]]) -> str:
    """Submit the shards as one SLURM job array; its id (also `bilma.sweep.chain`'s)."""
    from bilma.sweep.backends.slurm import submit_array

    params, profile = slurm_parameters(args.profile)
    # Requeues after time limits: each resumes where the maps stop (profile key once merged).
    jobs = submit_array(
        jobs_folder(args) / "%j",
        profile,
        f"bilma-parse-{args.dataset}",
        params,
        [ParseShardJob(s) for s in shards],
        "the same command parses what is still missing",
    )
    array = str(jobs[0].job_id).split("_")[0]
    print(f"submitted {len(jobs)} parse shards as job array {array} (profile {profile.name})")
    return array


def run_local(args: argparse.Namespace, shards: list[dict[str, Any]]) -> int:
    from bilma.sweep.backends.local import submit_local

    gpus = args.gpus
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // len(shards))
    jobs = []
    for s in shards:
        k = s["shard"][0]
        gpu = {"gpus_per_node": 1, "visible_gpus": (k % gpus,)} if gpus else {}
        s = dict(s, device="cuda" if gpus else "cpu")
        folder = jobs_folder(args) / f"local-{k}"
        job = submit_local(
            folder, ParseShardJob(s), threads, max_num_timeout=3, timeout_min=7 * 24 * 60, **gpu
        )
        jobs.append(job)
        where = f"GPU {k % gpus}" if gpus else "CPU"
        print(f"shard {k}/{len(shards)} on {where}: log {job.paths.stderr}", flush=True)
    failed = 0
    for job in jobs:
        try:
            out = job.result()
            print(
                f"  {job.job_id}: parsed {out['parsed']} ({out['skipped']} already done), "
                f"{out['images_per_s']:.1f} images/s"
            )
        except Exception as e:  # one shard's failure must not hide the others' results
            failed += 1
            print(f"  {job.job_id} failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
    print(f"{len(jobs) - failed} of {len(jobs)} shards done; maps in {shards[0]['parsing_root']}")
    return 1 if failed else 0


def main(argv: list[str] | None = None, prog: str = "python sweeps/parse.py") -> int:
    args = build_parser(prog).parse_args(argv)
    from bilma.logs import configure

    configure()
    if args.shards < 1:
        print("error: --shards must be >= 1", file=sys.stderr)
        return 2
    shards = shard_options(args)
    from bilma.errors import run_command

    return run_command(lambda: _run(args, shards))


def _run(args: argparse.Namespace, shards: list[dict[str, Any]]) -> int:
    if args.dry_run:
        for s in shards:
            print(
                f"python -m bilma parse --dataset {s['dataset']} --root {s['root']} "
                f"--model {s['model']} --shard {s['shard'][0]}/{s['shard'][1]}"
                + (f" --labels {s['labels']}" if s["labels"] else "")
            )
        if args.backend == "slurm":
            params, profile = slurm_parameters(args.profile)
            print(f"SLURM job array of {len(shards)} tasks, profile {profile.name}: {params}")
        return 0
    if args.backend == "slurm":
        return submit_slurm(args, shards)
    return run_local(args, shards)
