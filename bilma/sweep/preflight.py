"""Preflight: refuse a launch whose trials would fail on their inputs, before anything is
created or submitted.

A trial that starts on a machine without its dataset fails after its start-up with a good
message; on SLURM it first waits hours in the queue, and nine trials fail nine times the same
way. So every launch (any backend, `--dry-run` too) checks each distinct input of the trials
it would run, once per distinct value:

- `data.root`: the folder, the annotation file, the image folder, a sample of the images
  (a synthetic root is generated on first use: only one made with other parameters fails);
- `model.pretrained` (a local CLIP folder with config.json) and `data.tokenizer`;
- SemMIM (`mim.target: semantic` with `loss.mim_weight` > 0): parse maps of `mim.labels` for
  a sample of the training images, with the `bilma parse` command that writes them.

Each problem is one line naming the key, the value, how many trials it stops and the fix.
`--no-preflight` skips the checks for data that only the compute nodes see.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bilma.config import Config
from bilma.data import formats
from bilma.data.formats import parse_map_path
from bilma.data.records import DataError, Record
from bilma.data.splits import counts_of, split_problems, synth_counts
from bilma.data.synth_cache import synth_mismatch
from bilma.data.tokenizer import tokenizer_folder
from bilma.errors import PreflightError, PretrainedNotFound

PARSE_KEY = "mim.labels"  # the key of a missing-parse-maps problem (`bilma.sweep.chain` plans them)
SAMPLE = 24  # images (and parse maps) looked at per dataset: the first, the last, evenly between
DATASET_HELP = 'see README "Datasets" for where to obtain it and its layout'


@dataclass(frozen=True)
class Problem:
    """One input that stops `trials` trials: the key, its value and what is wrong + the fix."""

    key: str
    value: str
    message: str
    trials: int = 1

    def line(self) -> str:
        n = f"{self.trials} trial{'s' if self.trials != 1 else ''}"
        return f"{self.key}={self.value} ({n}): {self.message}"


def preflight(configs: Iterable[Config], disk_check: bool = True) -> list[Problem]:
    """The problems of the trials' inputs, each distinct check run once, in a stable order;
    with `disk_check`, also checkpoints that would not fit in paths.runs' free space."""
    checks: dict[tuple, tuple[Callable[[], Problem | None], int]] = {}
    annotations: dict[tuple[str, str], list[Record]] = {}

    def read(dataset: str, root: Path) -> list[Record]:
        """Each annotation file read once per preflight (CUHK-PEDES': 40k entries)."""
        key = (dataset, str(root))
        if key not in annotations:
            annotations[key] = formats.read_annotations(dataset, root)
        return annotations[key]

    def add(key: tuple, check: Callable[[], Problem | None]) -> None:
        fn, n = checks.get(key, (check, 0))
        checks[key] = (fn, n + 1)

    by_runs: dict[str, list[Config]] = {}  # the disk check's trials, per runs root
    for cfg in configs:
        d = cfg.data
        add(("runs", cfg.paths.runs), lambda c=cfg: unwritable("paths.runs", c.paths.runs))
        by_runs.setdefault(cfg.paths.runs, []).append(cfg)
        if d.dataset == "synth":  # generated (and its caches written) under data.root
            add(("synth-root", d.root, *_synth_key(cfg)), lambda c=cfg: _check_synth_root(c))
        add(("data", d.dataset, d.root, *_synth_key(cfg)), lambda c=cfg: _check_data(c, read))
        splits = (d.dataset, d.root, *_synth_key(cfg), cfg.train.batch_size, cfg.eval.select_split)
        add(("splits", *splits), lambda c=cfg: _check_splits(c, read))
        if cfg.model.pretrained:
            add(("pretrained", cfg.model.pretrained), lambda c=cfg: _check_pretrained(c))
        tokenizer = (d.dataset, d.root, d.tokenizer, cfg.model.pretrained)
        add(("tokenizer", *tokenizer), lambda c=cfg: _check_tokenizer(c))
        if needs_parse_maps(cfg):
            add(("parse", *parse_group(cfg)), lambda c=cfg: _check_parse_maps(c, read))
    out = []
    for fn, n in checks.values():
        problem = fn()
        if problem is not None:
            out.append(Problem(problem.key, problem.value, problem.message, n))
    if disk_check:
        from bilma.sweep.estimate import disk_problem  # bilma/sweep/estimate.py

        for runs, cfgs in by_runs.items():
            if (message := disk_problem(runs, cfgs)) is not None:
                out.append(Problem("paths.runs", runs, message, len(cfgs)))
    return _once(out)


