"""Train/test transforms with the parse map in lockstep (bilma.data.transforms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bilma.data.parsing import LABEL_SETS, patch_labels
from bilma.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    TestTransform,
    TrainTransform,
    patchify,
    unnormalize,
)

LIP = LABEL_SETS["lip20"]
LEFT_ARM, RIGHT_ARM = LIP.classes.index("left-arm"), LIP.classes.index("right-arm")
H, W = 48, 32

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _normalised(arr: np.ndarray) -> torch.Tensor:
    """Reference: ToTensor + Normalize of a uint8 [H, W, 3] array."""
    return (torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255 - MEAN) / STD


def _random_image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_forced_flip_mirrors_image_and_swaps_left_right() -> None:
    arr = _random_image()
    pmap = np.zeros((H, W), np.uint8)
    pmap[10:30, 2:8] = LEFT_ARM  # left-arm on the image's left side
    pmap[5:9, 10:20] = 2  # hair: no partner, must just move
    t = TrainTransform((H, W), hflip=1.0, pad=0, erase=0.0)
    img, out = t(Image.fromarray(arr), pmap, np.random.default_rng(0), LIP.flip_lut)
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert out is not None and out.shape == (H, W) and out.dtype == torch.uint8
    torch.testing.assert_close(img, _normalised(arr[:, ::-1]))
    out_np = out.numpy()
    # Mirrored columns 2..7 -> W-8..W-3, and the label now reads right-arm.
    assert (out_np[10:30, W - 8 : W - 2] == RIGHT_ARM).all()
    assert not (out_np == LEFT_ARM).any()
    assert (out_np[5:9, W - 20 : W - 10] == 2).all()
    np.testing.assert_array_equal(out_np, LIP.flip_lut[pmap[:, ::-1]])


def test_no_flip_keeps_labels() -> None:
    pmap = np.zeros((H, W), np.uint8)
    pmap[10:30, 2:8] = LEFT_ARM
    t = TrainTransform((H, W), hflip=0.0, pad=0, erase=0.0)
    img, out = t(Image.fromarray(_random_image()), pmap, np.random.default_rng(0), LIP.flip_lut)
    assert out is not None
    np.testing.assert_array_equal(out.numpy(), pmap)


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_pad_crop_moves_image_and_map_together(hflip: float) -> None:
    y0, x0 = 20, 5
    arr = np.zeros((H, W, 3), np.uint8)
    arr[y0, x0] = 255
    pmap = np.zeros((H, W), np.uint8)
    pmap[y0, x0] = LEFT_ARM
    t = TrainTransform((H, W), hflip=hflip, pad=10, erase=0.0)
    shifts = set()
    for seed in range(30):
        img, out = t(Image.fromarray(arr), pmap, np.random.default_rng(seed), LIP.flip_lut)
        assert out is not None
        bright = (img[0] > 1.0).nonzero().tolist()
        labelled = np.argwhere(out.numpy() != 0).tolist()
        assert bright == labelled  # same place (or both cropped away)
        if bright:
            (y, x), label = bright[0], int(out[bright[0][0], bright[0][1]])
            assert label == (RIGHT_ARM if hflip else LEFT_ARM)
            xs = W - 1 - x0 if hflip else x0
            assert abs(y - y0) <= 10 and abs(x - xs) <= 10
            shifts.add((y - y0, x - xs))
        # Padding is zeros in pixel space (image) and background 0 (map).
        assert out.numpy().sum() <= RIGHT_ARM
    assert len(shifts) > 10  # the crop offset really is random


def test_pad_crop_equals_numpy_pad_then_crop() -> None:
    """Reference semantics: Pad(p) then RandomCrop at offset (i, j) in 0..2p."""
    arr = _random_image()
    pmap = np.random.default_rng(1).integers(0, 20, (H, W), dtype=np.uint8)
    pad = 10
    t = TrainTransform((H, W), hflip=0.5, pad=pad, erase=0.0)
    for seed in range(20):
        img, out = t(Image.fromarray(arr), pmap, np.random.default_rng(seed), LIP.flip_lut)
        # Replay the documented draw order: flip, then crop top, then crop left.
        rng = np.random.default_rng(seed)
        flip = rng.random() < 0.5
        i, j = int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))
        a, m = (arr[:, ::-1], LIP.flip_lut[pmap[:, ::-1]]) if flip else (arr, pmap)
        ref_a = np.pad(a, ((pad, pad), (pad, pad), (0, 0)))[i : i + H, j : j + W]
        ref_m = np.pad(m, pad)[i : i + H, j : j + W]
        torch.testing.assert_close(img, _normalised(ref_a))
        assert out is not None
        np.testing.assert_array_equal(out.numpy(), ref_m)


def test_erasing_touches_the_image_only() -> None:
    arr = _random_image()
    pmap = np.random.default_rng(1).integers(0, 20, (H, W), dtype=np.uint8)
    sentinel = 100.0  # unreachable by normalised pixels, so the erased box is exact
    t = TrainTransform((H, W), hflip=0.0, pad=0, erase=1.0, erase_value=sentinel)
    ref = _normalised(arr)
    fractions = []
    for seed in range(20):
        img, out = t(Image.fromarray(arr), pmap, np.random.default_rng(seed), LIP.flip_lut)
        assert out is not None
        np.testing.assert_array_equal(out.numpy(), pmap)
        erased = img == sentinel
        assert (erased == erased[0]).all()  # all channels
        ys, xs = erased[0].nonzero(as_tuple=True)
        if len(ys) == 0:
            continue  # all 10 attempts may fail on a small image
        box = erased[0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all() and int(erased[0].sum()) == box.numel()  # one rectangle
        torch.testing.assert_close(img[~erased], ref[~erased])
        fractions.append(box.numel() / (H * W))
    assert fractions and all(0.015 < f < 0.45 for f in fractions)


def test_default_erase_value_is_irra_mean_in_normalised_units() -> None:
    arr = _random_image()
    t = TrainTransform((H, W), hflip=0.0, pad=0, erase=1.0)
    for seed in range(10):
        img, _ = t(Image.fromarray(arr), None, np.random.default_rng(seed), None)
        hit = torch.isclose(img, MEAN.expand_as(img)).all(0)
        if hit.any():
            return
    pytest.fail("no erased region found in 10 draws with erase=1.0")


def test_same_seed_same_output_and_none_map() -> None:
    arr = Image.fromarray(_random_image())
    pmap = np.random.default_rng(1).integers(0, 20, (H, W), dtype=np.uint8)
    t = TrainTransform((H, W))
    a = t(arr, pmap, np.random.default_rng(7), LIP.flip_lut)
    b = t(arr, pmap, np.random.default_rng(7), LIP.flip_lut)
    assert torch.equal(a[0], b[0]) and a[1] is not None and b[1] is not None
    assert torch.equal(a[1], b[1])
    # Without a map the image stream is the same draws, so the same image.
    img, none = t(arr, None, np.random.default_rng(7), None)
    assert none is None and torch.equal(img, a[0])


def test_resize_arbitrary_size_map_nearest() -> None:
    # A CUHK-like 80x200 (W x H) image; map: left half class 1, right half class 2.
    w0, h0 = 80, 200
    arr = _random_image(h0, w0)
    pmap = np.ones((h0, w0), np.uint8)
    pmap[:, w0 // 2 :] = 2
    pmap[100:110, 10:20] = LEFT_ARM
    t = TrainTransform((384, 128), hflip=0.0, pad=0, erase=0.0)
    img, out = t(Image.fromarray(arr), pmap, np.random.default_rng(0), LIP.flip_lut)
    assert img.shape == (3, 384, 128)
    assert out is not None and out.shape == (384, 128)
    o = out.numpy()
    assert set(np.unique(o)) == {1, 2, LEFT_ARM}  # nearest: no new ids
    assert (o[:, :60] != 2).all() and (o[:, 68:] == 2).all()
    ys, xs = np.nonzero(o == LEFT_ARM)
    # Scale 1.92 vertically, 1.6 horizontally.
    assert abs(ys.min() - 192) <= 2 and abs(ys.max() - 211) <= 2
    assert abs(xs.min() - 16) <= 2 and abs(xs.max() - 31) <= 2
    # The image takes PIL's resize of the requested interpolation.
    ref = np.asarray(Image.fromarray(arr).resize((128, 384), Image.Resampling.BILINEAR))
    torch.testing.assert_close(img, _normalised(ref))


def test_train_transform_input_checks() -> None:
    t = TrainTransform((H, W))
    image = Image.fromarray(_random_image())
    with pytest.raises(ValueError, match="flip_lut"):
        t(image, np.zeros((H, W), np.uint8), np.random.default_rng(0), None)
    with pytest.raises(ValueError, match="parse map is 10x10 but the image is 32x48"):
        t(image, np.zeros((10, 10), np.uint8), np.random.default_rng(0), LIP.flip_lut)
    with pytest.raises(ValueError, match="probability"):
        TrainTransform((H, W), hflip=1.5)
    # Grayscale input becomes 3 channels.
    gray = Image.fromarray(_random_image()[:, :, 0])
    assert t(gray, None, np.random.default_rng(0), None)[0].shape == (3, H, W)


def test_test_transform_shape_and_normalisation() -> None:
    mean_colour = tuple(round(m * 255) for m in CLIP_MEAN)
    image = Image.new("RGB", (80, 200), mean_colour)
    out = TestTransform((384, 128))(image)
    assert out.shape == (3, 384, 128) and out.dtype == torch.float32
    # uint8 rounding of the mean leaves at most 0.5/255/std.
    assert out.abs().max() < 0.5 / 255 / min(CLIP_STD) + 1e-6
    arr = _random_image()
    torch.testing.assert_close(TestTransform((H, W))(Image.fromarray(arr)), _normalised(arr))


def test_unnormalize_round_trip() -> None:
    arr = _random_image()
    x = TestTransform((H, W))(Image.fromarray(arr))
    back = unnormalize(x)
    torch.testing.assert_close(back, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    batch = unnormalize(torch.stack([x, x]))
    assert batch.shape == (2, 3, H, W)
    torch.testing.assert_close(batch[1], back)


def test_patchify_matches_a_manual_loop() -> None:
    p = 4
    x = torch.randn(2, 3, 12, 8)
    out = patchify(x, p)
    assert out.shape == (2, 6, p * p * 3)
    for b in range(2):
        k = 0
        for gy in range(3):  # row-major over the grid
            for gx in range(2):
                patch = x[b, :, gy * p : gy * p + p, gx * p : gx * p + p]  # [3, p, p]
                torch.testing.assert_close(out[b, k], patch.permute(1, 2, 0).reshape(-1))
                k += 1
    torch.testing.assert_close(patchify(x[1], p), out[1])
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.zeros(3, 10, 8), 4)
    with pytest.raises(ValueError, match="expects"):
        patchify(torch.zeros(4, 8, 8), 4)


def test_returned_map_never_aliases_the_input() -> None:
    pmap = np.zeros((H, W), np.uint8)
    t = TrainTransform((H, W), hflip=0.0, pad=0, erase=0.0)
    _, out = t(Image.fromarray(_random_image()), pmap, np.random.default_rng(0), LIP.flip_lut)
    assert out is not None
    out[0, 0] = 7
    assert pmap[0, 0] == 0


# ----------------------------------------------------------------------------- the device half
# Issue 21: workers ship uint8 and the float work runs per batch on the device. The old float
# path is kept here verbatim (before issue 21) as the reference the new path must reproduce.


def _old_normalize(arr: np.ndarray) -> torch.Tensor:
    """The workers' normalisation before issue 21 (``_Normalizer``), verbatim."""
    m = torch.tensor(CLIP_MEAN, dtype=torch.float64)
    s = torch.tensor(CLIP_STD, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(3, 1, 1)
    bias = (-m / s).to(torch.float32).view(3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return x.to(torch.float32).mul_(scale).add_(bias)


def _old_erase(img: torch.Tensor, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The workers' erasing before issue 21 (IRRA's defaults), verbatim; returns its box."""
    _, h, w = img.shape
    area = h * w
    for _ in range(10):
        erase_area = area * rng.uniform(0.02, 0.4)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if not (eh < h and ew < w):
            continue
        i = int(rng.integers(0, h - eh + 1))
        j = int(rng.integers(0, w - ew + 1))
        img[:, i : i + eh, j : j + ew] = MEAN
        return i, j, eh, ew
    return 0, 0, 0, 0


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_normalisation_on_the_device_equals_the_old_float_path() -> None:
    """(a) A uint8 batch normalised on the device: the old per-image numbers to 1e-6."""
    images = [_random_image(384, 128, seed) for seed in range(6)]
    images[0][:] = 0  # the extremes of the range too
    images[1][:] = 255
    batch = torch.stack([torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in images])
    out = TestTransform((384, 128)).normalize(batch.to(DEVICE)).cpu()
    assert out.dtype == torch.float32 and out.shape == (6, 3, 384, 128)
    for b, arr in enumerate(images):
        torch.testing.assert_close(out[b], _old_normalize(arr), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[b], _normalised(arr), rtol=0, atol=1e-5)


def test_draw_then_device_half_is_the_old_float_path_exactly() -> None:
    """Every random draw stays in the worker (the same rng stream as before), so a batch
    finished on the device is the old output image for image, erasing included, and the
    stream is left where the old path left it (the MLM masks that follow are unchanged)."""
    arr = _random_image(384, 128)
    pmap = np.random.default_rng(1).integers(0, 20, (384, 128), dtype=np.uint8)
    t = TrainTransform((384, 128), hflip=0.0, pad=0, erase=0.5)
    drawn, rngs, old, boxes = [], [], [], []
    for seed in range(64):
        rng = np.random.default_rng(seed)
        drawn.append(t.draw(Image.fromarray(arr), pmap, rng, LIP.flip_lut))
        rngs.append(rng.random())
        ref_rng = np.random.default_rng(seed)
        ref_rng.random()  # the old path's flip draw
        img = _old_normalize(arr)
        boxes.append(_old_erase(img, ref_rng) if ref_rng.random() < 0.5 else (0, 0, 0, 0))
        old.append(img)
        assert rngs[-1] == ref_rng.random()
    assert {b[2] > 0 for b in boxes} == {True, False}
    batch = {
        "images": torch.stack([d.image for d in drawn]).to(DEVICE),
        "erase": torch.stack([d.erase for d in drawn]).to(DEVICE),
        "parse_maps": torch.stack([d.parse_map for d in drawn]).to(DEVICE),
    }
    out = t.on_device(20)(batch)
    assert out["images"].device.type == DEVICE.type and set(out) == {"images", "patch_labels"}
    assert [tuple(d.erase.tolist()) for d in drawn] == boxes
    torch.testing.assert_close(out["images"].cpu(), torch.stack(old), rtol=0, atol=1e-6)
    labels = out["patch_labels"].cpu()
    assert torch.equal(labels, patch_labels(torch.from_numpy(pmap), 16, 20).expand(64, -1))


def test_erasing_statistics_match_torchvision_random_erasing() -> None:
    """(b) Over many draws: the erasing probability, the area fraction in (0.02, 0.4), the
    log-uniform aspect ratio in (0.3, 3.3), the fill (CLIP mean in normalised units), each as
    the old worker-side erasing gives them (replayed with independent seeds)."""
    h, w, n = 384, 128, 3000
    image = Image.fromarray(_random_image(h, w))
    t = TrainTransform((h, w), hflip=0.5, pad=10, erase=0.5)
    new = [t.draw(image, None, np.random.default_rng([7, i])).erase.tolist() for i in range(n)]
    old, img = [], torch.zeros(3, h, w)
    for i in range(n):  # the old path's draws: flip, two crop offsets, then erasing
        rng = np.random.default_rng([8, i])
        rng.random(), rng.integers(0, 21), rng.integers(0, 21)
        old.append(_old_erase(img, rng) if rng.random() < 0.5 else (0, 0, 0, 0))

    def stats(boxes):
        hit = np.array([b for b in boxes if b[2] > 0], dtype=float)
        area = hit[:, 2] * hit[:, 3] / (h * w)
        log_aspect = np.log(hit[:, 2] / hit[:, 3])
        return len(hit) / len(boxes), area, log_aspect, hit

    p_new, area_new, asp_new, hit_new = stats(new)
    p_old, area_old, asp_old, _ = stats(old)
    assert abs(p_new - 0.5) < 0.04 and abs(p_new - p_old) < 0.05  # sd of each: 0.009
    assert area_new.min() > 0.019 and area_new.max() < 0.41  # rounding of the sides
    assert abs(area_new.mean() - area_old.mean()) < 0.015  # sd of the difference: 0.004
    assert abs(np.median(area_new) - np.median(area_old)) < 0.02
    assert math.log(0.3) - 0.1 < asp_new.min() and asp_new.max() < math.log(3.3) + 0.1
    assert abs(asp_new.mean() - asp_old.mean()) < 0.08 and abs(asp_new.std() - asp_old.std()) < 0.06
    assert (hit_new[:, 0] + hit_new[:, 2] <= h).all() and (hit_new[:, 1] + hit_new[:, 3] <= w).all()
    # Fill: the box holds the CLIP mean numbers, everything else the normalised pixels.
    boxes = torch.tensor(new[:32], dtype=torch.int32)
    x = torch.stack([t.draw(image, None, np.random.default_rng([7, i])).image for i in range(32)])
    out = t.on_device()({"images": x.to(DEVICE), "erase": boxes.to(DEVICE)})["images"].cpu()
    plain = t.normalize(x)
    for b, (i, j, bh, bw) in enumerate(new[:32]):
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[i : i + bh, j : j + bw] = True
        assert torch.equal(out[b][:, inside], MEAN.view(3, 1).expand(3, int(inside.sum())))
        assert torch.equal(out[b][:, ~inside], plain[b][:, ~inside])


def test_device_half_is_deterministic_for_a_fixed_seed() -> None:
    arr = Image.fromarray(_random_image())
    pmap = np.random.default_rng(1).integers(0, 20, (H, W), dtype=np.uint8)
    t = TrainTransform((H, W), erase=1.0)

    def batch(seed: int) -> dict[str, torch.Tensor]:
        d = [t.draw(arr, pmap, np.random.default_rng([seed, i]), LIP.flip_lut) for i in range(8)]
        return {
            "images": torch.stack([x.image for x in d]),
            "erase": torch.stack([x.erase for x in d]),
            "parse_maps": torch.stack([x.parse_map for x in d]),
        }

    aug = t.on_device(20, "soft")
    a, b, c = aug(batch(3)), aug(batch(3)), aug(batch(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], c["images"])
    assert a["patch_labels"].shape == (8, 6, 20)


def test_geometry_in_the_worker_is_unchanged_uint8() -> None:
    """(c) Resize, flip, pad + crop stay in the worker: `draw` gives the reference pixels
    exactly, as uint8, and the map with them."""
    w0, h0 = 80, 200
    arr = _random_image(h0, w0)
    pmap = np.random.default_rng(2).integers(0, 20, (h0, w0), dtype=np.uint8)
    t = TrainTransform((H, W), hflip=0.5, pad=6, erase=0.5)
    resized = np.asarray(Image.fromarray(arr).resize((W, H), Image.Resampling.BILINEAR))
    rmap = np.asarray(Image.fromarray(pmap).resize((W, H), Image.Resampling.NEAREST))
    for seed in range(30):
        d = t.draw(Image.fromarray(arr), pmap, np.random.default_rng(seed), LIP.flip_lut)
        rng = np.random.default_rng(seed)
        flip = rng.random() < 0.5
        i, j = int(rng.integers(0, 13)), int(rng.integers(0, 13))
        a, m = (resized[:, ::-1], LIP.flip_lut[rmap[:, ::-1]]) if flip else (resized, rmap)
        ref_a = np.pad(a, ((6, 6), (6, 6), (0, 0)))[i : i + H, j : j + W]
        ref_m = np.pad(m, 6)[i : i + H, j : j + W]
        assert d.image.dtype == torch.uint8 and d.image.shape == (3, H, W)
        np.testing.assert_array_equal(d.image.permute(1, 2, 0).numpy(), ref_a)
        assert d.parse_map is not None
        np.testing.assert_array_equal(d.parse_map.numpy(), ref_m)
