"""The model: shapes, position table, bit-exact reload, refusal of another model's checkpoint."""

import pytest
import torch

from bilma import checkpoint
from bilma.config import load_config
from bilma.model.bilma import build_model, random_patch_mask
from bilma.model.clip import resize_position_table


def tiny_cfg(*extra):
    return load_config(
        None,
        [
            "data.image_size=[128,64]",
            "data.text_length=16",
            "model.embed_dim=64",
            "model.cross_depth=1",
            "model.cross_heads=4",
            "mim.depth=1",
            *extra,
        ],
    )


def batch(n=4, vocab=50, eot=49, length=16, classes=20):
    ids = torch.zeros(n, length, dtype=torch.long)
    ids[:, 0] = eot - 1
    ids[:, 1:6] = torch.randint(1, vocab - 3, (n, 5))
    ids[:, 6] = eot
    mlm_ids = ids.clone()
    mlm_ids[:, 2] = vocab - 3
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    return {
        "images": torch.randn(n, 3, 128, 64),
        "caption_ids": ids,
        "mlm_ids": mlm_ids,
        "mlm_labels": labels,
        "patch_labels": torch.randint(0, classes, (n, 32)),
        "pids": torch.tensor([0, 0, 1, 2])[:n],
    }


def test_forward_losses_and_backward():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), vocab_size=50, eot_id=49, num_ids=3)
    out = model(batch())
    assert set(out) == {"sdm", "id", "mlm", "mim", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert (
        model.encoders.mask_token.grad is not None and model.mim_head.fc.weight.grad.abs().sum() > 0
    )
    feats = model.encode_image(torch.randn(2, 3, 128, 64))
    assert feats.shape == (2, 64)


@pytest.mark.parametrize(
    "extra",
    [
        ["mim.target=pixel"],
        ["mim.target=none"],
        ["mim.cross_module=shared", "mim.caption=masked", "mim.masking=block"],
        ["mim.label_rule=soft"],
        ["loss.mlm_weight=0"],
    ],
)
def test_variants_run(extra):
    torch.manual_seed(0)
    cfg = tiny_cfg(*extra)
    model = build_model(cfg, vocab_size=50, eot_id=49, num_ids=3)
    b = batch()
    if cfg.mim.label_rule == "soft":
        b["patch_labels"] = torch.softmax(torch.randn(4, 32, 20), -1)
    out = model(b)
    out["loss"].backward()
    assert ("mim" in out) == (cfg.mim.target != "none")
    assert ("mlm" in out) == (cfg.loss.mlm_weight > 0)


def test_patch_masks_exact_count_and_generator():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for mode in ("patch", "block"):
        m = random_patch_mask(5, (24, 8), 0.4, mode, torch.device("cpu"), g1)
        assert m.shape == (5, 192) and (m.sum(1) == round(0.4 * 192)).all()
        assert torch.equal(m, random_patch_mask(5, (24, 8), 0.4, mode, torch.device("cpu"), g2))


def test_position_table_resize_keeps_cls_and_corners():
    table = torch.randn(1 + 14 * 14, 8)
    out = resize_position_table(table, (14, 14), (24, 8))
    assert out.shape == (1 + 24 * 8, 8)
    assert torch.equal(out[0], table[0])
    same = resize_position_table(table, (14, 14), (14, 14))
    assert torch.equal(same, table)


def test_checkpoint_reloads_bit_exact(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg, vocab_size=50, eot_id=49, num_ids=3).eval()
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, cfg, epoch=1)
    again, cfg2, info = checkpoint.load_for_eval(path, torch.device("cpu"))
    assert cfg2 == cfg and info["epoch"] == 1
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 128, 64)
    assert torch.equal(model.encode_image(x), again.encode_image(x))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = tiny_cfg()
    path = tmp_path / "m.pt"
    checkpoint.save(path, build_model(cfg, 50, 49, 3), cfg)
    other = build_model(tiny_cfg("data.image_size=[192,64]", "mim.labels=ppp7"), 50, 49, 3)
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        checkpoint.load_model_state(other, checkpoint.load(path), path)
    msg = str(e.value)
    assert "encoders.grid: checkpoint [8, 4] != config [12, 4]" in msg
    assert "heads.mim_classes: checkpoint 20 != config 7" in msg and "\n" not in msg


def test_garbage_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(checkpoint.DataError, match=r"cannot read checkpoint .*bad\.pt"):
        checkpoint.load(bad)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(checkpoint.DataError, match="not a bilma checkpoint"):
        checkpoint.load(bad)


def test_pretrained_hub_id_fails_fast():
    from bilma.data.records import DataError
    from bilma.model.clip import load_pretrained

    with pytest.raises(DataError, match="not a local folder with config.json; download"):
        load_pretrained("openai/clip-vit-base-patch16", tiny_cfg(), 49408, 49407)


def test_pretrained_folder_round_trip(tmp_path):
    """A local Hugging Face CLIP folder loads with its table resized to the grid."""
    from transformers import CLIPModel

    from bilma.model.clip import SIZES, _hf_config, load_pretrained, spec_from_config

    cfg = tiny_cfg("model.embed_dim=64")
    spec = spec_from_config(cfg, 50, 49)
    hf_cfg = _hf_config(spec)
    hf_cfg.vision_config.image_size = 64  # a square 4x4 pretrained table
    hf = CLIPModel(hf_cfg)
    hf.save_pretrained(tmp_path / "clip")
    enc = load_pretrained(tmp_path / "clip", cfg, 50, 49)
    assert enc.vision.embeddings.position_embedding.weight.shape == (
        1 + 8 * 4,
        SIZES["tiny"]["vision"][0],
    )
    assert torch.equal(
        enc.vision.embeddings.position_embedding.weight[0],
        hf.vision_model.embeddings.position_embedding.weight[0],
    )
    assert torch.equal(
        enc.text.embeddings.token_embedding.weight, hf.text_model.embeddings.token_embedding.weight
    )


def test_imports_point_down():
    """The model does not import the data pipeline for shared facts, nor data the losses."""
    import subprocess
    import sys

    code = (
        "import sys, importlib; importlib.import_module(sys.argv[1]); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bilma'))))"
    )

    def loaded(module):
        out = subprocess.run(
            [sys.executable, "-c", code, module], capture_output=True, text=True, check=True
        )
        return set(out.stdout.split())

    model = loaded("bilma.model.bilma")
    assert {"bilma.labels", "bilma.patches"} <= model
    assert not {m for m in model if m.startswith("bilma.data.") and m != "bilma.data.records"}
    data = loaded("bilma.data.datasets")
    assert "bilma.labels" in data and "bilma.losses" not in data and "bilma.model" not in data