def raise_problems(problems: list[Problem]) -> None:
    """Raise one PreflightError listing every problem (one line each), if there is any."""
    if problems:
        raise PreflightError(report(problems))


def report(problems: list[Problem]) -> str:
    head = f"{len(problems)} problem{'s' if len(problems) != 1 else ''} before launch"
    body = "\n".join(f"  {p.line()}" for p in problems)
    return (
        f"{head} (nothing was created or submitted):\n{body}\n"
        "fix them and run the same command again; --no-preflight skips these checks "
        "(for data that only the compute nodes see)"
    )


def _once(problems: list[Problem]) -> list[Problem]:
    """Merge problems with the same line (e.g. two check keys finding one missing folder)."""
    merged: dict[tuple[str, str, str], int] = {}
    for p in problems:
        k = (p.key, p.value, p.message)
        merged[k] = merged.get(k, 0) + p.trials
    return [Problem(k, v, m, n) for (k, v, m), n in merged.items()]


def _synth_key(cfg: Config) -> tuple:
    d = cfg.data
    if d.dataset != "synth":
        return ()
    return (
        d.synth_ids,
        d.synth_eval_ids,
        d.synth_images_per_id,
        d.synth_seed,
        tuple(d.image_size),
        d.synth_pool,
        d.synth_lookalike,
        d.synth_lookalike_share,
        d.synth_local_scale,
        d.synth_full_chroma,
    )


# ----------------------------------------------------------------------------- the checks


def _check_data(cfg: Config, read: Callable[[str, Path], list[Record]]) -> Problem | None:
    d = cfg.data
    root = Path(d.root)
    if d.dataset == "synth":
        problem = synth_mismatch(d)  # else generated on first use (or matching)
        return Problem("data.root", d.root, problem) if problem else None
    if not root.is_dir():
        what = "no such folder" if not root.exists() else "not a folder"
        return Problem(
            "data.root",
            d.root,
            f"{what}; the {d.dataset} dataset is not on this machine: {DATASET_HELP}, then set "
            f"--set data.root=<its folder>",
        )
    try:
        records = read(d.dataset, root)
    except DataError as e:
        return Problem("data.root", d.root, str(e))
    images = formats.image_dir(d.dataset, root)
    if not images.is_dir():
        return Problem(
            "data.root",
            d.root,
            f"{root} holds the annotations but no image folder {images}; unpack the images "
            f"there ({DATASET_HELP})",
        )
    missing = [r.image_path for r in _sample(records) if not (images / r.image_path).is_file()]
    if missing:
        return Problem(
            "data.root",
            d.root,
            f"{len(missing)} of {min(SAMPLE, len(records))} images looked at are missing under "
            f"{images} (e.g. {missing[0]}); complete the image folder ({DATASET_HELP})",
        )
    return None


def _check_splits(cfg: Config, read: Callable[[str, Path], list[Record]]) -> Problem | None:
    """Enough identities to train and rank, a batch no larger than the train split. Synthetic
    counts follow from the config; a dataset that cannot be read is `_check_data`'s problem."""
    if cfg.data.dataset == "synth":
        counts = synth_counts(cfg)
    else:
        try:
            counts = counts_of(read(cfg.data.dataset, Path(cfg.data.root)))
        except (DataError, OSError):
            return None
    problems = split_problems(counts, cfg)
    if not problems:
        return None
    p = problems[0]
    return Problem(p.key, str(p.value), p.message)


def _check_synth_root(cfg: Config) -> Problem | None:
    """A synthetic root the trials would write into but cannot (a root made with other
    parameters is `_check_data`'s problem)."""
    if synth_mismatch(cfg.data) is not None:
        return None
    return unwritable("data.root", cfg.data.root)


