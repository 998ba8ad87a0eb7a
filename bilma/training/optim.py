"""IRRA's optimizer recipe: parameter groups and the per-epoch learning-rate factor.

Rates (IRRA's `solver/build.py`, read in its code): every parameter starts at `optim.lr`
with `optim.weight_decay`; the new cross-modal modules get `lr x lr_factor`; then every bias
gets `lr x bias_lr_factor` without weight decay (this rule wins over the cross-module one);
then the classifier and the heads get `lr x lr_factor` again (this rule wins over the bias
one). IRRA decides by name: "cross" in the name is a cross-modal parameter. Its cross-modal
module's input and output LayerNorms are called `ln_pre_t`, `ln_pre_i` and `ln_post`, so they
stay at the base rate; ours (`ln_q`, `ln_kv`, `ln_post` inside `mlm_cross`/`mim_cross`) follow
IRRA with `optim.cross_norms_lr=base` (default) or the rest of the module with `factor`.
The mask token of MIM (no IRRA counterpart) trains like the heads.

Groups: IRRA builds one optimizer group per parameter (528 for ViT-B/16), so every Adam step
loops over them on the host (111 ms per step on a CPU, BENCHMARKS.md). The rules above give
only a handful of distinct (lr, weight decay) pairs; `param_groups` makes one group per pair
(each parameter keeps its own rate and decay, and the schedule scales every group alike), and
`build_optimizer` runs Adam fused on CUDA, multi-tensor (foreach) elsewhere. Checkpoints
written with one group per parameter still resume: `match_layout` maps their state by name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bilma.config import Config
from bilma.errors import CheckpointMismatch

# The LayerNorms of a CrossModal module that IRRA names without "cross".
CROSS_NORMS = ("ln_q", "ln_kv", "ln_post")


def _is_cross_norm(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and parts[0] in ("mlm_cross", "mim_cross") and parts[1] in CROSS_NORMS


def param_rates(model: nn.Module, cfg: Config) -> list[tuple[str, nn.Parameter, float, float]]:
    """(name, parameter, lr, weight decay) of every trained parameter, in the model's order,
    with IRRA's learning rate and weight decay."""
    o = cfg.optim
    new = model.new_module_names() | {"encoders.mask_token"}
    rates = []
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
        rates.append((name, p, lr, wd))
    return rates


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """One group per distinct (lr, weight decay) pair, in the order the pairs first occur;
    `names` lists its parameters' names (saved with the optimizer state, for `match_layout`)."""
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p, lr, wd in param_rates(model, cfg):
        g = groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd, "names": []})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """IRRA's Adam over `param_groups`: fused on CUDA (one kernel launch for all tensors),
    multi-tensor elsewhere; each group remembers its rate as `initial_lr` for the schedule."""
    cuda = all(p.is_cuda for p in model.parameters())
    opt = torch.optim.Adam(
        param_groups(model, cfg),
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        fused=True if cuda else None,
        foreach=None if cuda else True,
    )
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def match_layout(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Any) -> dict:
    """`saved` (an optimizer state_dict of a checkpoint at `path`) in the layout of
    `optimizer`: as is when its groups are this optimizer's; from a checkpoint with one group
    per parameter (written before the groups were merged), its per-parameter state moved to
    the parameters' places in the merged groups. Raises `CheckpointMismatch` when the saved
    groups name other parameters or rates."""
    groups = optimizer.param_groups
    names = [n for g in groups for n in g["names"]]
    old = saved["param_groups"]

    def layout(gs: list[dict[str, Any]]) -> list[tuple]:
        return [(g.get("names"), g.get("initial_lr"), g.get("weight_decay")) for g in gs]

    if layout(old) == layout(groups):
        return _same_device_flags(saved, groups)  # this layout
    old_names = [g.get("name") for g in old]
    index = {n: i for i, n in enumerate(old_names) if n is not None}
    ok = len(old) == len(names) and set(index) == set(names)
    ok = ok and all(
        old[index[n]]["initial_lr"] == g["initial_lr"]
        and old[index[n]]["weight_decay"] == g["weight_decay"]
        for g in groups
        for n in g["names"]
    )
    if not ok:
        raise CheckpointMismatch(
            f"{path}: its optimizer state does not match this model's parameters and rates "
            "(another model or optim.* recipe); resume it with the code and config that wrote "
            "it, or start a new run directory"
        )
    # Each old group held one parameter, saved as state[i] and params [i] (i: its group).
    state = {}
    out_groups = []
    new_index = 0
    for g in groups:
        first = old[index[g["names"][0]]]
        hyper = {k: v for k, v in first.items() if k not in ("params", "name")}
        ids = []
        for n in g["names"]:
            (old_id,) = old[index[n]]["params"]
            if old_id in saved["state"]:
                state[new_index] = saved["state"][old_id]
            ids.append(new_index)
            new_index += 1
        out_groups.append({**hyper, "names": list(g["names"]), "params": ids})
    return _same_device_flags({"state": state, "param_groups": out_groups}, groups)


# How Adam runs, not what it computes: loading a state dict would take these from the saved
# groups (a checkpoint written on a CPU would turn the fused CUDA Adam off).
_HOW = ("foreach", "fused", "capturable", "differentiable")


def _same_device_flags(saved: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """`saved` with each group's execution flags taken from the optimizer's own groups."""
    out = [
        {**s, **{k: g[k] for k in _HOW if k in g}}
        for s, g in zip(saved["param_groups"], groups, strict=True)
    ]
    return {**saved, "param_groups": out}


def lr_factor(epoch: int, cfg: Config) -> float:
    """IRRA's per-epoch schedule: linear warm-up from warmup_factor, then cosine to 0."""
    o, total = cfg.optim, cfg.train.epochs
    if epoch < o.warmup_epochs:
        alpha = epoch / o.warmup_epochs
        return o.warmup_factor * (1 - alpha) + alpha
    if o.schedule == "constant" or total <= o.warmup_epochs:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / (total - o.warmup_epochs)))
