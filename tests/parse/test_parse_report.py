"""`python -m bilma parse-report` on the synthetic dataset's true maps and a degraded copy."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from bilma.__main__ import main
from bilma.data.parsing import LABEL_SETS, parse_map_path, patch_labels
from bilma.parse.run import dataset_images


def report(capsys, *args: str) -> dict:
    assert main(["parse-report", "--dataset", "synth", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def degrade(label_map: np.ndarray, k: int) -> np.ndarray:
    """Shift the map down by 2 rows and paint a block with class (k % 5) + 1."""
    out = np.roll(label_map, 2, axis=0)
    out[10:30, 5:25] = k % 5 + 1
    return out


def independent_miou(ours: list[np.ndarray], other: list[np.ndarray], n: int) -> float:
    """Mean over classes present in either set of |A_c & B_c| / |A_c | B_c| (all pixels)."""
    ious = []
    for c in range(n):
        inter = sum(int(((a == c) & (b == c)).sum()) for a, b in zip(ours, other, strict=True))
        union = sum(int(((a == c) | (b == c)).sum()) for a, b in zip(ours, other, strict=True))
        if union:
            ious.append(100.0 * inter / union)
    return sum(ious) / len(ious)


def test_true_maps_against_themselves_give_100(synth_small, capsys):
    root = str(synth_small)
    r = report(capsys, "--root", root, "--labels", "atr18", "--against", f"{root}/parsing")
    assert r["mIoU"] == 100.0 and r["compared"] == r["images"] == 60
    present = [c for c, share in r["pixel_share"].items() if share > 0]
    assert all(r["IoU"][c] == 100.0 for c in present)
    assert all(r["IoU"][c] is None for c in r["IoU"] if c not in present)


def test_degraded_copy_gives_the_independent_miou(synth_small, tmp_path, capsys):
    labels = "ppp7"
    n = LABEL_SETS[labels].num_classes
    paths = dataset_images("synth", synth_small)
    true_maps, bad_maps = [], []
    for k, p in enumerate(paths):
        truth = np.asarray(Image.open(parse_map_path(synth_small / "parsing", labels, p)))
        bad = degrade(truth, k)
        target = parse_map_path(tmp_path / "bad", labels, p)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(bad, "L").save(target)
        true_maps.append(truth)
        bad_maps.append(bad)
    png = tmp_path / "overview.png"
    r = report(
        capsys,
        *("--root", str(synth_small), "--labels", labels, "--parsing-root", str(tmp_path / "bad")),
        *("--against", str(synth_small / "parsing" / labels), "--out", str(png)),
        *("--image-size", "128", "64", "--patch", "16", "--examples", "3"),
    )
    expected = independent_miou(bad_maps, true_maps, n)
    assert 20 < expected < 99
    assert abs(r["mIoU"] - expected) < 1e-9

    pixels = np.concatenate([m.ravel() for m in bad_maps])
    for c, name in enumerate(LABEL_SETS[labels].classes):
        assert abs(r["pixel_share"][name] - 100.0 * (pixels == c).mean()) < 1e-9
    # synth maps are 128x64 already: the patch grid is the map's own 8 x 4 patches
    majority = np.concatenate([patch_labels(m, 16, n).numpy() for m in bad_maps])
    assert abs(r["background_patches"] - 100.0 * (majority == 0).mean()) < 1e-9

    with Image.open(png) as im:  # 3 panels: image | overlay, each 64 wide at height 192 -> 96
        assert im.size == (3 * 2 * 96 + 2 * 4, 192)


def test_a_missing_map_is_counted_and_left_out(synth_small, tmp_path, capsys):
    shutil.copytree(synth_small / "parsing" / "lip20", tmp_path / "copy" / "lip20")
    first = dataset_images("synth", synth_small)[0]
    parse_map_path(tmp_path / "copy", "lip20", first).unlink()
    r = report(
        capsys,
        *(
            "--root",
            str(synth_small),
            "--labels",
            "lip20",
            "--parsing-root",
            str(tmp_path / "copy"),
        ),
        *("--against", str(synth_small / "parsing"), "--examples", "0"),
    )
    assert r["without_map"] == 1 and r["compared"] == 59 and r["mIoU"] == 100.0
    assert "overview" not in r


def test_no_maps_is_one_line(synth_small, tmp_path, capsys):
    args = ["parse-report", "--dataset", "synth", "--root", str(synth_small), "--labels", "ppp7"]
    assert main([*args, "--parsing-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no ppp7 maps for the 60 images") and "bilma parse" in err
