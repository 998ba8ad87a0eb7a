"""What a study costs: the GPU-hours (or CPU-hours) and checkpoint disk its trials will need,
estimated before anything runs (`--dry-run`, the preflight's disk check), and what its
finished trials used (the totals under `--status` and the tables).

A trial's hours = samples it trains (epochs x steps per epoch x batch) x device-seconds per
sample of finished trials of the same workload (model.name, with or without MIM) under the
same runs root, from their result.json (gpu_hours or cpu_hours over train_samples); without
one, the figure recorded in bilma/resources/usage.yaml, which says where it came from. Steps
per epoch come from the annotation file's training pairs, or (dataset not on this machine) the
recorded size of the dataset. Checkpoint sizes: the mean ckpt/last.pt and best.pt of finished
trials of the same workload and dataset, else the recorded sizes adjusted to the identities;
`train.keep_checkpoints` says which files stay (`bilma.runs.retention.footprint`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bilma import resources
from bilma.config import Config
from bilma.runs import retention, schema
from bilma.runs.totals import hours_text, is_positive
from bilma.runs.trial_dir import find_trials

GB = 1e9
HOUR = 3600.0
RECORDED = "recorded figure: "  # the start of a source that is bilma/resources/usage.yaml's


@dataclass(frozen=True)
class Workload:
    """Trials that cost alike per sample: the model and whether MIM runs."""

    model: str
    mim: bool

    @classmethod
    def of(cls, cfg: Config) -> Workload:
        return cls(cfg.model.name, cfg.mim.target != "none" and cfg.loss.mim_weight > 0)

    def __str__(self) -> str:
        return self.model + (" +MIM" if self.mim else "")


@dataclass
class Finished:
    """A finished trial under the runs root: what it used and its checkpoint files."""

    workload: Workload
    dataset: str
    device: str  # "gpu" or "cpu"
    seconds_per_sample: float | None
    last_bytes: int | None
    best_bytes: int | None


@cache
def figures() -> dict[str, Any]:
    """bilma/resources/usage.yaml."""
    return yaml.safe_load(resources.USAGE.read_text())


def finished_trials(runs_root: str | Path) -> list[Finished]:
    """Every done trial under `runs_root` (any study) whose result.json says what it used."""
    out = []
    root = Path(runs_root)
    if not root.is_dir():
        return out
    for path in find_trials(root):
        try:
            result = json.loads((path / schema.RESULT_FILE).read_text())
            cfg = yaml.load((path / schema.CONFIG_FILE).read_text(), Loader=_LOADER)
        except (OSError, ValueError, yaml.YAMLError):
            continue  # not done, or unreadable: the tables and --status say so
        if not isinstance(result, dict) or not isinstance(cfg, dict):
            continue
        gpu, cpu, samples = (result.get(k) for k in ("gpu_hours", "cpu_hours", "train_samples"))
        device = "gpu" if is_positive(gpu) else "cpu"
        hours = gpu if device == "gpu" else cpu
        per_sample = hours * HOUR / samples if is_positive(hours) and is_positive(samples) else None
        ckpt = path / schema.CKPT_DIR
        m, mim, loss = (cfg.get(k) or {} for k in ("model", "mim", "loss"))
        workload = Workload(
            str(m.get("name")),
            mim.get("target", "none") != "none" and float(loss.get("mim_weight", 1.0)) > 0,
        )
        out.append(
            Finished(
                workload,
                str((cfg.get("data") or {}).get("dataset")),
                device,
                per_sample,
                _size(ckpt / schema.LAST_CKPT),
                _size(ckpt / schema.BEST_CKPT),
            )
        )
    return out


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


# ----------------------------------------------------------------------------- one trial


@dataclass
class TrialCost:
    workload: Workload
    device: str  # "gpu" or "cpu"
    hours: float
    time_source: str
    last_bytes: float
    best_bytes: float
    size_source: str
    epochs: int
    keep: str  # train.keep_checkpoints

    def footprint(self, keep: str | None = None) -> tuple[float, float]:
        """(bytes kept once done, most bytes while training) under `keep` (default: its own)."""
        return retention.footprint(keep or self.keep, self.epochs, self.last_bytes, self.best_bytes)

    @property
    def kept_bytes(self) -> float:
        return self.footprint()[0]


class Estimator:
    """Costs of trials under one runs root (its finished trials read once)."""

    def __init__(self, runs_root: str | Path):
        self.runs_root = Path(runs_root)
        self.finished = finished_trials(runs_root)
        self._train_counts: dict[tuple, tuple[int, int, str]] = {}

    def cost(self, cfg: Config, counted: bool = False) -> TrialCost:
        """A trial's cost; `counted`: without finished trials, the checkpoint sizes of its own
        model (parameters counted, seconds) instead of the recorded ones."""
        w = Workload.of(cfg)
        ids, pairs, _ = self.train_split(cfg)
        device, per_sample, time_source = self.per_sample(w)
        last, best, size_source = self.checkpoint_sizes(cfg, w, ids, counted)
        hours = samples_trained(cfg, pairs) * per_sample / HOUR
        t = cfg.train
        return TrialCost(
            w, device, hours, time_source, last, best, size_source, t.epochs, t.keep_checkpoints
        )

    def per_sample(self, w: Workload) -> tuple[str, float, str]:
        """(device, device-seconds per sample, where the figure came from)."""
        known = [f for f in self.finished if f.workload == w and f.seconds_per_sample]
        for device in ("gpu", "cpu"):  # GPU trials first: a study runs where they ran
            same = [f.seconds_per_sample for f in known if f.device == device]
            if same:
                n = len(same)
                where = f"from {n} finished {w} trial{'s' if n != 1 else ''}"
                return device, _mean(same), where
        fig = figures()["throughput"][w.model]
        return fig["device"], float(fig["mim" if w.mim else "no_mim"]), RECORDED + fig["label"]

    def checkpoint_sizes(
        self, cfg: Config, w: Workload, ids: int, counted: bool = False
    ) -> tuple[float, float, str]:
        """(last.pt bytes, best.pt bytes, where the figures came from)."""
        same = [f for f in self.finished if f.workload == w and f.dataset == cfg.data.dataset]
        best = [f.best_bytes for f in same if f.best_bytes]
        if best:
            lasts = [f.last_bytes for f in same if f.last_bytes]
            # A trial kept under train.keep_checkpoints=best has no last.pt left: weights and
            # Adam's two moments are three times the weights.
            last = _mean(lasts) if lasts else 3 * _mean(best)
            n = len(best)
            where = f"the size of {n} finished {w} trial{'s' if n != 1 else ''}"
            return last, _mean(best), f"{where} on {cfg.data.dataset}"
        if counted:
            n = count_parameters(_architecture(cfg, ids))
            # last.pt: fp32 weights and Adam's two moments; best.pt: the weights
            return 12.0 * n, 4.0 * n, f"{n / 1e6:.1f} M parameters counted"
        fig = figures()["checkpoints"][w.model]
        per_id = fig["embed_dim"] * 4 * (ids - fig["ids"])  # the ID classifier's weights
        last = fig["last_pt_bytes"] + 3 * per_id
        best = fig["best_pt_bytes"] + per_id
        return last, best, f"{RECORDED}{w.model}'s sizes for the dataset's identities"

    def train_split(self, cfg: Config) -> tuple[int, int, str]:
        """(training identities, training pairs, where from) of the trial's dataset."""
        d = cfg.data
        key = (d.dataset, d.root, d.synth_ids, d.synth_images_per_id)
        if key not in self._train_counts:
            self._train_counts[key] = _train_split(cfg)
        return self._train_counts[key]


