"""Text-to-image retrieval evaluation: every caption of a split against every image of it.

`python -m bilma eval --checkpoint PATH [--split test|val]` loads a checkpoint (with the config
saved in it), encodes captions and images in batches under inference mode and prints the
metrics as a table.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from bilma.config import Config
from bilma.data.datasets import EvalImages, ImageSet, PedesData, TextSet, eval_loader
from bilma.device import autocast_for
from bilma.evaluation.lookalike import flat_group_metrics, metrics_by_group
from bilma.evaluation.metrics import chance_r1, retrieval_metrics
from bilma.model.bilma import trim_padding

log = logging.getLogger(__name__)


@torch.inference_mode()
def encode_split(
    model,
    data: PedesData,
    split: str,
    cfg: Config,
    device: torch.device,
    gallery: EvalImages | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text features, text pids, image features, image pids), features L2-normalised.

    `gallery` keeps the image loaders (and their workers) between calls; without it this
    call builds and ends its own. Images arrive uint8 and are normalised on `device`.
    """
    texts = TextSet(data, split)
    bs = cfg.eval.batch_size
    own = gallery is None
    if gallery is None:
        gallery = EvalImages(data, cfg.data.image_size, bs, cfg.data.num_workers)
    amp = autocast_for(cfg, device)
    text_feats = []
    for ids, _ in eval_loader(texts, bs, 0):
        ids = trim_padding(ids, cfg.train.length_bucket)  # on the host: no sync
        with amp:
            text_feats.append(model.encode_text(ids.to(device, non_blocking=True)).float())
    loader = gallery.loader(split)
    images: ImageSet = loader.dataset
    image_feats = []
    try:
        for imgs, _ in loader:
            x = images.normalize(imgs.to(device, non_blocking=True))
            with amp:
                image_feats.append(model.encode_image(x).float())
    finally:
        if own:
            gallery.close()
    t = F.normalize(torch.cat(text_feats), dim=-1)
    v = F.normalize(torch.cat(image_feats), dim=-1)
    return t, texts.pids.to(device), v, images.pids.to(device)


def split_chance_r1(data: PedesData, split: str) -> float:
    """Chance Rank-1 (percent) of `split`: its captions against its gallery images."""
    rec, caps = data.split(split)
    gallery = [data.records[i].pid for i in rec]
    queries = [data.records[i].pid for i in data.caption_record[caps]]
    return chance_r1(queries, gallery)


def evaluate(
    model,
    data: PedesData,
    split: str,
    cfg: Config,
    device: torch.device,
    groups: dict[int, int] | None = None,
    gallery: EvalImages | None = None,
) -> dict[str, float]:
    """R1, R5, R10, mAP, mINP (percent) of text-to-image retrieval on `split`; with look-alike
    `groups` (pid -> group, `bilma.evaluation.lookalike`) also `bilma.runs.trial_dir.GROUP_METRICS`.
    `gallery`: the image loaders to reuse (a trainer's, whose workers persist)."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        t, tp, v, vp = encode_split(model, data, split, cfg, device, gallery)
        if groups is None:
            metrics = retrieval_metrics(t @ v.T, tp, vp)
        else:
            by_group = metrics_by_group(t @ v.T, tp, vp, groups)
            metrics = {**by_group["all"], **flat_group_metrics(by_group)}
    finally:
        model.train(was_training)
    log.debug(
        "evaluated %s: %d captions x %d images in %.1f s",
        split,
        len(t),
        len(v),
        time.perf_counter() - t0,
    )
    return metrics
