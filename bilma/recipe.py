"""The training recipe's pure parts: seeding, IRRA's parameter groups and learning-rate
schedule, the MIM mask generator (functions of config, epoch and step only)."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from bilma.config import Config
from bilma.model.bilma import BiLMa


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def param_groups(model: BiLMa, cfg: Config) -> list[dict[str, Any]]:
    """IRRA's groups: new modules and heads at lr x lr_factor, biases at lr x bias_lr_factor
    without weight decay (bias rule applied after the cross-module rule, as in IRRA)."""
    o = cfg.optim
    new = model.new_module_names() | {"encoders.mask_token"}
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".")[0]
        is_new = top in new or name in new
        lr, wd = o.lr, o.weight_decay
        if is_new and "cross" in name:
            lr = o.lr * o.lr_factor
        if name.endswith("bias"):
            lr, wd = o.lr * o.bias_lr_factor, o.weight_decay_bias
        if is_new and "cross" not in name:  # classifier, heads, mask token
            lr = o.lr * o.lr_factor
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


def mim_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """MIM masks are a function of (seed, step, rank), so a resumed run draws the same ones."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 97 + rank)