def _train_split(cfg: Config) -> tuple[int, int, str]:
    from bilma.data.splits import counts_of, synth_counts

    d = cfg.data
    if d.dataset == "synth":
        train = synth_counts(cfg)["train"]
        return train.ids, train.pairs, "the synthetic config"
    from bilma.data import formats
    from bilma.data.records import DataError

    try:
        train = counts_of(formats.read_annotations(d.dataset, Path(d.root)))["train"]
        return train.ids, train.pairs, f"{d.root}"
    except (DataError, OSError):  # not on this machine: the recorded size
        fig = figures()["datasets"][d.dataset]
        return int(fig["ids"]), int(fig["pairs"]), f"recorded: {fig['source']}"


def _architecture(cfg: Config, ids: int) -> tuple:
    """What decides a model's parameters: the keys its encoders and heads are built from."""
    m, mim, loss = cfg.model, cfg.mim, cfg.loss
    return (
        m.name, m.embed_dim, m.cross_depth, m.cross_heads, tuple(cfg.data.image_size),
        cfg.data.text_length, mim.target, mim.depth, mim.cross_module, mim.labels,
        loss.mim_weight > 0, loss.id_weight > 0, cfg.mlm.enabled, loss.mlm_weight > 0, ids,
        _vocab_size(cfg),
    )  # fmt: skip


