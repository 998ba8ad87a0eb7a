"""IRRA's parameter groups and schedule (bilma/optim.py)."""

import math

import pytest

from bilma.config import load_config
from bilma.model.bilma import build_model
from bilma.training.optim import lr_factor, param_groups

SMALL = ["data.image_size=[64,32]", "model.embed_dim=64", "model.cross_heads=4"]


def groups(*extra):
    cfg = load_config(None, [*SMALL, *extra])
    model = build_model(cfg, 40, 39, 3)
    return {g["name"]: (g["lr"], g["weight_decay"]) for g in param_groups(model, cfg)}


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
