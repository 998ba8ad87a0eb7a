"""The model: shapes, position table, bit-exact reload, refusal of another model's checkpoint."""

import pytest
import torch

from bilma.config import load_config
from bilma.model.bilma import build_model, random_patch_mask
from bilma.model.clip import resize_position_table
from bilma.training import checkpoint


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
    assert "bilma.labels" in data and "bilma.model.losses" not in data and "bilma.model" not in data


def captions(lengths, vocab=50, eot=49, length=16, seed=0):
    """Caption ids of the given numbers of ordinary tokens, padded with 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = eot - 1
        ids[i, 1 : 1 + n] = torch.randint(1, vocab - 3, (n,), generator=g)
        ids[i, 1 + n] = eot
    return ids


def mlm_logits_of_first(model, images, ids):
    """The MLM logits of caption 0's chosen positions (2 and 3), through the training forward."""
    mlm_ids = ids.clone()
    mlm_ids[:, 2] = 47  # the mask id of this vocabulary
    labels = torch.full_like(ids, -100)
    labels[:, 2:4] = ids[:, 2:4]
    seen = []
    hook = model.mlm_head.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(
            {
                "images": images,
                "caption_ids": ids,
                "mlm_ids": mlm_ids,
                "mlm_labels": labels,
                "pids": torch.arange(len(ids)),
            }
        )
    hook.remove()
    return seen[0][:2]  # chosen positions in row-major order: caption 0's come first


