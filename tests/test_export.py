"""export-clip: a bilma checkpoint as a transformers CLIP folder, and the build-once pretraining."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from support.paths import CONFIGS
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.data.datasets import load_data
from bilma.data.records import DataError
from bilma.export import (
    EXPORT_MARKER,
    build_pretrained_clip,
    changed_keys,
    exact_in_transformers,
    export_clip,
    square_side,
    square_table,
)
from bilma.model.bilma import build_model
from bilma.model.clip import resize_position_table
from bilma.training.checkpoint import save


def _features(out):
    """transformers 5 returns an output object with the projected pooled features."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


@pytest.mark.parametrize("grid", [(8, 4), (24, 8), (12, 4), (4, 4), (6, 4), (5, 3)])
def test_square_table_comes_back_exactly_through_the_bilinear_resize(grid) -> None:
    h, w = grid
    table = torch.randn(1 + h * w, 16)
    s = square_side(grid)
    square = square_table(table, grid)
    assert square.shape == (1 + s * s, 16)
    assert torch.equal(resize_position_table(square, (s, s), grid), table)


def test_which_grids_transformers_resamples_exactly() -> None:
    assert exact_in_transformers((24, 8)) and exact_in_transformers((12, 4))
    assert exact_in_transformers((4, 4))
    assert not exact_in_transformers((8, 4))


def _trained_like_checkpoint(root: Path, tmp: Path, size: list[int]) -> tuple[Path, object, object]:
    """A tiny model with every weight perturbed (so no layer norm is the identity), saved."""
    cfg = load_config(
        None,
        tiny_overrides(root, tmp / "runs", f"data.image_size=[{size[0]},{size[1]}]")
        + ["loss.itc_weight=1"],
    )
    tok = load_data(load_config(None, tiny_overrides(root, tmp / "runs"))).tokenizer
    torch.manual_seed(0)
    model = build_model(cfg, tok.vocab_size, tok.eot_id, 24)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.itc_logit_scale.fill_(3.0)
    path = tmp / "ckpt.pt"
    save(path, model, cfg, epoch=1)
    return path, model.eval(), tok