def _vocab_size(cfg: Config) -> int:
    """The tokenizer's vocabulary: the synthetic dataset's own when it is there, else CLIP's."""
    if cfg.data.dataset == "synth" and not (cfg.data.tokenizer or cfg.model.pretrained):
        return _synth_vocab_size(str(Path(cfg.data.root).resolve()))
    return CLIP_VOCAB


@cache
def _synth_vocab_size(root: str) -> int:
    """Read once per dataset and launch (1,000 trials of one dataset: 1 s read 1,000 times)."""
    try:
        return len(json.loads((Path(root) / "tokenizer" / "vocab.json").read_text()))
    except (OSError, ValueError):
        return CLIP_VOCAB


CLIP_VOCAB = 49408


@cache
def count_parameters(arch: tuple) -> int:
    """Parameters of the model of `_architecture`, built on the meta device (no memory;
    importing the encoders' library takes seconds, once)."""
    import torch

    from bilma.config import load_config
    from bilma.model.bilma import BiLMa, head_spec
    from bilma.model.clip import build_encoders, spec_from_config

    name, embed, depth, heads, size, length, target, mim_depth, module, labels, *rest = arch
    mim_on, id_on, mlm_on, mlm_weight, ids, vocab = rest
    cfg = load_config(None, [
        f"model.name={name}", f"model.embed_dim={embed}", f"model.cross_depth={depth}",
        f"model.cross_heads={heads}", f"data.image_size=[{size[0]},{size[1]}]",
        f"data.text_length={length}", f"mim.target={target}", f"mim.depth={mim_depth}",
        f"mim.cross_module={module}", f"mim.labels={labels}",
        f"loss.mim_weight={1.0 if mim_on else 0.0}", f"loss.id_weight={1.0 if id_on else 0.0}",
        f"mlm.enabled={str(mlm_on).lower()}", f"loss.mlm_weight={1.0 if mlm_weight else 0.0}",
    ])  # fmt: skip
    with torch.device("meta"):
        encoders = build_encoders(spec_from_config(cfg, vocab, vocab - 1))
        model = BiLMa(encoders, head_spec(cfg, max(ids, 1), encoders.spec.patch), cfg)
    return sum(p.numel() for p in model.parameters())


def samples_trained(cfg: Config, pairs: int) -> int:
    """epochs x steps per epoch x batch, as the trainer steps (one process)."""
    t = cfg.train
    steps = pairs // t.batch_size if t.drop_last else -(-pairs // t.batch_size)
    steps = max(1, min(steps, t.max_steps_per_epoch or steps))
    return t.epochs * steps * t.batch_size


# ----------------------------------------------------------------------------- a study


@dataclass
class Group:
    workload: Workload
    device: str
    costs: list[TrialCost] = field(default_factory=list)

    @property
    def hours(self) -> float:
        return sum(c.hours for c in self.costs)

    @property
    def kept_bytes(self) -> float:
        return sum(c.kept_bytes for c in self.costs)