def unwritable(key: str, folder: str | Path) -> Problem | None:
    """A folder the trials must write into (or create) that they cannot: read-only file
    system, no permission, or a file in its place."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return Problem(key, str(folder), f"{existing} is a file, not a folder; point {key} "
                       f"at a folder (--set {key}=<folder>)")  # fmt: skip
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    why = "a read-only file system" if read_only else "no permission to write there"
    return Problem(
        key,
        str(folder),
        f"{existing} is not writable ({why}); point {key} at a writable folder "
        f"(--set {key}=<folder>)",
    )


def _check_pretrained(cfg: Config) -> Problem | None:
    folder = Path(cfg.model.pretrained)
    if (folder / "config.json").is_file():
        return None
    if folder.name == "clip-synth-study":  # the local-matching study's tiny CLIP
        fix = "build it with `make clip-synth-study` (about 10 minutes on 2 cores)"
    elif "clip-synth" in folder.name:  # the tiny CLIP pretrained here on synthetic pedestrians
        fix = f"build it with `make clip-synth CLIP_SYNTH={folder}` (about 10 minutes on 2 cores)"
    else:
        fix = PretrainedNotFound.fix(folder)
    return Problem(
        "model.pretrained", cfg.model.pretrained, f"not a local folder with config.json; {fix}"
    )


def _check_tokenizer(cfg: Config) -> Problem | None:
    d = cfg.data
    try:
        folder = tokenizer_folder(cfg)
    except DataError as e:  # a real dataset with neither data.tokenizer nor model.pretrained
        return Problem("model.pretrained", "null", str(e))
    if not d.tokenizer:
        return None  # the CLIP folder (its own check) or the synthetic dataset's own
    lacking = [f for f in ("vocab.json", "merges.txt") if not (folder / f).is_file()]
    if not lacking:
        return None
    return Problem(
        "data.tokenizer",
        d.tokenizer,
        f"no {' or '.join(lacking)} in that folder; point data.tokenizer at a CLIP model "
        "folder or a tokenizer made by `python -m bilma synth`",
    )


def needs_parse_maps(cfg: Config) -> bool:
    """SemMIM on a dataset that does not bring its own maps (the synthetic one does)."""
    return cfg.mim.target == "semantic" and cfg.loss.mim_weight > 0 and cfg.data.dataset != "synth"


def parse_group(cfg: Config) -> tuple[str, str, str | None, str]:
    """What decides which parse maps a trial reads: dataset, root, parsing root, label set."""
    d = cfg.data
    return (d.dataset, d.root, d.parsing_root, cfg.mim.labels)


def parse_maps_problem(cfg: Config) -> Problem | None:
    """The missing-parse-maps problem of one trial's config (its dataset read afresh)."""
    return _check_parse_maps(cfg, formats.read_annotations)


def _check_parse_maps(cfg: Config, read: Callable[[str, Path], list[Record]]) -> Problem | None:
    d = cfg.data
    root = Path(d.root)
    try:
        records = read(d.dataset, root)
    except DataError:
        return None  # the data check says why
    parsing_root = Path(d.parsing_root) if d.parsing_root else root / "parsing"
    train = [r for r in records if r.split == "train"]
    sample = _sample(train)
    missing = [
        r for r in sample if not parse_map_path(parsing_root, cfg.mim.labels, r.image_path).exists()
    ]
    if not missing:
        return None
    first = parse_map_path(parsing_root, cfg.mim.labels, missing[0].image_path)
    command = [
        "python -m bilma parse",
        f"--dataset {d.dataset}",
        f"--root {d.root}",
        "--model <parser folder>",
        f"--labels {cfg.mim.labels}",
    ]
    if d.parsing_root:
        command.append(f"--parsing-root {d.parsing_root}")
    return Problem(
        PARSE_KEY,
        cfg.mim.labels,
        f"{len(missing)} of {len(sample)} training images looked at have no parse map "
        f"(e.g. {first}); add `--parser <parser folder>` to this launch to parse them first "
        f"(a chained job), or write them with `{' '.join(command)}` (or sweeps/parse.py over "
        "shards), or set mim.target=pixel or mim.target=none",
    )


def _sample(records: list[Record]) -> list[Record]:
    """At most SAMPLE records, evenly spaced, the first and the last included."""
    n = len(records)
    if n <= SAMPLE:
        return list(records)
    step = (n - 1) / (SAMPLE - 1)
    return [records[round(i * step)] for i in range(SAMPLE)]


def skipped_note() -> str:
    return "preflight skipped (--no-preflight): inputs are checked by each trial when it starts"
