"""The uint8 image cache (data.cache=uint8): the same samples, reused, rebuilt when stale or
unreadable, written atomically."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from support.tiny import SYNTH_OVERRIDES

from bilma.config import load_config
from bilma.data import image_cache
from bilma.data.datasets import ImageSet, TrainSet, load_data


@pytest.fixture
def root(synth_small, tmp_path):
    """A private copy of the small synthetic dataset (tests here touch its files), its images
    and parse maps shrunk to 40x100 (W x H) so that the loader resizes them to 64x128 as it
    does real ones (bilinear, maps nearest)."""
    copy = tmp_path / "synth"
    shutil.copytree(synth_small, copy, ignore=shutil.ignore_patterns("cache"))
    for path in [*copy.glob("imgs/**/*.jpg"), *copy.glob("parsing/**/*.png")]:
        with Image.open(path) as im:
            im.load()
        resample = Image.Resampling.BILINEAR if path.suffix == ".jpg" else Image.Resampling.NEAREST
        im.resize((40, 100), resample).save(path)
    return copy


def cfg_for(root, *extra):
    over = [f"data.root={root}", *SYNTH_OVERRIDES, "data.text_length=48", "data.num_workers=0"]
    return load_config(None, [*over, *extra])


def cache_files(root):
    return sorted(p.name for p in (root / "cache").glob("*.u8"))


def test_cached_samples_are_the_uncached_ones_exactly(root):
    plain = load_data(cfg_for(root))
    cfg = cfg_for(root, "data.cache=uint8")
    cached = load_data(cfg)
    assert cache_files(root) == ["images-128x64.u8", "parse-lip20-128x64.u8"]
    assert cached.image_cache is not None and len(cached.image_cache) == len(plain.records)
    assert isinstance(cached.image(0), np.ndarray) and cached.image(0).shape == (128, 64, 3)
    for uint8 in (True, False):
        a, b = TrainSet(plain, cfg, uint8=uint8), TrainSet(cached, cfg, uint8=uint8)
        for key in [(0, 0), (5, 1), (17, 2), (len(a) - 1, 0)]:
            sa, sb = a[key], b[key]
            assert sa.keys() == sb.keys()
            for k in sa:
                assert torch.equal(sa[k], sb[k]), (key, k)
    ia, ib = ImageSet(plain, "test", (128, 64)), ImageSet(cached, "test", (128, 64))
    for i in range(len(ia)):
        assert torch.equal(ia[i][0], ib[i][0]) and ia[i][1] == ib[i][1]


def test_reused_when_it_matches_rebuilt_when_an_image_changes(root, caplog):
    cfg = cfg_for(root, "data.cache=uint8")
    caplog.set_level(logging.INFO, logger="bilma.data.image_cache")
    load_data(cfg)
    assert caplog.text.count("building the uint8 image cache") == 2  # images, parse maps
    stamp = (root / "cache" / "images-128x64.u8").stat().st_mtime_ns
    caplog.clear()
    load_data(cfg)
    assert "building" not in caplog.text  # fingerprints match: reused as is
    assert (root / "cache" / "images-128x64.u8").stat().st_mtime_ns == stamp

    data = load_data(cfg_for(root))
    first = data.image_dir / data.records[0].image_path
    pixels = 255 - np.asarray(data.image(0))
    Image.fromarray(pixels).save(first)  # another image under the same name
    caplog.clear()
    rebuilt = load_data(cfg)
    assert "building the uint8 image cache" in caplog.text and "changed" in caplog.text
    assert "parse-lip20" not in caplog.text  # its maps did not change: that file is reused
    decoded = np.asarray(Image.open(first).convert("RGB"))  # the JPEG as saved
    resized = np.asarray(Image.fromarray(decoded).resize((64, 128), Image.Resampling.BILINEAR))
    assert np.array_equal(rebuilt.image(0), resized)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_unreadable_cache_is_one_line_and_rebuilt(root, damage, caplog):
    cfg = cfg_for(root, "data.cache=uint8", "mim.target=pixel")
    good = load_data(cfg).image(3)
    path = root / "cache" / "images-128x64.u8"
    if damage == "garbage":
        path.write_bytes(b"\x89PNG not a cache at all")
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 100)
    else:
        path.write_bytes(b"")
    caplog.set_level(logging.INFO, logger="bilma.data.image_cache")
    data = load_data(cfg)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    line = warnings[0].getMessage()
    assert "\n" not in line and str(path) in line and "unreadable" in line
    assert "building it again" in line
    assert np.array_equal(data.image(3), good)
    assert image_cache.read_header(path)[0]["count"] == len(data.records)


def test_a_failed_build_leaves_no_file_and_a_worker_maps_the_file_itself(tmp_path):
    path = tmp_path / "cache" / "x.u8"

    def broken(i: int) -> np.ndarray:
        if i == 5:
            raise OSError("disk went away")
        return np.full((4, 2), i, np.uint8)

    with pytest.raises(OSError, match="disk went away"):
        image_cache.open_or_build(path, "k1", 8, (4, 2), broken)
    assert not path.exists() and not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]

    cache = image_cache.open_or_build(path, "k1", 8, (4, 2), lambda i: np.full((4, 2), i, np.uint8))
    assert [int(cache[i][0, 0]) for i in range(8)] == list(range(8))
    cache[1][0, 0] = 99  # a private copy: the file is not written through
    assert int(cache[1][0, 0]) == 1
    import pickle

    assert len(pickle.dumps(cache)) < 1000  # the path, not the arrays
    assert int(pickle.loads(pickle.dumps(cache))[7][3, 1]) == 7
    os.utime(path)  # a cache is checked by its header's fingerprint, not its own time
    again = image_cache.open_or_build(path, "k1", 8, (4, 2), broken)  # no rebuild: not called
    assert int(again[5][0, 0]) == 5
