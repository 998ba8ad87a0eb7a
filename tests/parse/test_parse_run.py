"""`python -m bilma parse` with a tiny random SegFormer (ATR-18 id2label) as the parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.parse_fixtures import make_cuhk, make_icfg, make_parser, make_rstpreid
from support.tiny import tiny_overrides

from bilma.__main__ import main
from bilma.data import formats
from bilma.data.parsing import load_parse_map, parse_map_path
from bilma.parse.run import dataset_images, shard_paths

FORMATS = {"cuhk-pedes": make_cuhk, "icfg-pedes": make_icfg, "rstpreid": make_rstpreid}


@pytest.fixture(scope="module")
def parser_dir(tmp_path_factory) -> Path:
    return make_parser(tmp_path_factory.mktemp("parser") / "segformer-atr18")


def vary_sizes(dataset: str, root: Path) -> list[str]:
    """Give every other image its own size (the fixtures' are all 4x8); return the paths."""
    paths = dataset_images(dataset, root)
    rng = np.random.default_rng(0)
    for k, p in enumerate(paths):
        if k % 2:
            w, h = 7 + 3 * k, 11 + 5 * k
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "imgs" / p, format="JPEG")
    return paths


def parse(dataset: str, root: Path, model: Path, *extra: str) -> int:
    args = ["parse", "--dataset", dataset, "--root", str(root), "--model", str(model)]
    return main([*args, "--workers", "0", "--no-progress", *extra])


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_maps_have_image_sizes_and_labels_then_rerun_skips(dataset, tmp_path, parser_dir, capsys):
    root = FORMATS[dataset](tmp_path)
    paths = vary_sizes(dataset, root)
    assert parse(dataset, root, parser_dir, "--batch-size", "3") == 0
    assert f"parsed {len(paths)} images (0 already done)" in capsys.readouterr().out
    mtimes = {}
    for p in paths:
        map_path = parse_map_path(root / "parsing", "atr18", p)
        with Image.open(root / "imgs" / p) as im, Image.open(map_path) as m:
            assert m.mode == "L" and m.size == im.size
            size = im.size
        labels = load_parse_map(map_path, "atr18", size)  # the trainer's own check
        assert labels.max() < 18
        mtimes[p] = map_path.stat().st_mtime_ns
    assert len(list((root / "parsing" / "atr18").rglob("*.png"))) == len(paths)

    assert parse(dataset, root, parser_dir) == 0
    assert f"parsed 0 images ({len(paths)} already done)" in capsys.readouterr().out
    assert {p: parse_map_path(root / "parsing", "atr18", p).stat().st_mtime_ns for p in paths} == (
        mtimes
    )


def test_maps_equal_transformers_post_processing(tmp_path, parser_dir):
    """Upsampling and argmax agree with the processor's own post-processing, image by image."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    root = make_cuhk(tmp_path)
    paths = vary_sizes("cuhk-pedes", root)
    assert parse("cuhk-pedes", root, parser_dir, "--batch-size", "1") == 0
    model = AutoModelForSemanticSegmentation.from_pretrained(parser_dir).eval()
    processor = AutoImageProcessor.from_pretrained(parser_dir)
    for p in paths:
        with Image.open(root / "imgs" / p) as im:
            image = im.convert("RGB")
        with torch.inference_mode():
            outputs = model(**processor(images=image, return_tensors="pt"))
        (ref,) = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[(image.height, image.width)]
        )
        ours = np.asarray(Image.open(parse_map_path(root / "parsing", "atr18", p)))
        assert np.array_equal(ours, ref.numpy()), p


def test_a_wrong_map_is_parsed_again(tmp_path, parser_dir, capsys):
    root = make_rstpreid(tmp_path)
    assert parse("rstpreid", root, parser_dir, "--labels", "ppp7") == 0
    first = dataset_images("rstpreid", root)[0]
    bad = parse_map_path(root / "parsing", "ppp7", first)
    Image.new("L", (5, 5)).save(bad)  # another size than its 4x8 image
    capsys.readouterr()
    assert parse("rstpreid", root, parser_dir, "--labels", "ppp7") == 0
    assert "parsed 1 images (6 already done)" in capsys.readouterr().out
    assert Image.open(bad).size == (4, 8)


def test_shards_are_disjoint_and_cover_the_dataset(tmp_path, parser_dir):
    root = make_cuhk(tmp_path)
    paths = dataset_images("cuhk-pedes", root)
    written = []
    for k in range(3):
        out = tmp_path / f"shard{k}"
        assert (
            parse("cuhk-pedes", root, parser_dir, "--shard", f"{k}/3", "--parsing-root", str(out))
            == 0
        )
        written.append({str(f.relative_to(out / "atr18")) for f in out.rglob("*.png")})
    assert all(written) and sum(len(w) for w in written) == len(paths) == 9
    assert set.union(*written) == {str(Path(p).with_suffix(".png")) for p in paths}
    for n in range(1, 6):
        items = [f"i{j}" for j in range(11)]
        slices = [shard_paths(items, (i, n)) for i in range(n)]
        assert sorted(sum(slices, [])) == sorted(items)
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_bad_shard_and_missing_parser_are_one_line(tmp_path, parser_dir, capsys):
    root = make_cuhk(tmp_path)
    assert parse("cuhk-pedes", root, parser_dir, "--shard", "3/3") == 2
    assert "error: --shard '3/3': need N >= 1 and 0 <= I < N" in capsys.readouterr().err
    assert parse("cuhk-pedes", root, tmp_path / "nothing") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no parser at {tmp_path / 'nothing'}") and "hf download" in err


def test_unmappable_parser_is_refused_with_its_classes(tmp_path, capsys):
    folder = make_parser(tmp_path / "clothes9", ["background", "upper_torso", "left_pants", "Hair"])
    root = make_icfg(tmp_path)
    assert parse("icfg-pedes", root, folder, "--labels", "ppp7") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "2 of its 4 classes cannot be placed in ppp7: 1:upper-torso, 2:left-pants." in err
    assert parse("icfg-pedes", root, folder) == 2  # no --labels: not one of the sets
    assert "pass --labels lip20, atr18 or ppp7" in capsys.readouterr().err
    assert not (root / "parsing").exists()


def test_training_runs_on_parsed_ppp7_maps(synth_small, tmp_path, parser_dir):
    """The synthetic images parsed into ppp7 (mapped from ATR-18) train SemMIM."""
    from bilma.config import load_config
    from bilma.runs.trial_dir import TrialDir
    from bilma.training.trainer import train

    parsed = tmp_path / "parsed"
    assert (
        parse("synth", synth_small, parser_dir, "--labels", "ppp7", "--parsing-root", str(parsed))
        == 0
    )
    n = len(formats.read_annotations("synth", synth_small))
    assert len(list((parsed / "ppp7").rglob("*.png"))) == n
    cfg = load_config(
        None,
        tiny_overrides(
            synth_small,
            tmp_path / "runs",
            f"data.parsing_root={parsed}",
            "mim.target=semantic",
            "mim.labels=ppp7",
            "loss.mim_weight=1",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
        ),
    )
    result = train(cfg, progress=False)
    assert np.isfinite(result["metrics"]["R1"])
    records = TrialDir.for_config(cfg).read_metrics()
    train_record = next(r for r in records if r["split"] == "train")
    assert train_record["mim"] > 0  # the SemMIM loss on the ppp7 patch labels
