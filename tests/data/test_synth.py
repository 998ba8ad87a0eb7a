"""The synthetic dataset: layout, determinism, exact parse maps, captions and the marker."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.synth_captions import names as _names

from bilma.data import synth
from bilma.data.synth import (
    COLOURS,
    LABEL_NAMES,
    SKIN_TONES,
    SYNTH_MARKER,
    Identity,
    describe,
    draw_figure,
    generate,
    image_rng,
    is_complete,
    sample_identities,
    tokenize,
)

IDS, IMAGES, H, W, SEED = 12, 2, 192, 64, 0
SMALL = {"ids": IDS, "images_per_id": IMAGES, "height": H, "width": W, "progress": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=SEED, **SMALL)
    return out


def _entries(root: Path) -> list[dict]:
    return json.loads((root / "reid_raw.json").read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _lid(labelset: str, name: str) -> int:
    return LABEL_NAMES[labelset].index(name)


def test_layout_splits_and_captions(dataset: Path) -> None:
    entries = _entries(dataset)
    assert len(entries) == IDS * IMAGES
    by_split: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for e in entries:
        assert set(e) == {"id", "file_path", "captions", "processed_tokens", "split"}
        by_split[e["split"]].add(e["id"])
        assert e["file_path"] == f"{e['split']}/{e['id']:05d}_{e['file_path'][-5]}.jpg"
        assert len(e["captions"]) == 2
        assert e["processed_tokens"] == [tokenize(c) for c in e["captions"]]
        assert all(t == t.lower() for toks in e["processed_tokens"] for t in toks)
        with Image.open(dataset / "imgs" / e["file_path"]) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (W, H))
        for labelset, names in LABEL_NAMES.items():
            png = dataset / "parsing" / labelset / e["file_path"].replace(".jpg", ".png")
            with Image.open(png) as lab:
                assert (lab.format, lab.mode, lab.size) == ("PNG", "L", (W, H))
                assert np.asarray(lab).max() < len(names)
    # ids >= 3: val and test get max(1, ids // 10) each, train the rest, train ids first.
    assert by_split["train"] == set(range(1, IDS - 1))
    assert by_split["val"] == {IDS - 1}
    assert by_split["test"] == {IDS}
    meta = json.loads((dataset / SYNTH_MARKER).read_text(encoding="utf-8"))
    assert meta["seed"] == SEED and meta["ids"] == IDS and meta["height"] == H


def test_split_sizes() -> None:
    assert synth.split_sizes(1200) == {"train": 960, "val": 120, "test": 120}
    assert synth.split_sizes(12) == {"train": 10, "val": 1, "test": 1}
    assert synth.split_sizes(2) == {"train": 2, "val": 0, "test": 0}
    assert synth.split_sizes(10, val_ids=0, test_ids=4) == {"train": 6, "val": 0, "test": 4}
    with pytest.raises(ValueError, match="val_ids"):
        synth.split_sizes(5, val_ids=3, test_ids=3)


def test_deterministic_and_worker_independent(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, seed=SEED, workers=2, **SMALL)
    assert _files(again) == _files(dataset)

    other = tmp_path / "other"
    generate(other, seed=SEED + 1, **SMALL)
    assert (other / "reid_raw.json").read_bytes() != (dataset / "reid_raw.json").read_bytes()
    name = "imgs/train/00001_0.jpg"
    assert (other / name).read_bytes() != (dataset / name).read_bytes()


def test_identities_distinct_and_valid() -> None:
    idents = sample_identities(300, seed=5)
    assert len({i.key() for i in idents}) == 300
    assert idents == sample_identities(300, seed=5)
    for i in idents:
        assert (i.lower is None) == (i.upper == "dress") == (i.lower_colour is None)
        assert i.lower_colour != i.upper_colour
        assert (i.bag is None) == (i.bag_colour is None)


def test_written_parse_maps_equal_a_rerender(dataset: Path) -> None:
    idents = sample_identities(IDS, SEED)
    for e in _entries(dataset)[::5]:
        index, k = e["id"] - 1, int(e["file_path"][-5])
        rendering = draw_figure(idents[index], image_rng(SEED, index, k), H, W)
        for labelset, labels in rendering.labels.items():
            png = dataset / "parsing" / labelset / e["file_path"].replace(".jpg", ".png")
            np.testing.assert_array_equal(np.asarray(Image.open(png)), labels)


# Every lip20 class and the atr18 / ppp7 classes the same pixel may have.
_ATR_OF_LIP = {
    "background": {"background", "bag"},
    "upper-clothes": {"upper-clothes"},
    "coat": {"upper-clothes"},
    **{n: {n} for n in ("hat", "hair", "dress", "pants", "skirt", "face", "scarf")},
    **{f"{s}-{p}": {f"{s}-{p}"} for s in ("left", "right") for p in ("arm", "leg", "shoe")},
}
_PPP_OF_LIP = {
    "background": {"background"},
    "hat": {"head"},
    "hair": {"head"},
    "face": {"head"},
    "scarf": {"torso"},
    "upper-clothes": {"torso", "upper-arms", "lower-arms"},
    "coat": {"torso", "upper-arms", "lower-arms", "upper-legs"},
    "dress": {"torso", "upper-legs"},
    "pants": {"upper-legs", "lower-legs"},
    "skirt": {"upper-legs"},
    **{f"{s}-arm": {"upper-arms", "lower-arms"} for s in ("left", "right")},
    **{f"{s}-leg": {"upper-legs", "lower-legs"} for s in ("left", "right")},
    **{f"{s}-shoe": {"lower-legs"} for s in ("left", "right")},
}


def _coverage_identities() -> list[Identity]:
    """Every upper type x lower type, with hats, scarves, both bags and both hair lengths."""
    out = []
    uppers, lowers = ("t-shirt", "shirt", "coat"), ("pants", "shorts", "skirt")
    for n, (upper, lower) in enumerate([*itertools.product(uppers, lowers), ("dress", None)]):
        out.append(
            Identity(
                upper=upper,
                upper_colour="red",
                lower=lower,
                lower_colour=None if lower is None else "blue",
                hair_colour="black" if n % 2 else "blonde",
                hair_length="long" if n % 2 else "short",
                shoe_colour="white",
                bag=(None, "backpack", "handbag")[n % 3],
                bag_colour=None if n % 3 == 0 else "green",
                hat_colour="white" if n % 2 == 0 else None,
                scarf_colour="yellow" if n % 4 == 1 else None,
                skin=n % len(SKIN_TONES),
            )
        )
    return out


@pytest.mark.parametrize("n", range(10))
def test_parse_maps_match_the_drawing(n: int) -> None:
    ident = _coverage_identities()[n]
    r = draw_figure(ident, np.random.default_rng(n), H, W)
    lip, atr, ppp = r.labels["lip20"], r.labels["atr18"], r.labels["ppp7"]
    for labelset, names in LABEL_NAMES.items():
        assert r.labels[labelset].shape == (H, W) and r.labels[labelset].max() < len(names)
    assert r.rgb.shape == (H, W, 3) and r.rgb.dtype == np.uint8

    # Every lip20 pixel's atr18 and ppp7 classes agree with it.
    for lip_id in np.unique(lip):
        name = LABEL_NAMES["lip20"][lip_id]
        at = lip == lip_id
        assert {LABEL_NAMES["atr18"][i] for i in np.unique(atr[at])} <= _ATR_OF_LIP[name], name
        assert {LABEL_NAMES["ppp7"][i] for i in np.unique(ppp[at])} <= _PPP_OF_LIP[name], name

    # Each garment's pixels have one colour: the identity's colour within the jitter.
    garment = {"t-shirt": "upper-clothes", "shirt": "upper-clothes", "coat": "coat"}
    upper = lip == _lid("lip20", garment.get(ident.upper, "dress"))
    lower = {"pants": "pants", "shorts": "pants", "skirt": "skirt"}.get(ident.lower or "")
    checks = [(upper, COLOURS[ident.upper_colour])]
    if lower is not None:
        checks.append((lip == _lid("lip20", lower), COLOURS["blue"]))
    else:
        assert not np.isin(lip, [_lid("lip20", c) for c in ("pants", "skirt")]).any()
    for mask, colour in checks:
        assert mask.sum() > 50
        colours = np.unique(r.rgb[mask], axis=0)
        assert len(colours) == 1 and np.abs(colours[0] - np.array(colour)).max() <= 8

    # Face pixels are skin (bar the eyes).
    face = r.rgb[lip == _lid("lip20", "face")].astype(int)
    skin = np.abs(face - np.array(SKIN_TONES[ident.skin])).max(axis=1) <= 6
    assert face.shape[0] > 20 and skin.mean() > 0.8

    # The person's left is the image's right: figures face the camera.
    torso_x = np.nonzero(ppp == _lid("ppp7", "torso"))[1].mean()
    bare = ("arm", "shoe") if ident.lower == "pants" else ("arm", "leg", "shoe")
    for part in bare:
        left_x = np.nonzero(lip == _lid("lip20", f"left-{part}"))[1]
        right_x = np.nonzero(lip == _lid("lip20", f"right-{part}"))[1]
        assert left_x.size and right_x.size, part
        assert left_x.mean() > torso_x > right_x.mean(), part

    # Hair stays visible under a hat; bags are labelled in atr18 only.
    assert (lip == _lid("lip20", "hair")).sum() > 10
    if ident.hat_colour is not None:
        assert (lip == _lid("lip20", "hat")).sum() > 10
    bag = atr == _lid("atr18", "bag")
    assert bag.any() == (ident.bag is not None)
    assert (lip[bag] == 0).all() and (ppp[bag] == 0).all()
    if ident.scarf_colour is not None:
        assert (lip == _lid("lip20", "scarf")).sum() > 10


def test_label_names_match_parsing_module() -> None:
    from bilma.data.parsing import LABEL_SETS

    assert {n: LABEL_SETS[n].classes for n in LABEL_NAMES} == LABEL_NAMES


def test_captions_name_every_attribute(dataset: Path) -> None:
    idents = sample_identities(200, seed=3)
    checked = [
        (ident, caption)
        for index, ident in enumerate(idents)
        for caption in synth.captions_for(ident, synth.caption_rng(3, index, 0), 2)
    ]
    idents_small = sample_identities(IDS, SEED)
    checked += [(idents_small[e["id"] - 1], c) for e in _entries(dataset) for c in e["captions"]]
    absent = {
        "hat": {"hat", "cap"},
        "scarf": {"scarf"},
        "bag": {"backpack", "handbag", "purse", "bag"},
    }
    for ident, caption in checked:
        tokens = tokenize(caption)
        mentions = describe(ident)
        for attr, mention in mentions.items():
            assert _names(tokens, mention), (attr, mention, caption)
        for attr, words in absent.items():
            if attr not in mentions:
                assert not words & set(tokens), (attr, caption)


def test_captions_vary_and_are_deterministic() -> None:
    ident = sample_identities(1, seed=0)[0]
    first = [synth.captions_for(ident, synth.caption_rng(0, 0, k)) for k in range(20)]
    assert first == [synth.captions_for(ident, synth.caption_rng(0, 0, k)) for k in range(20)]
    assert len({c for pair in first for c in pair}) > 20


def test_completion_marker(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert not is_complete(out)
    generate(out, ids=3, images_per_id=1, height=96, width=32, progress=False)
    assert is_complete(out)
    (out / SYNTH_MARKER).write_text("{not json", encoding="utf-8")
    assert not is_complete(out)
    (out / SYNTH_MARKER).unlink()
    assert not is_complete(out)
    assert not list(out.glob("*.tmp"))


def test_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path / "p", ids=10, images_per_id=1, height=96, width=32)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert 5 <= len(lines) <= 11 and "10/10 identities" in lines[-1]


def test_every_described_attribute_is_visible() -> None:
    """Captions name every attribute, so no part may hide another (a hat over all the hair)."""
    garment = {"t-shirt": "upper-clothes", "shirt": "upper-clothes", "coat": "coat"}
    for index, ident in enumerate(sample_identities(60, seed=11)):
        labels = draw_figure(ident, image_rng(11, index, 0), H, W).labels
        lip, atr = labels["lip20"], labels["atr18"]
        parts = [
            lip == _lid("lip20", garment.get(ident.upper, "dress")),
            lip == _lid("lip20", "hair"),
            np.isin(lip, [_lid("lip20", "left-shoe"), _lid("lip20", "right-shoe")]),
        ]
        if ident.lower is not None:
            parts.append(lip == _lid("lip20", "skirt" if ident.lower == "skirt" else "pants"))
        if ident.bag is not None:
            parts.append(atr == _lid("atr18", "bag"))
        if ident.hat_colour is not None:
            parts.append(lip == _lid("lip20", "hat"))
        if ident.scarf_colour is not None:
            parts.append(lip == _lid("lip20", "scarf"))
        assert all(p.sum() >= 20 for p in parts), (index, ident, [int(p.sum()) for p in parts])


def test_project_readers_accept_it(dataset: Path) -> None:
    from bilma.data.formats import read_annotations
    from bilma.data.parsing import load_parse_map, parse_map_path

    records = read_annotations("synth", dataset)
    assert len(records) == IDS * IMAGES
    assert {r.pid for r in records if r.split == "train"} == set(range(IDS - 2))
    rel = _entries(dataset)[0]["file_path"]
    for labelset in LABEL_NAMES:
        path = parse_map_path(dataset / "parsing", labelset, rel)
        assert load_parse_map(path, labelset, (W, H)).shape == (H, W)


# sha256 over the sorted relative paths and bytes of every file of a small dataset whose 8
# identities cover every garment, both bags, hats, scarves and both hair lengths. Pinned with
# the generator as of the package split: any change to drawing, captions, file layout or the
# marker changes it. JPEG/PNG bytes also depend on Pillow's bundled codecs (pinned with Pillow
# 13.0.0, numpy 2.4.6): after a deliberate generator change or a Pillow upgrade, re-pin it.
_PINNED_SHA256 = "e4359628fd1d922fe6cf3796bb7c868b7f3987e5b561700b810a0c6fd3f2e18c"


def _tree_sha256(root: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for rel in files:
        digest.update(rel.encode() + b"\0")
        digest.update((root / rel).read_bytes())
    return len(files), digest.hexdigest()


def test_generated_bytes_are_pinned(tmp_path: Path) -> None:
    generate(tmp_path, ids=8, images_per_id=2, seed=0, height=128, width=48, progress=False)
    # 16 images x (1 JPEG + 3 parse maps) + reid_raw.json + the marker.
    assert _tree_sha256(tmp_path) == (66, _PINNED_SHA256)


def _part_pixels(ident: Identity, scale: float, classes: tuple[str, ...]) -> int:
    labels = draw_figure(ident, image_rng(3, 0, 0), H, W, scale).labels["atr18"]
    return int(np.isin(labels, [_lid("atr18", c) for c in classes]).sum())


def test_local_scale_enlarges_only_the_distinguishing_parts() -> None:
    """data.synth_local_scale: shoes, bag, hat and scarf grow (at 2.5 each covers more than a
    16-px patch's 256 pixels, measured 3-5x their size at 1); face and pants do not change
    size, and the pose, colours and background come from the same rng draws."""
    ident = Identity("t-shirt", "red", "pants", "blue", "black", "short", "white",
                     "handbag", "green", "black", "yellow")  # fmt: skip
    for parts in (("left-shoe", "right-shoe"), ("bag",), ("hat",), ("scarf",)):
        small, large = _part_pixels(ident, 1.0, parts), _part_pixels(ident, 2.5, parts)
        assert large >= 2 * small and large > 256, (parts, small, large)
    a = draw_figure(ident, image_rng(3, 0, 0), H, W, 1.0)
    b = draw_figure(ident, image_rng(3, 0, 0), H, W, 2.5)
    face = _lid("atr18", "face")
    assert abs(int((a.labels["atr18"] == face).sum()) - int((b.labels["atr18"] == face).sum())) < 40
    assert (a.rgb[0, 0] == b.rgb[0, 0]).all()  # the same background


def test_chroma_444_keeps_colour_resolution_and_both_options_are_recorded(tmp_path: Path) -> None:
    from PIL import JpegImagePlugin

    generate(tmp_path / "a", seed=SEED, **SMALL)
    generate(tmp_path / "b", seed=SEED, local_scale=2.5, chroma="4:4:4", **SMALL)
    img = "imgs/train/00001_0.jpg"
    with Image.open(tmp_path / "a" / img) as a, Image.open(tmp_path / "b" / img) as b:
        assert JpegImagePlugin.get_sampling(a) == 2  # 4:2:0
        assert JpegImagePlugin.get_sampling(b) == 0  # 4:4:4
    made_a = json.loads((tmp_path / "a" / SYNTH_MARKER).read_text())
    made_b = json.loads((tmp_path / "b" / SYNTH_MARKER).read_text())
    assert "local_scale" not in made_a and "chroma" not in made_a  # old datasets' bytes
    assert made_b["local_scale"] == 2.5 and made_b["chroma"] == "4:4:4"
    with pytest.raises(ValueError, match="chroma"):
        generate(tmp_path / "c", chroma="4:1:1", **SMALL)


def test_identities_of_a_written_dataset_are_drawn_again(tmp_path: Path) -> None:
    generate(tmp_path, seed=5, lookalike=4, lookalike_share=1.0, val_ids=4, test_ids=4,
             **{**SMALL, "ids": 24})  # fmt: skip
    again = synth.identities_of(tmp_path)
    drawn, _ = synth.sample_lookalike_identities([16, 4, 4], 5, 4, 1.0)
    assert again == drawn and len(again) == 24
