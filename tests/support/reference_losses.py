"""The losses before issue 21 (boolean indexing, `.any()`: a sync each), kept as the reference
that the masked reductions replacing them must equal (values and gradients)."""

from __future__ import annotations

import torch.nn.functional as F


def old_mlm_loss(logits, labels):
    chosen = labels != -100
    if not bool(chosen.any()):
        return logits.sum().float() * 0.0
    return F.cross_entropy(logits[chosen].float(), labels[chosen].long())


def old_mim_pixel_loss(pred, target_pixels, mask, norm_pix=True):
    mask = mask.bool()
    if not bool(mask.any()):
        return pred.sum().float() * 0.0
    p = pred[mask].float()
    target = target_pixels[mask].detach().float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return ((p - target) ** 2).mean(dim=-1).mean()


def old_semmim_loss(logits, labels, mask):
    mask = mask.bool()
    soft = labels.dtype.is_floating_point
    if not soft:
        mask = mask & (labels != -100)
    if not bool(mask.any()):
        return logits.sum().float() * 0.0
    log_p = F.log_softmax(logits[mask].float(), dim=-1)
    if soft:
        return -(labels[mask].float() * log_p).sum(dim=-1).mean()
    return F.nll_loss(log_p, labels[mask].long())
