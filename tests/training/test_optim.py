"""IRRA's parameter rates, the merged groups and the schedule (bilma/training/optim.py)."""

import copy
import math

import pytest
import torch
from support.tiny import random_batch

from bilma.config import load_config
from bilma.errors import CheckpointMismatch
from bilma.model.bilma import build_model
from bilma.training.optim import (
    build_optimizer,
    lr_factor,
    match_layout,
    param_groups,
    param_rates,
)

SMALL = ["data.image_size=[64,32]", "model.embed_dim=64", "model.cross_heads=4"]


def groups(*extra):
    cfg = load_config(None, [*SMALL, *extra])
    model = build_model(cfg, 40, 39, 3)
    return {name: (lr, wd) for name, _, lr, wd in param_rates(model, cfg)}


def test_irra_groups():
    lrs = groups()
    assert lrs["encoders.vision.encoder.layers.0.mlp.fc1.weight"] == (1e-5, 4e-5)
    assert lrs["encoders.vision.encoder.layers.0.mlp.fc1.bias"] == (2e-5, 0.0)
    assert lrs["mlm_cross.cross_attn.in_proj_weight"] == (5e-5, 4e-5)
    assert lrs["mlm_cross.blocks.0.ln_1.weight"] == (5e-5, 4e-5)  # IRRA: resblocks have "cross"
    assert lrs["mlm_cross.cross_attn.in_proj_bias"] == (2e-5, 0.0)  # bias rule wins
    assert lrs["classifier.weight"] == (5e-5, 4e-5)
    assert lrs["classifier.bias"] == (5e-5, 0.0)  # heads: lr factor after the bias rule
    assert lrs["mlm_head.fc.bias"] == (5e-5, 0.0)
    assert lrs["mim_head.fc.weight"] == (5e-5, 4e-5)
    assert lrs["encoders.mask_token"] == (5e-5, 4e-5)


@pytest.mark.parametrize("module", ["mlm_cross", "mim_cross"])
@pytest.mark.parametrize("norm", ["ln_q", "ln_kv", "ln_post"])
def test_cross_module_norms(module, norm):
    """IRRA's ln_pre_t, ln_pre_i, ln_post lack "cross" in their names: base rate (default)."""
    base, factor = groups(), groups("optim.cross_norms_lr=factor")
    assert base[f"{module}.{norm}.weight"] == (1e-5, 4e-5)
    assert base[f"{module}.{norm}.bias"] == (2e-5, 0.0)
    assert factor[f"{module}.{norm}.weight"] == (5e-5, 4e-5)
    assert factor[f"{module}.{norm}.bias"] == (2e-5, 0.0)  # the bias rule wins in both
    # everything else is the same in both
    assert {k: v for k, v in base.items() if ".ln_" not in k or ".blocks." in k} == {
        k: v for k, v in factor.items() if ".ln_" not in k or ".blocks." in k
    }


def test_groups_follow_the_built_parts():
    lrs = groups("loss.id_weight=0", "loss.mim_weight=0")
    assert not any(k.startswith(("classifier", "mim_", "encoders.mask_token")) for k in lrs)


def test_irra_schedule():
    cfg = load_config(None, ["train.epochs=60"])
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(4, cfg) == pytest.approx(0.1 * 0.2 + 0.8)
    assert lr_factor(5, cfg) == pytest.approx(1.0)
    assert lr_factor(59, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 54 / 55)))
    flat = load_config(None, ["train.epochs=60", "optim.schedule=constant"])
    assert lr_factor(30, flat) == 1.0


def test_clip_temperature_is_not_decayed():
    lrs = groups("loss.itc_weight=1")
    assert lrs["itc_logit_scale"][1] == 0.0  # as CLIP: weight decay would pull it to 1
    assert "itc_logit_scale" not in groups()  # built only with the CLIP loss


# ----------------------------------------------------------------------------- merged groups

TRAIN = [*SMALL, "model.cross_depth=1", "mim.depth=1", "optim.lr=1e-3", "loss.itc_weight=1"]
TRAIN += ["train.epochs=6", "optim.warmup_epochs=2"]


