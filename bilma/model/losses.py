"""The training losses of IRRA and BiLMa, as pure functions on tensors.

total = SDM + ID + w_mlm * MLM + w_mim * MIM (pixel target or SemMIM); see METHOD.md, "Losses".

Every loss computes its logits, softmaxes and reductions in float32 with autocast disabled, so
it is numerically the same under bf16/fp16 autocast as in fp32 (only the inputs, which the
model produced under autocast, carry low precision). A loss over an empty selection (no
chosen token, no masked patch) is 0, still connected to the graph, instead of NaN.

No loss reads a device value: a selection (chosen tokens, masked patches) is a masked mean,
sum(loss * mask) / max(sum(mask), 1), never boolean indexing or `.any()`, which would make
the host wait for the device at every step (`bilma.training.syncs`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilma.labels import IGNORE_INDEX


def _no_autocast(x: Tensor) -> AbstractContextManager:
    """Autocast off for the device type of `x` (the loss math runs in float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` is True; 0 (connected to `values`) where it is nowhere."""
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return total.sum() / mask.sum().clamp(min=1)


def sdm_loss(
    image_feats: Tensor,
    text_feats: Tensor,
    pids: Tensor,
    logit_scale: float | Tensor = 50.0,
    eps: float = 1e-8,
) -> Tensor:
    """Similarity distribution matching (IRRA's `compute_sdm`).

    With v, t the L2-normalised [B, D] features, y_ij = 1[pid_i == pid_j] and
    q_ij = y_ij / sum_k y_ik: p = softmax_j(logit_scale * v @ t.T) and
    L_i2t = mean_i sum_j p_ij (log p_ij - log(q_ij + eps)); L_t2i likewise with t @ v.T.
    Returns L_i2t + L_t2i (a scalar).
    """
    if image_feats.shape != text_feats.shape or image_feats.ndim != 2:
        raise ValueError(
            f"image and text features must both be [B, D], got {tuple(image_feats.shape)} "
            f"and {tuple(text_feats.shape)}"
        )
    pids = pids.reshape(-1).to(image_feats.device)
    if pids.numel() != image_feats.shape[0]:
        raise ValueError(f"{pids.numel()} pids for a batch of {image_feats.shape[0]}")
    with _no_autocast(image_feats):
        v = F.normalize(image_feats.float(), dim=1)
        t = F.normalize(text_feats.float(), dim=1)
        labels = (pids[:, None] == pids[None, :]).float()
        q = labels / labels.sum(dim=1, keepdim=True)
        log_q = torch.log(q + eps)
        i2t = logit_scale * (v @ t.t())  # [image, text]
        t2i = i2t.t()  # [text, image]: the same cosines, IRRA's text_norm @ image_norm.t()
        loss = 0.0
        for logits in (i2t, t2i):
            log_p = F.log_softmax(logits, dim=1)
            loss = loss + (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return loss


def id_loss(
    classifier: nn.Module | Callable[[Tensor], Tensor],
    image_feats: Tensor,
    text_feats: Tensor,
    pids: Tensor,
) -> Tensor:
    """Identity loss (CE(W v, pid) + CE(W t, pid)) / 2, IRRA's `compute_id`.

    The (shared) classifier sees the un-normalised global features; its logits are cast to
    float32 before the cross-entropy.
    """
    pids = pids.reshape(-1).to(image_feats.device).long()
    image_logits = classifier(image_feats)
    text_logits = classifier(text_feats)
    with _no_autocast(image_logits):
        return (
            F.cross_entropy(image_logits.float(), pids) + F.cross_entropy(text_logits.float(), pids)
        ) / 2


def attribute_loss(
    head: nn.Module,
    image_feats: Tensor,
    text_feats: Tensor,
    labels: Tensor,
    classes: tuple[int, ...],
) -> Tensor:
    """The positive control: one shared linear head predicts each attribute's class from the
    global image and text features; the mean of the attributes' cross-entropies over both.

    `labels` [B, A] (class per attribute), `classes` the A class counts (the head's output is
    their concatenation)."""
    labels = labels.to(image_feats.device).long()
    total = image_feats.new_zeros((), dtype=torch.float32)
    for feats in (image_feats, text_feats):
        logits = head(feats)
        with _no_autocast(logits):
            for a, part in enumerate(logits.float().split(list(classes), dim=1)):
                total = total + F.cross_entropy(part, labels[:, a])
    return total / (2 * len(classes))


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Masked language modelling: cross-entropy over the chosen tokens only.

    `logits` [..., V], `labels` [...] with the original token id at chosen positions and -100
    elsewhere; the mean over chosen positions, 0 (connected) if none is chosen. The logits
    are cast to float32 whole: pass the rows that may be chosen (the model passes
    `mlm_capacity` rows), not a full [B, L, V].
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    with _no_autocast(logits):
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = labels.reshape(-1).long()
        total = F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def mim_pixel_loss(
    pred: Tensor, target_pixels: Tensor, mask: Tensor, norm_pix: bool = True
) -> Tensor:
    """MAE-style pixel regression of the masked patches.

    `pred`, `target_pixels` [B, P, D] (D = pixels of a patch), `mask` [B, P] bool (True =
    masked). With `norm_pix` each target patch is normalised as (x - mean) / sqrt(var + 1e-6)
    over D, var unbiased as in MAE's `forward_loss`. The squared error is averaged over D, then
    over the masked patches only. 0 (connected) if no patch is masked.
    """
    if pred.shape != target_pixels.shape or pred.shape[:-1] != mask.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target_pixels.shape)} and mask "
            f"{tuple(mask.shape)} do not match"
        )
    with _no_autocast(pred):
        p = pred.float()
        target = target_pixels.detach().float()
        if norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return _masked_mean(((p - target) ** 2).mean(dim=-1), mask.bool())


def mim_feature_loss(
    pred: Tensor, teacher: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Feature MIM: KL(teacher || student) between softmax distributions over the feature
    dimension, of each masked patch, averaged over the masked patches.

    `pred`, `teacher` [B, P, D]; `teacher` is detached (the clean image's patch features from
    the same encoder, without gradient); `mask` [B, P] bool. 0 (connected) if none is masked.
    """
    if pred.shape != teacher.shape or pred.shape[:-1] != mask.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)}, teacher {tuple(teacher.shape)} and mask "
            f"{tuple(mask.shape)} do not match"
        )
    with _no_autocast(pred):
        log_q = F.log_softmax(pred.float() / temperature, dim=-1)
        log_p = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
        return _masked_mean(kl, mask.bool())


def semmim_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Semantic MIM: classify each masked patch into the human parser's body-part classes.

    `logits` [B, P, C]; `labels` either int [B, P] (majority-vote class per patch; -100 =
    ignore) for cross-entropy, or float [B, P, C] soft class histograms (each patch's row
    should sum to 1; used as given) for the soft-target cross-entropy -sum_c q_c log p_c.
    Averaged over the masked (and not ignored) patches; 0 (connected) if there are none.
    """
    if logits.shape[:-1] != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match mask {tuple(mask.shape)}")
    mask = mask.bool()
    soft = labels.dtype.is_floating_point
    if soft and labels.shape != logits.shape:
        raise ValueError(f"soft labels {tuple(labels.shape)} must be [B, P, C] like the logits")
    if not soft and labels.shape != mask.shape:
        raise ValueError(f"hard labels {tuple(labels.shape)} must be [B, P] like the mask")
    with _no_autocast(logits):
        log_p = F.log_softmax(logits.float(), dim=-1)
        if soft:
            return _masked_mean(-(labels.float() * log_p).sum(dim=-1), mask)
        known = labels != IGNORE_INDEX
        picked = log_p.gather(-1, torch.where(known, labels, 0).long().unsqueeze(-1)).squeeze(-1)
        return _masked_mean(-picked, mask & known)


def itc_loss(image_feats: Tensor, text_feats: Tensor, logit_scale: float | Tensor) -> Tensor:
    """CLIP's contrastive loss (image-text InfoNCE), which needs no identity labels.

    With v, t the L2-normalised [B, D] features, logits = logit_scale * v @ t.T and the i-th
    caption is the only positive of the i-th image (and the other way round):
    (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2, CLIP's symmetric loss.
    """
    if image_feats.shape != text_feats.shape or image_feats.ndim != 2:
        raise ValueError(
            f"image and text features must both be [B, D], got {tuple(image_feats.shape)} "
            f"and {tuple(text_feats.shape)}"
        )
    with _no_autocast(image_feats):
        v = F.normalize(image_feats.float(), dim=1)
        t = F.normalize(text_feats.float(), dim=1)
        logits = logit_scale * (v @ t.t())
        target = torch.arange(len(v), device=v.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
