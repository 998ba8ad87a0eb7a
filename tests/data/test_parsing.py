"""Label sets, parse-map loading and SemMIM patch labels (bilma.data.parsing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bilma.data.parsing import (
    LABEL_SETS,
    LabelSet,
    get_label_set,
    load_parse_map,
    parse_map_path,
    patch_labels,
)
from bilma.data.records import DataError

# --- label sets -------------------------------------------------------------------------


def test_label_sets_match_schp() -> None:
    assert set(LABEL_SETS) == {"lip20", "atr18", "ppp7"}
    lip, atr, ppp = LABEL_SETS["lip20"], LABEL_SETS["atr18"], LABEL_SETS["ppp7"]
    assert lip.num_classes == 20 and atr.num_classes == 18 and ppp.num_classes == 7
    assert lip.classes[5] == "upper-clothes" and lip.classes[13] == "face"
    assert atr.classes[8] == "belt" and atr.classes[16] == "bag"
    assert ppp.classes == (
        "background",
        "head",
        "torso",
        "upper-arms",
        "lower-arms",
        "upper-legs",
        "lower-legs",
    )
    assert lip.flip_pairs == ((14, 15), (16, 17), (18, 19))
    assert atr.flip_pairs == ((9, 10), (12, 13), (14, 15))
    assert ppp.flip_pairs == ()
    for ls in LABEL_SETS.values():
        assert ls.classes[0] == "background"
        # Every left-X has its right-X as partner, and nothing else is paired.
        lefts = [i for i, c in enumerate(ls.classes) if c.startswith("left-")]
        expected = {(i, ls.classes.index("right-" + ls.classes[i][5:])) for i in lefts}
        assert set(ls.flip_pairs) == expected


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_flip_lut_swaps_pairs_and_is_an_involution(name: str) -> None:
    ls = LABEL_SETS[name]
    lut = ls.flip_lut
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for a, b in ls.flip_pairs:
        assert lut[a] == b and lut[b] == a
    paired = {i for p in ls.flip_pairs for i in p}
    for i in range(256):
        if i not in paired:
            assert lut[i] == i
    np.testing.assert_array_equal(lut[lut], np.arange(256))
    assert not lut.flags.writeable


def test_label_set_validation_and_lookup() -> None:
    assert get_label_set("lip20") is LABEL_SETS["lip20"]
    assert get_label_set(LABEL_SETS["ppp7"]) is LABEL_SETS["ppp7"]
    with pytest.raises(ValueError, match="lip20, atr18, ppp7"):
        get_label_set("lip19")
    with pytest.raises(ValueError, match="bad flip pair"):
        LabelSet("x", ("a", "b"), ((0, 2),))
    with pytest.raises(ValueError, match="bad flip pair"):
        LabelSet("x", ("a", "b", "c"), ((0, 1), (1, 2)))
    # Frozen, comparable and hashable despite the array field.
    assert LabelSet("x", ("a", "b"), ((0, 1),)) == LabelSet("x", ("a", "b"), ((0, 1),))
    assert hash(LABEL_SETS["lip20"]) == hash(LABEL_SETS["lip20"])


# --- paths and loading ------------------------------------------------------------------


def test_parse_map_path_layout(tmp_path: Path) -> None:
    p = parse_map_path(tmp_path / "parsing", "lip20", "CUHK01/0001001.jpg")
    assert p == tmp_path / "parsing" / "lip20" / "CUHK01" / "0001001.png"
    assert parse_map_path("r", LABEL_SETS["atr18"], "a/b.c.png") == Path("r/atr18/a/b.c.png")
    for bad in ("/abs/x.jpg", "../x.jpg", "a/../../x.jpg"):
        with pytest.raises(ValueError, match="relative"):
            parse_map_path("r", "lip20", bad)
    with pytest.raises(ValueError, match="valid names"):
        parse_map_path("r", "nope", "x.jpg")


def _save(path: Path, arr: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([255 - (i % 256) for i in range(768)])  # colours != indices
        img.putdata(arr.ravel().tolist())
    img.save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "P"])
def test_load_parse_map_reads_raw_indices(tmp_path: Path, mode: str) -> None:
    arr = np.arange(60, dtype=np.uint8).reshape(6, 10) % 20
    path = _save(tmp_path / "m.png", arr, mode)
    with Image.open(path) as im:
        assert im.mode == mode
    out = load_parse_map(path, "lip20", expected_size=(10, 6))
    assert out.dtype == np.uint8 and out.shape == (6, 10)
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(load_parse_map(path, LABEL_SETS["lip20"]), arr)


def test_load_parse_map_missing(tmp_path: Path) -> None:
    path = tmp_path / "parsing" / "lip20" / "a.png"
    with pytest.raises(DataError) as e:
        load_parse_map(path, "lip20", (10, 6), image_path="imgs/a.jpg")
    msg = str(e.value)
    assert str(path) in msg and "imgs/a.jpg" in msg and "mim.target" in msg
    assert "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_load_parse_map_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read parse map") as e:
        load_parse_map(path, "lip20")
    assert str(path) in str(e.value)
    # A truncated PNG fails at decode time, not at open.
    good = _save(tmp_path / "g.png", np.zeros((64, 64), np.uint8))
    trunc = tmp_path / "t.png"
    trunc.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=str(trunc)):
        load_parse_map(trunc, "lip20")


def test_load_parse_map_rejects_rgb(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (10, 6)).save(path)
    with pytest.raises(DataError, match="mode-RGB") as e:
        load_parse_map(path, "lip20")
    assert str(path) in str(e.value)


def test_load_parse_map_size_mismatch(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.png", np.zeros((50, 100), np.uint8))
    with pytest.raises(DataError) as e:
        load_parse_map(path, "lip20", expected_size=(120, 60), image_path="imgs/x.jpg")
    msg = str(e.value)
    assert f"parse map {path} is 100x50 but its image imgs/x.jpg is 120x60" in msg


def test_load_parse_map_label_out_of_range(tmp_path: Path) -> None:
    arr = np.zeros((4, 4), np.uint8)
    arr[1, 2] = 23
    path = _save(tmp_path / "m.png", arr)
    with pytest.raises(DataError) as e:
        load_parse_map(path, "lip20")
    msg = str(e.value)
    assert f"parse map {path} has label 23, outside lip20 (0..19)" in msg
    assert "mim.labels" in msg
    # 19 is the last valid lip20 id but not a valid ppp7 one.
    arr[1, 2] = 19
    _save(path, arr)
    assert load_parse_map(path, "lip20")[1, 2] == 19
    with pytest.raises(DataError, match=r"outside ppp7 \(0..6\)"):
        load_parse_map(path, "ppp7")


# --- patch labels -----------------------------------------------------------------------

# 4x4 map, patch 2 -> 2x2 grid, patches in row-major order:
#   top-left  [[1, 1], [1, 2]] -> 1 (3 votes)
#   top-right [[3, 0], [0, 3]] -> tie 0/3 -> 0 (smaller id)
#   bottom-left  [[4, 5], [5, 4]] -> tie 4/5 -> 4
#   bottom-right [[2, 2], [6, 7]] -> 2
MAP = np.array(
    [
        [1, 1, 3, 0],
        [1, 2, 0, 3],
        [4, 5, 2, 2],
        [5, 4, 6, 7],
    ],
    dtype=np.uint8,
)


def test_majority_hand_computed_with_ties() -> None:
    out = patch_labels(MAP, patch=2, num_classes=8, rule="majority")
    assert out.dtype == torch.int64 and out.shape == (4,)
    assert out.tolist() == [1, 0, 4, 2]
    # Torch input of any integer dtype gives the same answer.
    for dt in (torch.uint8, torch.int32, torch.int64):
        assert patch_labels(torch.from_numpy(MAP).to(dt), 2, 8).tolist() == [1, 0, 4, 2]


def test_soft_histograms_hand_counts() -> None:
    out = patch_labels(MAP, patch=2, num_classes=8, rule="soft")
    assert out.dtype == torch.float32 and out.shape == (4, 8)
    expected = torch.zeros(4, 8)
    expected[0, 1], expected[0, 2] = 3, 1
    expected[1, 0], expected[1, 3] = 2, 2
    expected[2, 4], expected[2, 5] = 2, 2
    expected[3, 2], expected[3, 6], expected[3, 7] = 2, 1, 1
    torch.testing.assert_close(out, expected / 4)
    torch.testing.assert_close(out.sum(1), torch.ones(4))


def test_patch_order_is_row_major_over_the_grid() -> None:
    # 3x2 grid of 4x4 patches, patch k filled with class k.
    grid = np.arange(6, dtype=np.uint8).reshape(3, 2)
    m = np.kron(grid, np.ones((4, 4), np.uint8))
    assert m.shape == (12, 8)
    assert patch_labels(m, 4, 6).tolist() == [0, 1, 2, 3, 4, 5]
    soft = patch_labels(m, 4, 6, rule="soft")
    torch.testing.assert_close(soft, torch.eye(6))


def test_majority_matches_a_loop_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    m = rng.integers(0, 20, (48, 32), dtype=np.uint8)
    out = patch_labels(m, 16, 20).tolist()
    ref = []
    for gy in range(3):
        for gx in range(2):
            counts = np.bincount(
                m[gy * 16 : gy * 16 + 16, gx * 16 : gx * 16 + 16].ravel(), None, 20
            )
            ref.append(int(np.flatnonzero(counts == counts.max())[0]))
    assert out == ref


def test_a_batch_of_maps_gives_each_map_its_own_labels() -> None:
    """The trainer's call: one [B, H, W] batch (as on the device), the per-map answers."""
    rng = np.random.default_rng(3)
    maps = rng.integers(0, 20, (5, 48, 32), dtype=np.uint8)
    for rule in ("majority", "soft"):
        batched = patch_labels(torch.from_numpy(maps), 16, 20, rule)
        assert batched.shape[:2] == (5, 6)
        for b in range(5):
            assert torch.equal(batched[b], patch_labels(maps[b], 16, 20, rule))


def test_patch_labels_errors() -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        patch_labels(np.zeros((40, 32), np.uint8), 16, 20)
    with pytest.raises(ValueError, match="outside 0..19"):
        patch_labels(np.full((16, 16), 20, np.uint8), 16, 20)
    with pytest.raises(ValueError, match="outside"):
        patch_labels(np.full((16, 16), -1, np.int64), 16, 20)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        patch_labels(np.zeros((1, 1, 16, 16), np.uint8), 16, 20)
    with pytest.raises(ValueError, match="integer"):
        patch_labels(np.zeros((16, 16), np.float32), 16, 20)
    with pytest.raises(ValueError, match="rule"):
        patch_labels(np.zeros((16, 16), np.uint8), 16, 20, rule="mode")  # type: ignore[arg-type]