def test_mlm_logits_do_not_depend_on_batch_mates():
    """A caption's MLM logits are the same alone, next to a short caption, next to a long one."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("mim.target=none"), vocab_size=50, eot_id=49, num_ids=3)
    irra = build_model(
        tiny_cfg("mim.target=none", "mlm.attend_padding=true"), vocab_size=50, eot_id=49, num_ids=3
    )
    irra.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 128, 64)
    alone, short, long = captions([4]), captions([4, 3]), captions([4, 12])
    assert torch.equal(short[0], alone[0]) and torch.equal(long[0], alone[0])
    ref = mlm_logits_of_first(model, images[:1], alone)
    for other in (short, long):
        torch.testing.assert_close(
            mlm_logits_of_first(model, images, other), ref, rtol=1e-5, atol=1e-5
        )
    # IRRA's MLM attends over all 16 positions: also the same in every batch, but it sees the
    # padding, so its logits differ from the masked ones
    ref_irra = mlm_logits_of_first(irra, images[:1], alone)
    torch.testing.assert_close(mlm_logits_of_first(irra, images, long), ref_irra)
    assert (ref_irra - ref).abs().max() > 1e-3


def test_clean_mim_caption_stays_clean_with_masked_retrieval():
    """mim.caption=clean: MIM sees the clean caption even when SDM/ID see the masked one."""
    torch.manual_seed(0)
    models = {
        extra: build_model(tiny_cfg(*extra), vocab_size=50, eot_id=49, num_ids=3)
        for extra in [
            (),
            ("mlm.masked_caption_for_retrieval=true",),
            ("mlm.masked_caption_for_retrieval=true", "mim.caption=masked"),
        ]
    }
    state = models[()].state_dict()
    b = batch()
    out = {}
    for extra, model in models.items():
        model.load_state_dict(state)
        with torch.no_grad():
            out[extra] = model({**b, "mim_generator": torch.Generator().manual_seed(5)})
    plain, masked_retrieval, masked_both = out.values()
    assert torch.equal(masked_retrieval["mim"], plain["mim"])
    assert not torch.equal(masked_retrieval["sdm"], plain["sdm"])  # retrieval did change
    assert not torch.equal(masked_both["mim"], plain["mim"])  # and the masked caption would


@pytest.mark.parametrize(
    ("extra", "absent"),
    [
        (["loss.id_weight=0"], {"classifier.weight", "classifier.bias"}),
        (["loss.mim_weight=0"], {"encoders.mask_token", "mim_head.fc.weight"}),
        (["mim.target=none", "loss.mlm_weight=0"], {"encoders.mask_token", "mlm_head.fc.weight"}),
    ],
)
def test_only_used_parts_are_built_and_reload_bit_exact(extra, absent, tmp_path):
    """Every parameter gets a gradient (what DDP needs); the checkpoint reloads bit-exact."""
    torch.manual_seed(0)
    cfg = tiny_cfg(*extra)
    model = build_model(cfg, vocab_size=50, eot_id=49, num_ids=3)
    names = {n for n, _ in model.named_parameters()}
    assert not names & absent
    model(batch())["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, cfg)
    again, _, _ = checkpoint.load_for_eval(path, torch.device("cpu"))
    assert again.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_checkpoint_from_before_optional_parts_loads(tmp_path):
    """A checkpoint whose signature predates `classifier`/`mask_token` (both always built)."""
    import copy
    from dataclasses import replace

    from bilma.model.bilma import BiLMa

    torch.manual_seed(0)
    cfg = tiny_cfg("loss.mim_weight=0")
    new = build_model(cfg, vocab_size=50, eot_id=49, num_ids=3)
    heads = replace(new.heads_spec, classifier=True, mask_token=True)
    old = BiLMa(copy.deepcopy(new.encoders), heads, cfg)
    assert "encoders.mask_token" in old.state_dict()
    path = tmp_path / "old.pt"
    checkpoint.save(path, old, cfg)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["signature"]["heads"]["classifier"], ckpt["signature"]["heads"]["mask_token"]
    torch.save(ckpt, path)
    again, _, _ = checkpoint.load_for_eval(path, torch.device("cpu"))
    for k, v in old.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    # the model of today's config is another shape: refused with the difference named
    with pytest.raises(checkpoint.CheckpointMismatch, match="heads.mask_token: checkpoint True"):
        checkpoint.load_model_state(new, checkpoint.load(path), path)


def test_the_sync_free_forward_gives_the_losses_of_the_boolean_one():
    """Captions in a length bucket, the MLM head on `mlm_capacity` rows, masked means: the
    losses of the boolean selections over captions trimmed to the longest (before issue 21)."""
    from support.reference_losses import old_mlm_loss, old_semmim_loss
    from support.tiny import random_batch

    from bilma.model.bilma import mlm_capacity, trim_batch
    from bilma.training.syncs import SyncCounter

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), vocab_size=50, eot_id=49, num_ids=3)
    b = random_batch(4, (128, 64), vocab=50, length=16)
    old = trim_batch(b)  # to the longest caption: 13 tokens
    assert old["caption_ids"].shape[1] == 13
    image_tokens = model.encoders.encode_image(old["images"])
    masked = model.encoders.encode_text(old["mlm_ids"])
    text = model.encoders.encode_text(old["caption_ids"])
    logits, labels = model.mlm_predict(image_tokens, masked, old)
    old_mlm = old_mlm_loss(logits[None], labels[None])
    generator = {"mim_generator": torch.Generator().manual_seed(3)}
    pred, mask = model.mim_predict(old["images"], {**old, **generator}, text, masked)
    old_mim = old_semmim_loss(pred, old["patch_labels"], mask)

    new = trim_batch(b, multiple=8)  # the bucket of 16
    new["mlm_capacity"] = mlm_capacity(new["mlm_labels"])  # 14 chosen: 16 rows
    assert new["caption_ids"].shape[1] == 16 and new["mlm_capacity"] == 16 < 64
    with SyncCounter() as syncs:
        out = model({**new, "mim_generator": torch.Generator().manual_seed(3)})
        out["loss"].backward()
    assert syncs.count == 0
    torch.testing.assert_close(out["mlm"], old_mlm, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["mim"], old_mim, rtol=1e-6, atol=1e-6)


def test_caption_lengths_are_bucketed_and_the_mlm_capacity_bounds_the_chosen():
    from support.tiny import random_batch

    from bilma.model.bilma import caption_length, mlm_capacity

    ids = random_batch(4, length=16)["caption_ids"]  # longest caption: 13 tokens
    assert [caption_length(ids, m) for m in (1, 8, 16, 32)] == [13, 16, 16, 16]
    labels = torch.full((8, 40), -100)
    labels[:3, 1:7] = 5  # 18 chosen of 320 positions: rows in multiples of 8
    assert mlm_capacity(labels) == 24 and mlm_capacity(labels, 64) == 64
    labels[:] = 5
    assert mlm_capacity(labels, 64) == 320  # never more than every position


def test_patch_masks_of_a_cpu_generator_are_those_of_before():
    """Drawn where the generator lives: on the CPU the very masks of earlier versions."""
    before = torch.zeros(3, 32, dtype=torch.bool)
    idx = torch.rand(3, 32, generator=torch.Generator().manual_seed(1)).argsort(dim=1)[:, :16]
    before.scatter_(1, idx, True)
    m = random_patch_mask(
        3, (8, 4), 0.5, "patch", torch.device("cpu"), torch.Generator().manual_seed(1)
    )
    assert torch.equal(m, before)


@pytest.mark.slow  # about 40 s on 2 busy cores
def test_compiled_parts_give_the_eager_losses_with_one_graph_per_length_bucket(monkeypatch):
    """torch.compile's capture (dynamo and AOT autograd; inductor's code generation is left to
    the slow CLI test): the same losses and gradients as eager, and a new graph only for a
    new caption-length bucket, none for a new batch of a known one."""
    import functools

    import torch._dynamo
    from support.tiny import random_batch
    from torch._dynamo.utils import counters

    from bilma.model.bilma import mlm_capacity, trim_batch

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()

    def run(model, seed: int, length: int) -> dict[str, torch.Tensor]:
        b = trim_batch(random_batch(4, (128, 64), vocab=50, length=length, seed=seed), multiple=8)
        assert b["caption_ids"].shape[1] == length  # the longest caption: 13 or 7 tokens
        b = {**b, "mlm_capacity": mlm_capacity(b["mlm_labels"])}
        b["mim_generator"] = torch.Generator().manual_seed(seed)
        model.zero_grad(set_to_none=True)
        out = model(b)
        out["loss"].backward()
        return {"grad": model.mlm_cross.ln_q.weight.grad, **out}

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), vocab_size=50, eot_id=49, num_ids=3)
    eager = [run(model, s, n) for s, n in ((0, 16), (1, 16), (2, 8))]
    model.compile_parts(length_bucket=8)
    counters.clear()
    compiled = [run(model, 0, 16)]
    graphs = counters["stats"]["unique_graphs"]
    compiled.append(run(model, 1, 16))  # another batch of the same bucket: no new graph
    assert counters["stats"]["unique_graphs"] == graphs
    compiled.append(run(model, 2, 8))
    assert counters["stats"]["unique_graphs"] > graphs
    for e, c in zip(eager, compiled, strict=True):
        for key in e:
            torch.testing.assert_close(c[key], e[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not counters["graph_break"]


def train_on(model, b: dict, part: str, steps: int = 30) -> list[float]:
    """`steps` Adam steps on one batch whose only loss is `part` (its values); the first
    step's gradient must reach the image encoder. A MIM mask generator is reseeded each step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        if "mim_generator" in b:
            b["mim_generator"].manual_seed(1)
        out = model(b)
        assert set(out) == {part, "loss"}
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            grad = model.encoders.vision.embeddings.patch_embedding.weight.grad
            assert grad is not None and grad.abs().sum() > 0
        opt.step()
        losses.append(float(out[part].detach()))
    return losses


