"""CLIP's contrastive loss (`losses.itc_loss`) and its place in the model's loss total.

A file apart from tests/test_losses.py so that the pretraining objective's tests stand alone.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bilma.model import losses


def test_itc_matches_transformers_clip_loss() -> None:
    from transformers.models.clip import modeling_clip

    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    scale = 14.3
    # transformers: logits_per_text = scale * t_n @ v_n.T, mean of both directions' CE.
    logits_per_text = scale * F.normalize(t, dim=1) @ F.normalize(v, dim=1).T
    want = modeling_clip.image_text_contrastive_loss(logits_per_text)
    assert float(losses.itc_loss(v, t, scale)) == pytest.approx(float(want), rel=1e-6)


def test_itc_by_hand_and_its_limits() -> None:
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosines: [[1, 0.7071], [0, 0.7071]]
    c = 1 / math.sqrt(2)
    s = 10.0
    i2t = [-math.log(math.exp(s) / (math.exp(s) + math.exp(s * c))),
           -math.log(math.exp(s * c) / (1 + math.exp(s * c)))]  # fmt: skip
    t2i = [-math.log(math.exp(s) / (math.exp(s) + 1)),
           -math.log(math.exp(s * c) / (math.exp(s * c) + math.exp(s * c)))]  # fmt: skip
    want = (sum(i2t) / 2 + sum(t2i) / 2) / 2
    assert float(losses.itc_loss(v, t, s)) == pytest.approx(want, rel=1e-6)
    aligned = torch.eye(4)
    assert float(losses.itc_loss(aligned, aligned, 100.0)) < 1e-6
    with pytest.raises(ValueError, match="must both be"):
        losses.itc_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


def test_model_adds_itc_with_a_learnable_temperature(synth_small, tmp_path) -> None:
    from support.tiny import tiny_overrides

    from bilma.config import load_config
    from bilma.data.datasets import TrainSet, load_data
    from bilma.model.bilma import build_model

    over = tiny_overrides(synth_small, tmp_path, "loss.itc_weight=0.5")
    over += ["loss.sdm_weight=0", "loss.id_weight=0", "loss.mlm_weight=0", "loss.mim_weight=0"]
    cfg = load_config(None, over)
    data = load_data(cfg)
    model = build_model(cfg, data.tokenizer.vocab_size, data.tokenizer.eot_id, 24)
    assert float(model.itc_logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    ds = TrainSet(data, cfg, uint8=False)  # finished samples: the model takes them as is
    items = [ds[i] for i in range(4)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    out = model(batch)
    assert set(out) == {"itc", "loss"}
    out["loss"].backward()
    assert model.itc_logit_scale.grad is not None and float(model.itc_logit_scale.grad) != 0
    plain = build_model(load_config(None, tiny_overrides(synth_small, tmp_path)), 100, 99, 24)
    assert not hasattr(plain, "itc_logit_scale")  # off by default: checkpoints unchanged