@pytest.mark.parametrize("size,interpolate", [([192, 64], True), ([64, 64], False)])
def test_export_gives_the_same_features_in_transformers(
    synth_small, tmp_path, size, interpolate
) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    ckpt, model, tok = _trained_like_checkpoint(synth_small, tmp_path, size)
    out = tmp_path / "clip"
    old = os.umask(0o022)
    try:
        info = export_clip(ckpt, out)
    finally:
        os.umask(old)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= files
    # readable by colleagues like any file under umask 022 (safetensors writes 0600)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert {"tokenizer_config.json", "special_tokens_map.json", EXPORT_MARKER} <= files
    assert info["grid"] == [size[0] // 16, size[1] // 16]
    hf = CLIPModel.from_pretrained(out).eval()
    hf_tok = CLIPTokenizer.from_pretrained(out)
    assert float(hf.logit_scale.detach()) == pytest.approx(3.0)

    captions = [
        "A person in a red tee and black pants, with short brown hair.",
        "The pedestrian wears white shoes. They carry a blue backpack.",
    ]
    ours = torch.from_numpy(tok.encode(captions, 48)).long()
    enc = hf_tok(captions, padding="max_length", max_length=48, return_tensors="pt")
    kept = enc["attention_mask"].bool()
    assert torch.equal(enc["input_ids"][kept], ours[ours != 0])  # same ids up to padding
    images = torch.randn(3, 3, *size)
    with torch.no_grad():
        t_hf = _features(hf.get_text_features(**enc))
        v_hf = _features(hf.get_image_features(images, interpolate_pos_encoding=interpolate))
        t, v = model.encode_text(ours), model.encode_image(images)
    assert torch.allclose(t_hf, t, atol=1e-5, rtol=1e-4)
    assert torch.allclose(v_hf, v, atol=1e-5, rtol=1e-4)


def test_export_reloads_exactly_and_fine_tunes(synth_small, tmp_path, capsys) -> None:
    """A 2:1 grid (8x4): bilma's load path gives back the trained encoders bit for bit, and a
    fine-tuning run starts from the folder (its tokenizer included)."""
    from bilma.training.trainer import train

    ckpt, model, tok = _trained_like_checkpoint(synth_small, tmp_path, [128, 64])
    out = tmp_path / "clip"
    export_clip(ckpt, out)
    cfg = load_config(
        None, tiny_overrides(synth_small, tmp_path / "runs", f"model.pretrained={out}")
    )
    data = load_data(cfg)
    assert data.tokenizer.fingerprint == tok.fingerprint
    loaded = build_model(cfg, data.tokenizer.vocab_size, data.tokenizer.eot_id, 24)
    state, want = loaded.encoders.state_dict(), model.encoders.state_dict()
    for key, value in want.items():
        if key != "mask_token":
            assert torch.equal(state[key], value), key
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        loaded.encoders.mask_token.copy_(model.encoders.mask_token)
        assert torch.equal(loaded.eval().encode_image(images), model.encode_image(images))

    # zero-shot: `eval --config` evaluates the folder's weights untrained, as the source model
    from bilma.__main__ import main
    from bilma.evaluation.retrieval import evaluate

    want = evaluate(model, data, "test", cfg, torch.device("cpu"))
    over = tiny_overrides(synth_small, tmp_path / "runs", f"model.pretrained={out}")
    assert main(["eval", "--config", "/dev/null", *over, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "untrained (zero-shot" in text
    assert f"{want['R1']:.2f}" in text and f"{want['mAP']:.2f}" in text
    assert main(["eval", "--checkpoint", str(ckpt), "train.epochs=3"]) == 2

    ft = load_config(
        None,
        tiny_overrides(
            synth_small,
            tmp_path / "runs",
            f"model.pretrained={out}",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
        ),
    )
    result = train(ft, progress=False)
    assert 0.0 <= result["metrics"]["R1"] <= 100.0


def test_export_refuses_a_foreign_checkpoint(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(DataError, match="not a bilma checkpoint"):
        export_clip(bad, tmp_path / "clip")
    assert not (tmp_path / "clip").exists()
    # A folder that is not an export (say, OpenAI's download) is never replaced.
    other = tmp_path / "clip-vit-base-patch16"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(DataError, match="not an exported CLIP folder"):
        export_clip(bad, other)
    assert (other / "config.json").read_text() == "{}"


def _pretrain_cfg(root: Path, runs: Path, *extra: str):
    return load_config(
        CONFIGS / "synth_pretrain.yaml",
        tiny_overrides(
            root,
            runs,
            "data.synth_pool=all",  # the session's small dataset stands in for the pool
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            *extra,
        ),
    )


def test_pretrain_clip_builds_once_and_refuses_a_stale_folder(
    synth_small, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "clip-synth"
    cfg = _pretrain_cfg(synth_small, tmp_path / "runs")
    assert cfg.loss.itc_weight > 0 and cfg.loss.sdm_weight == cfg.loss.id_weight == 0
    info = build_pretrained_clip(cfg, out)
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["pretrain_config"] == info["pretrain_config"]

    import bilma.training.trainer

    def no_training(*_a, **_k):
        raise AssertionError("a built folder must be reused, not retrained")

    monkeypatch.setattr(bilma.training.trainer, "train", no_training)
    assert build_pretrained_clip(cfg, out)["pretrain_config"] == info["pretrain_config"]
    stale = _pretrain_cfg(synth_small, tmp_path / "runs", "optim.lr=0.002")
    with pytest.raises(DataError, match="stale: .* differs in optim.lr;"):
        build_pretrained_clip(stale, out)
    # Where things live is not the experiment: another runs folder reuses the same build.
    moved = _pretrain_cfg(synth_small, tmp_path / "elsewhere")
    assert build_pretrained_clip(moved, out)["pretrain_config"] == info["pretrain_config"]
    # A key the project gains later, at its default, leaves the folder current.
    saved = dict(marker["pretrain_keys"])
    del saved["loss.itc_weight"]
    assert changed_keys(saved, cfg) == ["loss.itc_weight"]  # 1.0 here, not the default 0
    del saved["data.synth_lookalike"]
    assert changed_keys(saved, cfg) == ["loss.itc_weight"]
    (out / EXPORT_MARKER).unlink()
    with pytest.raises(DataError, match="not built by"):
        build_pretrained_clip(cfg, out)


def test_the_pretraining_pool_shares_no_identity_with_the_fine_tuning_data() -> None:
    from bilma.data.synth import sample_identities, sample_lookalike_identities, split_sizes

    configs = CONFIGS
    pre = load_config(configs / "synth_pretrain.yaml").data
    ft = load_config(configs / "synth_finetune.yaml").data
    assert (pre.synth_pool, ft.synth_pool) == ("pretrain", "finetune")
    assert pre.synth_lookalike == 0 and ft.synth_lookalike == 2
    pool = {i.key() for i in sample_identities(pre.synth_ids, pre.synth_seed, pre.synth_pool)}
    blocks = list(split_sizes(ft.synth_ids).values())
    fine, _ = sample_lookalike_identities(
        blocks, ft.synth_seed, ft.synth_lookalike, ft.synth_lookalike_share, ft.synth_pool
    )
    assert len(pool) == pre.synth_ids and len(fine) == ft.synth_ids
    assert not pool & {i.key() for i in fine}
    # Without the pools, these seeds and sizes would share people (why the pools exist).
    everyone = {i.key() for i in sample_identities(pre.synth_ids, pre.synth_seed)}
    fine_all, _ = sample_lookalike_identities(blocks, ft.synth_seed, 2, 0.5)
    assert everyone & {i.key() for i in fine_all}


def test_export_command_names_a_bad_checkpoint(tmp_path, capsys) -> None:
    from bilma.__main__ import main

    code = main(["export-clip", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path / 'none.pt'}"


def test_export_into_an_earlier_export_keeps_what_the_user_added(synth_small, tmp_path) -> None:
    ckpt, _, _ = _trained_like_checkpoint(synth_small, tmp_path, [128, 64])
    out = tmp_path / "clip"
    export_clip(ckpt, out)
    first = sorted(p.name for p in out.iterdir())
    export_clip(ckpt, out)  # a plain re-export replaces the folder whole
    assert sorted(p.name for p in out.iterdir()) == first
    (out / "NOTES.md").write_text("which checkpoint this was, and why")
    (out / "eval").mkdir()
    (out / "eval" / "zero_shot.json").write_text("{}")
    with pytest.raises(DataError) as e:
        export_clip(ckpt, out)
    assert str(e.value) == (
        f"{out} holds files an export does not write (NOTES.md, eval/zero_shot.json); they "
        "would be deleted: move them out, or choose another --out"
    )
    assert (out / "NOTES.md").read_text() == "which checkpoint this was, and why"
    assert sorted(p.name for p in out.iterdir()) == sorted([*first, "NOTES.md", "eval"])
    assert not list(tmp_path.glob(".*.tmp"))  # the half-built folder is gone


def test_export_out_naming_a_file_is_one_line(synth_small, tmp_path, capsys) -> None:
    from bilma.__main__ import main

    ckpt, _, _ = _trained_like_checkpoint(synth_small, tmp_path, [128, 64])
    target = tmp_path / "clip.bin"
    target.write_text("mine")
    assert main(["export-clip", "--checkpoint", str(ckpt), "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {target} is a file; export-clip writes a folder: give --out a folder path"
    )
    assert target.read_text() == "mine"