def unit(device: str) -> str:
    return "GPU" if device == "gpu" else "CPU"


def estimate_lines(configs: Iterable[Config]) -> list[str]:
    """The dry-run's lines: per workload, trials x hours each = hours, and the checkpoint disk;
    a total line when there are several workloads."""
    configs = list(configs)
    if not configs:
        return ["estimate: no trial to run"]
    estimators: dict[str, Estimator] = {}
    groups: dict[tuple[Workload, str], Group] = {}
    sources: dict[tuple[Workload, str], tuple[str, str]] = {}
    for cfg in configs:
        est = estimators.setdefault(cfg.paths.runs, Estimator(cfg.paths.runs))
        c = est.cost(cfg)
        key = (c.workload, c.device)
        groups.setdefault(key, Group(c.workload, c.device)).costs.append(c)
        sources.setdefault(key, (c.time_source, c.size_source))
    lines = []
    for key, g in groups.items():
        n, u = len(g.costs), unit(g.device)
        time_source, size_source = sources[key]
        lines.append(
            f"estimate: {n} {g.workload} trial{'s' if n != 1 else ''} x ~{hours_text(g.hours / n)} "
            f"{u}-h = {hours_text(g.hours)} {u}-hours ({time_source}); checkpoints ~{_gb(g.kept_bytes / n)} "
            f"each, {_gb(g.kept_bytes)} in all ({size_source})"
        )
    policies = sorted({cfg.train.keep_checkpoints for cfg in configs})
    if len(groups) > 1:
        hours = {}
        for g in groups.values():
            hours[g.device] = hours.get(g.device, 0.0) + g.hours
        spent = ", ".join(
            f"{hours_text(h)} {unit(d)}-hours" for d, h in sorted(hours.items(), reverse=True)
        )
        total = sum(g.kept_bytes for g in groups.values())
        lines.append(
            f"estimate in all: {len(configs)} trials, {spent}, {_gb(total)} of checkpoints "
            f"(train.keep_checkpoints={'/'.join(policies)})"
        )
    if any(RECORDED in s for pair in sources.values() for s in pair):
        lines.append("recorded figures: bilma/resources/usage.yaml (each with its source)")
    return lines


def disk_problem(runs_root: str, configs: list[Config]) -> str | None:
    """The preflight's disk check of one runs root: None if the checkpoints of `configs` fit
    in its free space, else the problem with the numbers and the fixes."""
    est = Estimator(runs_root)
    costs = [est.cost(cfg) for cfg in configs]
    where = _existing(Path(runs_root))
    free = shutil.disk_usage(where).free
    if disk_needed(costs) <= free:
        return None
    # Before refusing: the trials' own models, not the recorded default-sized ones (a small
    # test model's checkpoints are a hundredth of them).
    costs = [est.cost(cfg, counted=True) for cfg in configs]
    need = disk_needed(costs)
    if need <= free:
        return None
    n = len(costs)
    hint = ""
    if any(c.keep != "best" for c in costs):
        hint = (
            f"--set train.keep_checkpoints=best (best.pt only, ~{_gb(disk_needed(costs, 'best'))}"
            "), "
        )
    return (
        f"the checkpoints of {n} trial{'s' if n != 1 else ''} need ~{_gb(need)} and {where} "
        f"has {_gb(free)} free; {hint}point paths.runs at a larger disk, or pass --no-disk-check"
    )


def disk_needed(costs: list[TrialCost], keep: str | None = None) -> float:
    """What the done trials keep, plus the extra one trial holds while it trains (its last.pt
    under `best`); several trials training side by side hold that extra each."""
    footprints = [c.footprint(keep) for c in costs]
    return sum(k for k, _ in footprints) + max(peak - k for k, peak in footprints)


def _existing(path: Path) -> Path:
    path = path.absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def _gb(n: float) -> str:
    if n >= 10 * GB:
        return f"{n / GB:,.0f} GB"
    if n >= 0.1 * GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 1e6:.0f} MB"


# ----------------------------------------------------------------------------- totals
