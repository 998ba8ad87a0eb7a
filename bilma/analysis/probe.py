"""What the MLM and MIM branches of finished trials learned, measured on held-out pairs.

Each trial's selected checkpoint (ckpt/best.pt) reads image-caption pairs of the val split,
without augmentation, with MLM and MIM masks drawn from fixed seeds (the same for every trial):

- MLM: accuracy on the masked tokens, read against the caption's own image and against the
  image of another identity: the gap is what the image tells the text branch.
- MIM, semantic targets: accuracy of the masked patches' body-part class, with the own caption
  and with another identity's caption, beside the position prior (the most frequent class at
  each patch position over the same masked patches: what a text-blind guess gets).
- MIM, pixel targets: the normalised-pixel MSE with the own and another caption, and of
  predicting zeros (each patch's mean).

`train_loss_parts` reads the per-part training losses per epoch from metrics.jsonl.
`python analysis/branch_probe.py` prints the table and draws the curves.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from bilma.runs.trial_dir import RECORD_FIELDS, TrialDir

# Training-record fields that are not loss parts.
_NOT_PARTS = (*RECORD_FIELDS, "loss", "lr", "samples_per_s")
PROBE_SEED = 0


def probe_config(cfg):
    """cfg with the val pairs read as at test time (no flip, pad or erasing) and the MLM masks
    of a fixed seed, so that every trial of a study is probed on the same tokens."""
    data = dataclasses.replace(cfg.data, hflip=False, pad=0, erase=0.0, num_workers=0)
    train = dataclasses.replace(cfg.train, seed=PROBE_SEED)
    return dataclasses.replace(cfg, data=data, train=train)


@torch.inference_mode()
def probe_trial(
    trial_path: str | Path, max_pairs: int = 800, batch_size: int = 64, device: str = "cpu"
) -> dict[str, float]:
    """The branch measurements of one trial (keys present only for the branches it has)."""
    from bilma.data.datasets import TrainSet, load_data
    from bilma.model.bilma import trim_batch
    from bilma.training.checkpoint import load_for_eval

    dev = torch.device(device)
    model, cfg, _ = load_for_eval(TrialDir(trial_path).best_ckpt, dev)
    spec = model.heads_spec
    if not spec.mlm and spec.mim_target == "none":
        return {}
    cfg = probe_config(cfg)
    model.cfg = cfg
    data = load_data(cfg, check_parse_maps=False)
    pairs = TrainSet(data, cfg, split="val", uint8=False)  # finished on the CPU
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(PROBE_SEED))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(pairs, order[:max_pairs].tolist()), batch_size=batch_size
    )
    acc = _Counts()
    for i, batch in enumerate(loader):
        batch = {k: v.to(dev) for k, v in batch.items()}
        batch = trim_batch(batch, keep_mlm=cfg.mlm.attend_padding)
        pids = batch["pids"]
        other = torch.roll(torch.arange(len(pids), device=dev), 1)
        differ = pids != pids[other]  # pairs whose partner shows another identity
        if spec.mlm:
            _probe_mlm(model, batch, other, differ, acc)
        if spec.mim_target != "none":
            _probe_mim(model, batch, other, differ, i, acc)
    return acc.result()


def _probe_mlm(model, batch, other, differ, acc: _Counts) -> None:
    image_tokens = model.encoders.encode_image(batch["images"])
    masked_text = model.encoders.encode_text(batch["mlm_ids"])
    rows = (batch["mlm_labels"] != -100).nonzero()[:, 0]
    keep = differ[rows]
    for name, tokens in (("mlm_acc", image_tokens), ("mlm_acc_other", image_tokens[other])):
        logits, labels = model.mlm_predict(tokens, masked_text, batch)
        acc.add(name, (logits.argmax(-1) == labels)[keep])


def _probe_mim(model, batch, other, differ, i: int, acc: _Counts) -> None:
    from bilma.model import losses
    from bilma.model.bilma import patchify

    swapped = dict(batch)
    for key in ("caption_ids", "mlm_ids"):
        if key in batch:
            swapped[key] = batch[key][other]
    semantic = model.heads_spec.mim_target == "semantic"
    images = batch["images"]
    # the targets do not depend on the caption: computed once for both readings
    if semantic:
        labels = batch["patch_labels"]
        target = labels.argmax(-1) if labels.dtype.is_floating_point else labels
    else:
        target = patchify(images.float(), model.encoders.spec.patch)
    for name, b in (("own", batch), ("other", swapped)):
        # the same patches masked for both captions
        b = {**b, "mim_generator": torch.Generator().manual_seed(10_000 + i)}
        pred, mask = model.mim_predict(images, b)
        mask = mask & differ[:, None]
        suffix = "" if name == "own" else "_other"
        if semantic:
            valid = mask & (target != -100)
            acc.add("mim_acc" + suffix, (pred.argmax(-1) == target)[valid])
            if name == "own":
                acc.add_prior(target, valid, pred.shape[-1])
        else:
            norm = model.cfg.mim.norm_pixels
            n = int(mask.sum())
            acc.add_mean(
                "mim_mse" + suffix, float(losses.mim_pixel_loss(pred, target, mask, norm)), n
            )
            if name == "own":
                zero = torch.zeros_like(pred)
                acc.add_mean(
                    "mim_mse_zero", float(losses.mim_pixel_loss(zero, target, mask, norm)), n
                )


class _Counts:
    """Running percentages (hits / total), means weighted by counts, and the position prior."""

    def __init__(self) -> None:
        self.hits: dict[str, float] = {}
        self.total: dict[str, int] = {}
        self.prior: torch.Tensor | None = None  # [positions, classes] counts of masked targets

    def add(self, name: str, correct: torch.Tensor) -> None:
        self.hits[name] = self.hits.get(name, 0.0) + 100.0 * float(correct.sum())
        self.total[name] = self.total.get(name, 0) + int(correct.numel())

    def add_mean(self, name: str, value: float, n: int) -> None:
        if n:
            self.hits[name] = self.hits.get(name, 0.0) + value * n
            self.total[name] = self.total.get(name, 0) + n

    def add_prior(self, target: torch.Tensor, valid: torch.Tensor, classes: int) -> None:
        pos = torch.arange(target.shape[1], device=target.device).expand_as(target)
        flat = pos[valid] * classes + target[valid]
        counts = torch.bincount(flat, minlength=target.shape[1] * classes).view(-1, classes)
        self.prior = counts.cpu() if self.prior is None else self.prior + counts.cpu()

    def result(self) -> dict[str, float]:
        out = {k: self.hits[k] / self.total[k] for k in self.hits if self.total[k]}
        if self.prior is not None and int(self.prior.sum()):
            out["mim_prior"] = (
                100.0 * float(self.prior.max(dim=1).values.sum()) / float(self.prior.sum())
            )
        return out


def train_loss_parts(trial_path: str | Path) -> dict[str, dict[int, float]]:
    """part -> {epoch: the epoch's (weighted) training loss of that part} from metrics.jsonl."""
    parts: dict[str, dict[int, float]] = {}
    for rec in TrialDir(trial_path).read_metrics():
        if rec.get("split") != "train":
            continue
        for k, v in rec.items():
            if k not in _NOT_PARTS and isinstance(v, int | float) and math.isfinite(v):
                parts.setdefault(k, {})[int(rec["epoch"])] = float(v)
    return parts


def summarize(
    rows: Iterable[tuple[str, dict[str, float]]],
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> measurement -> (mean, sample std, n) over its trials."""
    from bilma.analysis.stats import mean, sample_std

    by: dict[str, dict[str, list[float]]] = {}
    for variant, values in rows:
        by.setdefault(variant, {})  # a variant without MLM or MIM keeps its row
        for k, v in values.items():
            by.setdefault(variant, {}).setdefault(k, []).append(v)
    return {
        variant: {k: (mean(vs), sample_std(vs), len(vs)) for k, vs in ms.items()}
        for variant, ms in by.items()
    }


COLUMNS = (
    ("mlm_acc", "MLM acc"),
    ("mlm_acc_other", "MLM acc, other image"),
    ("mim_acc", "MIM acc"),
    ("mim_acc_other", "MIM acc, other caption"),
    ("mim_prior", "MIM position prior"),
    ("mim_mse", "MIM MSE"),
    ("mim_mse_other", "MIM MSE, other caption"),
    ("mim_mse_zero", "MIM MSE of zeros"),
)


def markdown(rows: list[tuple[str, dict[str, float]]]) -> str:
    """One row per variant (its trials' mean ± std), one column per measurement any has."""
    summary = summarize(rows)
    trials = Counter(variant for variant, _ in rows)
    cols = [(k, t) for k, t in COLUMNS if any(k in ms for ms in summary.values())]
    lines = [
        "| variant | " + " | ".join(t for _, t in cols) + " | n |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for variant, ms in summary.items():
        cells = []
        for k, _ in cols:
            if k not in ms:
                cells.append("–")
                continue
            m, s, _ = ms[k]
            digits = 3 if k.startswith("mim_mse") else 2
            cells.append(
                f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"
            )
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {trials[variant]} |")
    return "\n".join(lines) + "\n"


def loss_parts_plot(
    study: str, curves: dict[str, list[dict[str, dict[int, float]]]], out: Path
) -> Path | None:
    """One panel per loss part: its training loss per epoch, mean over seeds, per variant."""
    from bilma.analysis.plots import FIGSIZE, _save, plt, safe_name
    from bilma.analysis.stats import mean

    parts = sorted({p for trials in curves.values() for t in trials for p in t})
    if not parts:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(FIGSIZE[0] * len(parts) / 2, FIGSIZE[1]))
    axes = [axes] if len(parts) == 1 else list(axes)
    # one colour per variant in every panel (a panel leaves out variants without that part)
    colour = {variant: f"C{i % 10}" for i, variant in enumerate(curves)}
    for ax, part in zip(axes, parts, strict=True):
        for variant, trials in curves.items():
            by_epoch: dict[int, list[float]] = {}
            for t in trials:
                for epoch, v in t.get(part, {}).items():
                    by_epoch.setdefault(epoch, []).append(v)
            if by_epoch:
                epochs = sorted(by_epoch)
                means = [mean(by_epoch[e]) for e in epochs]
                ax.plot(epochs, means, marker="o", label=variant, color=colour[variant])
        ax.set_title(f"{part} (weighted)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss, epoch mean over seeds")
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()}
    axes[-1].legend(
        [handles[v] for v in curves if v in handles],
        [v for v in curves if v in handles],
        fontsize="small",
    )
    fig.suptitle(f"{study}: training loss of each part")
    fig.tight_layout()
    return _save(fig, out / f"{safe_name(study)}_loss_parts.png")


def describe(result: dict[str, Any]) -> str:
    """A trial's variant name from its result.json."""
    return str(result.get("variant_base") or result.get("variant") or "")