def old_layout(model, cfg) -> torch.optim.Adam:
    """The optimizer as the trainer built it before the groups were merged: one group per
    parameter, named, Adam at torch's defaults (single-tensor on the CPU)."""
    opt = torch.optim.Adam(
        [
            {"params": [p], "lr": lr, "weight_decay": wd, "name": n}
            for n, p, lr, wd in param_rates(model, cfg)
        ],
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
    )
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def train_steps(model, opt, cfg, epochs: range) -> None:
    """One step per epoch of `epochs` with that epoch's learning-rate factor, as the trainer."""
    for epoch in epochs:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(epoch, cfg)
        batch = random_batch(4, (64, 32), vocab=40, seed=epoch)
        batch["mim_generator"] = torch.Generator().manual_seed(epoch)
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def tiny_pair():
    cfg = load_config(None, TRAIN)
    torch.manual_seed(0)
    model = build_model(cfg, 40, 39, 3)
    return cfg, model, copy.deepcopy(model)


def assert_same_parameters(a, b) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_groups_merge_pairs_with_each_parameter_keeping_its_rate():
    cfg = load_config(None, TRAIN)
    model = build_model(cfg, 40, 39, 3)
    rates = {n: (lr, wd) for n, _, lr, wd in param_rates(model, cfg)}
    merged = param_groups(model, cfg)
    assert len(merged) == len({*rates.values()}) == 5  # base, bias, x5, x5 no decay, itc
    assert len(rates) > 100
    seen = {n: (g["lr"], g["weight_decay"]) for g in merged for n in g["names"]}
    assert seen == rates
    params = {id(p): n for n, p in model.named_parameters()}
    assert [params[id(p)] for g in merged for p in g["params"]] == [
        n for g in merged for n in g["names"]
    ]


def test_merged_groups_train_the_same_parameters_as_one_group_per_parameter():
    """5 steps across warm-up and cosine epochs: the same weights as IRRA's per-parameter
    groups, to float32 precision (multi-tensor Adam adds in another order)."""
    cfg, a, b = tiny_pair()
    train_steps(a, old_layout(a, cfg), cfg, range(5))
    opt = build_optimizer(b, cfg)
    assert len(opt.param_groups) <= 8 and opt.defaults["foreach"]
    train_steps(b, opt, cfg, range(5))
    moved = max(
        (p - q).abs().max()
        for p, q in zip(a.parameters(), tiny_pair()[1].parameters(), strict=True)
    )
    assert moved > 1e-3  # the steps did train
    assert_same_parameters(a, b)


def test_vitb16_has_at_most_8_groups():
    """Built on the meta device: the real names and rules, no weights, no memory."""
    for preset in ([], ["mlm.masked_caption_for_retrieval=true", "loss.mim_weight=0"]):
        cfg = load_config(None, ["model.name=vitb16", "data.image_size=[384,128]", *preset])
        with torch.device("meta"):
            model = build_model(cfg, 49408, 49407, 1000)
        opt = build_optimizer(model, cfg)
        assert len(opt.param_groups) == 4
        assert (
            sum(len(g["params"]) for g in opt.param_groups) == len(param_rates(model, cfg)) >= 463
        )


def test_a_checkpoint_of_per_parameter_groups_resumes_exactly(tmp_path):
    """Saved with one group per parameter after 3 steps, resumed with merged groups: the next
    2 steps give what 5 steps without a stop give."""
    cfg, a, b = tiny_pair()
    opt = old_layout(a, cfg)
    train_steps(a, opt, cfg, range(3))
    torch.save({"optimizer": opt.state_dict(), "model": a.state_dict()}, tmp_path / "last.pt")
    train_steps(a, opt, cfg, range(3, 5))  # the run that never stopped

    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    b.load_state_dict(ckpt["model"])
    new = build_optimizer(b, cfg)
    new.load_state_dict(match_layout(ckpt["optimizer"], new, tmp_path / "last.pt"))
    assert len(new.param_groups) == 5 and new.defaults["foreach"]
    assert all(g["foreach"] for g in new.param_groups)  # not the saved foreach=None
    assert int(new.state[new.param_groups[0]["params"][0]]["step"]) == 3
    train_steps(b, new, cfg, range(3, 5))
    assert_same_parameters(a, b)


def test_merged_layout_round_trips():
    cfg, a, _ = tiny_pair()
    opt = build_optimizer(a, cfg)
    train_steps(a, opt, cfg, range(1))
    saved = opt.state_dict()
    assert match_layout(saved, opt, "x")["state"] is saved["state"]


def test_optimizer_state_of_another_recipe_is_refused():
    cfg, a, _ = tiny_pair()
    other = load_config(None, [*TRAIN, "optim.bias_lr_factor=3"])
    saved = old_layout(a, other).state_dict()
    with pytest.raises(CheckpointMismatch) as e:
        match_layout(saved, build_optimizer(a, cfg), "runs/x/ckpt/last.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("runs/x/ckpt/last.pt: ")
    assert "start a new run directory" in msg