@pytest.mark.parametrize("target", ["mean_rgb", "feature"])
def test_the_paper_s_other_mim_targets_train_and_reach_the_image_encoder(target):
    """BiLMa's Appendix Table 5 compares a patch's mean colour and the clean image's feature
    (KL) as MIM targets: each trains (its loss falls on a fixed batch) and its gradient
    reaches the image encoder through the masked patches."""
    torch.manual_seed(0)
    cfg = tiny_cfg(f"mim.target={target}", "loss.sdm_weight=0", "loss.id_weight=0",
                   "loss.mlm_weight=0", "mim.cross_module=own")  # fmt: skip
    model = build_model(cfg, vocab_size=50, eot_id=49, num_ids=3)
    width = 3 if target == "mean_rgb" else cfg.model.embed_dim  # the joint width
    assert model.mim_head.fc.out_features == width
    b = batch()
    b["mim_generator"] = torch.Generator().manual_seed(1)  # one mask for every step
    losses = train_on(model, b, "mim")
    # The feature target's teacher is the same encoder, training too: a moving target.
    assert losses[-1] < (0.5 if target == "mean_rgb" else 0.75) * losses[0], losses


def test_mean_rgb_and_feature_losses_by_hand():
    from bilma.model import losses

    torch.manual_seed(0)
    pred, teacher = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    p, q = torch.softmax(teacher / 2, -1), torch.log_softmax(pred / 2, -1)
    kl = (p * (p.log() - q)).sum(-1)
    want = kl[mask].mean()
    got = losses.mim_feature_loss(pred, teacher, mask, temperature=2.0)
    assert torch.allclose(got, want, atol=1e-6)
    assert float(losses.mim_feature_loss(teacher, teacher, mask)) == pytest.approx(0, abs=1e-6)


def test_the_positive_control_s_attribute_head_trains_and_reaches_the_image_encoder():
    """loss.attribute_weight: a linear head predicts each identity's local attributes from
    the global image and text features; it trains on a fixed batch, its gradient reaches the
    image encoder, and its checkpoint reloads (the label table is not part of it)."""
    torch.manual_seed(0)
    cfg = tiny_cfg("loss.attribute_weight=1", "loss.sdm_weight=0", "loss.id_weight=0",
                   "loss.mlm_weight=0", "loss.mim_weight=0")  # fmt: skip
    classes = (5, 6, 5, 13)
    model = build_model(cfg, vocab_size=50, eot_id=49, num_ids=3, attributes=classes)
    assert model.attribute_head.out_features == sum(classes)
    assert "attribute_head" in model.new_module_names()
    model.set_attribute_table(torch.tensor([[0, 1, 2, 3], [4, 0, 0, 12], [2, 5, 4, 0]]))
    losses = train_on(model, batch(), "attribute")
    assert losses[-1] < 0.5 * losses[0], losses
    assert "attribute_table" not in model.state_dict()


def test_attribute_loss_by_hand():
    from bilma.model import losses

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5)
    v, t = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([[0, 1], [2, 0], [1, 1]])
    got = losses.attribute_loss(head, v, t, labels, (3, 2))
    ce = torch.nn.functional.cross_entropy
    want = (
        sum(ce(head(f)[:, :3], labels[:, 0]) + ce(head(f)[:, 3:], labels[:, 1]) for f in (v, t)) / 4
    )
    assert torch.allclose(got, want, atol=1e-6)
