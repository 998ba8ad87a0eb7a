"""Whether a dataset's splits can train and evaluate a model, checked before any work.

One identity in the train split makes every pair a positive (the ID classifier and the
matching losses learn nothing); a batch larger than the train split gives zero steps; one
identity in the test split ranks every query's gallery perfectly (R1 = mAP = 100 whatever the
model). The launcher's preflight and the trainer both ask `split_problems`; for the synthetic
dataset the counts follow from the config, so nothing needs generating to know them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bilma.config import Config
from bilma.data.records import SPLITS, Record

MIN_IDS = 2  # per split that is trained on or ranked


@dataclass(frozen=True)
class SplitCount:
    ids: int
    pairs: int  # (image, caption) pairs: a train split's samples per epoch


def counts_of(records: Iterable[Record]) -> dict[str, SplitCount]:
    """Identities and (image, caption) pairs of each split of read records."""
    ids: dict[str, set[int]] = {s: set() for s in SPLITS}
    pairs = dict.fromkeys(SPLITS, 0)
    for r in records:
        ids[r.split].add(r.pid)
        pairs[r.split] += len(r.captions)
    return {s: SplitCount(len(ids[s]), pairs[s]) for s in SPLITS}


def synth_counts(cfg: Config) -> dict[str, SplitCount]:
    """What `python -m bilma synth` will make of the config's data section (two captions per
    image), without making it."""
    from bilma.data.synth.generation import split_sizes

    d = cfg.data
    sizes = split_sizes(d.synth_ids, d.synth_eval_ids, d.synth_eval_ids)
    return {s: SplitCount(n, n * d.synth_images_per_id * 2) for s, n in sizes.items()}


def _ids(n: int) -> str:
    return f"{n} identit{'y' if n == 1 else 'ies'}"


@dataclass(frozen=True)
class SplitProblem:
    """The key whose value makes the splits unusable, and what is wrong + the fix."""

    key: str
    value: object
    message: str

    def line(self) -> str:
        return f"{self.key} = {self.value}: {self.message}"


def split_problems(
    counts: dict[str, SplitCount], cfg: Config, world: int = 1
) -> list[SplitProblem]:
    """What stops the splits from training or evaluating a model. (No val split at all is
    fine: the trainer then selects checkpoints on test.)"""
    d, c = cfg.data, counts
    if d.dataset == "synth":
        key, value = "data.synth_ids", d.synth_ids
        fix = (
            f"its splits are train/val/test = {c['train'].ids}/{c['val'].ids}/{c['test'].ids} "
            "identities; raise data.synth_ids to 20 or more (2 test identities)"
        )
    else:
        key, value = "data.root", d.root
        fix = f"check the split labels of the {d.dataset} annotation file"
    out = []
    if c["train"].ids < MIN_IDS:
        out.append(
            SplitProblem(
                key,
                value,
                f"the train split has {_ids(c['train'].ids)}; training needs at least {MIN_IDS} "
                f"({fix})",
            )
        )
    if c["test"].ids < MIN_IDS:
        out.append(
            SplitProblem(
                key,
                value,
                f"the test split has {_ids(c['test'].ids)}; ranking needs at least {MIN_IDS} "
                f"(with one, R1 = mAP = 100 whatever the model) ({fix})",
            )
        )
    if cfg.eval.select_split == "val" and c["val"].ids == 1:
        out.append(
            SplitProblem(
                key,
                value,
                "the val split has 1 identity, so every epoch scores 100 and checkpoint "
                f"selection is arbitrary ({fix}, or set eval.select_split=test)",
            )
        )
    per_process = c["train"].pairs // max(world, 1)
    if c["train"].ids and cfg.train.batch_size > per_process:
        each = " per process" if world > 1 else ""
        out.append(
            SplitProblem(
                "train.batch_size",
                cfg.train.batch_size,
                f"larger than the {per_process} training pairs{each} of {d.root}; set "
                f"train.batch_size to at most {per_process}",
            )
        )
    return out
