"""The library's commands (`bilma train`, `eval`, `sync`, ...): their parsers and what they do.

`bilma/__main__.py` only dispatches here, or to the tools with a command line of their own
(`bilma sweep`, `bilma tables`, ...: `TOOLS`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bilma import resources
from bilma.config.load import add_override_args, merge_overrides
from bilma.errors import BilmaError, ConfigError, DataError, run_command
from bilma.logs import configure as configure_logging

# Commands that are whole tools with their own options (the same as the checkout's scripts).
TOOLS = {
    "sweep": ("bilma.sweep.cli", "run a grid of trials (python sweeps/launch.py)"),
    "tables": ("bilma.analysis.make_tables", "tables of finished sweeps (analysis/make_tables.py)"),
    "retrievals": (
        "bilma.analysis.show_retrievals",
        "top-10 retrievals per caption (analysis/show_retrievals.py)",
    ),
    "probe": ("bilma.analysis.branch_probe", "what MLM and MIM learned (analysis/branch_probe.py)"),
    "parse-shards": ("bilma.sweep.parse_shards", "parse over N shards (sweeps/parse.py)"),
    "readout": (
        "bilma.analysis.readout",
        "the local-matching study's readout (analysis/lookalike_readout.py)",
    ),
}


def _cmd_synth(args: argparse.Namespace) -> int:
    from bilma.data import formats, synth
    from bilma.data.info import format_table

    stats = synth.generate(
        args.out,
        ids=args.ids,
        images_per_id=args.images_per_id,
        seed=args.seed,
        height=args.height,
        width=args.width,
        workers=args.workers,
        local_scale=args.local_scale,
        chroma=args.chroma,
    )
    records = formats.read_annotations("synth", args.out)
    print(format_table(formats.dataset_stats(records)))
    print(f"wrote {args.out} in {stats.get('seconds', 0):.1f} s")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from bilma.data.info import run_data_info

    return run_data_info(args)


def _cmd_config(args: argparse.Namespace) -> int:
    from bilma import config

    if args.keys:
        print(config.describe_keys())
        return 0
    cfg = config.load_config(args.config, args.overrides)
    print(config.dump_yaml(cfg), end="")
    print(f"# trial id: {config.trial_id(cfg)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Train, then print the test metrics, the chance level and where the run lives."""
    from bilma.config import load_config
    from bilma.data import formats
    from bilma.evaluation.metrics import metrics_table
    from bilma.runs.trial_dir import TrialDir
    from bilma.training.trainer import Interrupted, train

    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return e.exit_code
    if not result:  # a non-zero rank of a distributed run
        return 0
    test_ids = {
        r.pid
        for r in formats.read_annotations(cfg.data.dataset, cfg.data.root)
        if r.split == "test"
    }
    sel = result["selection"]
    print(
        f"\ntext-to-image retrieval on the {cfg.data.dataset} test split, {len(test_ids)} identities "
        f"(chance R1 {100 / max(len(test_ids), 1):.2f}%):"
    )
    print(metrics_table({cfg.tracking.variant or cfg.model.name: result["metrics"]}))
    print(f"checkpoint of epoch {sel['epoch']}, selected by {sel['split']} {sel['metric']}")
    print(f"trial directory: {TrialDir.for_config(cfg).path}")
    if cfg.tracking.enabled:
        print(f"compare runs: mlflow ui --backend-store-uri {cfg.tracking.uri}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and args.overrides:
        print("error: overrides go with --config; a checkpoint carries its config", file=sys.stderr)
        return 2
    return run_eval(args.checkpoint, args.split, args.device, args.config, args.overrides)


def _cmd_sync(args: argparse.Namespace) -> int:
    from bilma.tracking.sync import cmd_sync

    return cmd_sync(args)


def _cmd_export_clip(args: argparse.Namespace) -> int:
    from bilma.export import export_clip

    info = export_clip(args.checkpoint, args.out)
    h, w = info["image_size"]
    print(f"wrote {args.out}: a transformers CLIP folder for {h}x{w} images (model.pretrained)")
    return 0


def _cmd_eval_lookalike(args: argparse.Namespace) -> int:
    return run_eval_lookalike(args.checkpoint, args.split, args.device)


def _cmd_pretrain_clip(args: argparse.Namespace) -> int:
    from bilma.config import load_config
    from bilma.export import build_pretrained_clip
    from bilma.training.trainer import Interrupted

    try:
        info = build_pretrained_clip(load_config(args.config, args.overrides), args.out)
    except Interrupted as e:  # the same command resumes the pretraining, then exports
        print(f"interrupted: {e}", file=sys.stderr)
        return e.exit_code
    print(f"pretrained CLIP in {args.out} (pretraining config {info['pretrain_config']})")
    return 0


def run_eval(
    checkpoint: Path | None,
    split: str,
    device_name: str | None = None,
    config: Path | None = None,
    overrides: list[str] | None = None,
) -> int:
    """Evaluate a saved checkpoint, or (`config`) the config's model as built, untrained:
    the zero-shot retrieval of its `model.pretrained` weights; print the metrics table."""
    import torch

    from bilma.data.datasets import load_data
    from bilma.evaluation.lookalike import groups_of_config
    from bilma.evaluation.metrics import metrics_table
    from bilma.evaluation.retrieval import evaluate

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if checkpoint is not None:
        from bilma.training.checkpoint import load_for_eval

        model, cfg, info = load_for_eval(checkpoint, device)
        data = load_data(cfg, check_parse_maps=False)
        what = f"{checkpoint} (epoch {info.get('epoch')})"
    else:
        from bilma.config import load_config
        from bilma.model.bilma import build_untrained

        cfg = load_config(config, overrides or [])
        data = load_data(cfg, check_parse_maps=False)
        model, source = build_untrained(cfg, data)
        model.to(device)
        what = f"{source} untrained (zero-shot, {config})"
    if not data.split(split)[0]:
        print(f"error: {cfg.data.dataset} at {cfg.data.root} has no {split} split")
        return 2
    print(f"evaluating {what} on the {split} split of {cfg.data.dataset}")
    metrics = evaluate(model, data, split, cfg, device, groups_of_config(cfg))
    print(metrics_table({f"{cfg.data.dataset} {split}": metrics}))
    return 0


def run_eval_lookalike(checkpoint: Path, split: str, device_name: str | None = None) -> int:
    """Evaluate a checkpoint on look-alike and ordinary queries and print the table."""
    import torch

    from bilma.data.datasets import load_data
    from bilma.evaluation.lookalike import lookalike_groups, metrics_by_group
    from bilma.evaluation.metrics import metrics_table
    from bilma.evaluation.retrieval import encode_split
    from bilma.training.checkpoint import load_for_eval

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, _ = load_for_eval(checkpoint, device)
    group_of = lookalike_groups(cfg.data.root)
    data = load_data(cfg, check_parse_maps=False)
    t, tp, v, vp = encode_split(model, data, split, cfg, device)
    rows = metrics_by_group(t @ v.T, tp, vp, group_of)
    print(f"{checkpoint} on the {split} split of {cfg.data.root}, by kind of query:")
    print(metrics_table(rows))
    return 0


def _add_data_commands(sub: Any) -> None:
    """synth, data-info, config, parse, parse-report."""
    p = sub.add_parser("synth", help="generate the synthetic pedestrian dataset")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--ids", type=int, default=1200, help="identities (default 1200)")
    p.add_argument("--images-per-id", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--local-scale", type=float, default=1.0, help="size of shoes, bag, hat, scarf")
    p.add_argument("--chroma", choices=("4:2:0", "4:4:4"), default="4:2:0")
    p.set_defaults(func=_cmd_synth)

    from bilma.data.info import add_data_info_args

    p = sub.add_parser("data-info", help="identities, images and captions per split")
    add_data_info_args(p)
    p.set_defaults(func=_cmd_data_info)

    p = sub.add_parser("config", help="print a resolved config and its trial id")
    p.add_argument("--config", type=Path, help="YAML file")
    p.add_argument("--keys", action="store_true", help="list every key with its default")
    add_override_args(p)
    p.set_defaults(func=_cmd_config)

    from bilma.parse.cli import add_parse_args, add_report_args, cmd_parse, cmd_report

    p = sub.add_parser("parse", help="write SemMIM parse maps with a local transformers parser")
    add_parse_args(p)
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("parse-report", help="class shares of parse maps; IoU against others")
    add_report_args(p)
    p.set_defaults(func=cmd_report)


def _add_study_commands(sub: Any) -> None:
    """export-clip, eval-lookalike, pretrain-clip: the laptop-scale study's tools."""
    p = sub.add_parser("export-clip", help="write a checkpoint's encoders as a CLIP folder")
    p.add_argument("--checkpoint", type=Path, required=True, help="e.g. runs/.../ckpt/best.pt")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pretrained")
    p.set_defaults(func=_cmd_export_clip)

    p = sub.add_parser(
        "eval-lookalike", help="retrieval on look-alike against ordinary identities (synth)"
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=_cmd_eval_lookalike)

    p = sub.add_parser(
        "pretrain-clip", help="build a pretrained CLIP folder once (train, then export-clip)"
    )
    p.add_argument("--config", type=Path, required=True, help="e.g. configs/synth_pretrain.yaml")
    p.add_argument("--out", type=Path, required=True, help="e.g. data/clip-synth-tiny")
    add_override_args(p)
    p.set_defaults(func=_cmd_pretrain_clip)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bilma", description="BiLMa and IRRA: train, evaluate, sweep, tabulate."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_module, help_) in TOOLS.items():  # listed in --help; `bilma.__main__` runs them
        sub.add_parser(name, help=help_, add_help=False)

    p = sub.add_parser("train", help="train (or resume, or report) one run")
    p.add_argument(
        "--config", type=Path, required=True, help="YAML file, e.g. configs/synth_tiny.yaml"
    )
    add_override_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a checkpoint, or a config's model untrained (zero-shot)"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path)
    what.add_argument(
        "--config",
        type=Path,
        help="zero-shot: the config's model as built, e.g. the weights of model.pretrained",
    )
    add_override_args(p)  # with --config
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sync", help="mirror trial directories into MLflow (idempotent)")
    from bilma.tracking.sync import add_sync_args

    add_sync_args(p)
    p.set_defaults(func=_cmd_sync)

    _add_data_commands(sub)
    _add_study_commands(sub)

    p = sub.add_parser("demo", help="train the tiny model on synthetic data (make demo)")
    p.add_argument("--config", type=Path, default=resources.CONFIGS / "synth_tiny.yaml")
    add_override_args(p)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    merge_overrides(args)  # `k=v` and `--set k=v` alike
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    return run_command(lambda: args.func(args), message=_one_line)


def _one_line(e: BilmaError) -> str:
    """A data error raised in a DataLoader worker carries the worker's traceback: its cause."""
    if isinstance(e, DataError | ConfigError):
        from bilma.data.datasets import root_cause

        return root_cause(e)
    return str(e)
