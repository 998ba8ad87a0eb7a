"""IRRA's optimizer recipe: parameter groups and the per-epoch learning-rate factor.

Groups (IRRA's `solver/build.py`, read in its code): every parameter starts at `optim.lr`
with `optim.weight_decay`; the new cross-modal modules get `lr x lr_factor`; then every bias
gets `lr x bias_lr_factor` without weight decay (this rule wins over the cross-module one);
then the classifier and the heads get `lr x lr_factor` again (this rule wins over the bias
one). IRRA decides by name: "cross" in the name is a cross-modal parameter. Its cross-modal
module's input and output LayerNorms are called `ln_pre_t`, `ln_pre_i` and `ln_post`, so they
stay at the base rate; ours (`ln_q`, `ln_kv`, `ln_post` inside `mlm_cross`/`mim_cross`) follow
IRRA with `optim.cross_norms_lr=base` (default) or the rest of the module with `factor`.
The mask token of MIM (no IRRA counterpart) trains like the heads.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from bilma.config import Config

# The LayerNorms of a CrossModal module that IRRA names without "cross".
CROSS_NORMS = ("ln_q", "ln_kv", "ln_post")


def _is_cross_norm(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and parts[0] in ("mlm_cross", "mim_cross") and parts[1] in CROSS_NORMS


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """One group per parameter, named, with IRRA's learning rate and weight decay."""
    o = cfg.optim
    new = model.new_module_names() | {"encoders.mask_token"}
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".")[0]
        is_new = top in new or name in new
        is_cross = is_new and "cross" in name
        if is_cross and o.cross_norms_lr == "base" and _is_cross_norm(name):
            is_cross = False
        lr, wd = o.lr, o.weight_decay
        if is_cross:
            lr = o.lr * o.lr_factor
        if name.endswith("bias"):
            lr, wd = o.lr * o.bias_lr_factor, o.weight_decay_bias
        if is_new and "cross" not in name:  # classifier, heads, mask token
            lr = o.lr * o.lr_factor
        if name == "itc_logit_scale":  # CLIP's temperature: never decayed (as CLIP, open_clip)
            wd = 0.0
        groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": name})
    return groups


def lr_factor(epoch: int, cfg: Config) -> float:
    """IRRA's per-epoch schedule: linear warm-up from warmup_factor, then cosine to 0."""
    o, total = cfg.optim, cfg.train.epochs
    if epoch < o.warmup_epochs:
        alpha = epoch / o.warmup_epochs
        return o.warmup_factor * (1 - alpha) + alpha
    if o.schedule == "constant" or total <= o.warmup_epochs:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / (total - o.warmup_epochs)))
