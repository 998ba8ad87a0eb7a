"""`python -m bilma parse-report`: what a set of parse maps holds, and how it agrees with another.

Per class, the share of all map pixels; the share of SemMIM patches (each map resized, nearest,
to the training image size and cut into ``patch x patch`` patches, as the trainer does) whose
majority label is background; an overview PNG of a few images with their maps overlaid. With
``against``, the per-class IoU and the mIoU between the two sets, accumulated over all pixels of
all images (a class absent from both sets has no IoU and is left out of the mean).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bilma.data import formats, parsing
from bilma.data.records import DataError
from bilma.fileio import atomic_open
from bilma.parse.run import dataset_images

# Distinct colours for class ids 0..19 (0 = background is not drawn).
PALETTE = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
        (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
        (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
        (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    ],
    dtype=np.uint8,
)  # fmt: skip


@dataclass
class Found:
    """Maps of one image: ours, and the other set's when comparing."""

    image: str
    ours: np.ndarray
    other: np.ndarray | None


def maps_folder(folder: Path, labels: str) -> Path:
    """A parsing root (holding ``<labels>/``) or the label-set folder itself."""
    folder = Path(folder)
    return folder / labels if (folder / labels).is_dir() else folder


def iter_maps(
    image_dir: Path, paths: list[str], ours: Path, other: Path | None, labels: str, missing: dict
) -> Iterator[Found]:
    """Load the maps of `paths` (checked against their images); count those without one."""
    for p in paths:
        map_path = ours / Path(p).with_suffix(".png")
        other_path = other / Path(p).with_suffix(".png") if other else None
        if not map_path.is_file() or (other_path is not None and not other_path.is_file()):
            missing["ours" if not map_path.is_file() else "other"] += 1
            continue
        with Image.open(image_dir / p) as im:
            size = im.size
        a = parsing.load_parse_map(map_path, labels, size, image_path=image_dir / p)
        b = None
        if other_path is not None:
            b = parsing.load_parse_map(other_path, labels, size, image_path=image_dir / p)
        yield Found(p, a, b)


def iou_table(confusion: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU (nan where a class is in neither set) and their mean, in percent."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, 100.0 * tp / union, np.nan)
    return iou, float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def background_patches(label_map: np.ndarray, image_size: tuple[int, int], patch: int) -> tuple:
    """(patches whose majority label is background, patches) at the training size (H, W)."""
    h, w = image_size
    resized = np.asarray(Image.fromarray(label_map, "L").resize((w, h), Image.NEAREST))
    majority = parsing.patch_labels(resized, patch, 256).numpy()
    return int((majority == 0).sum()), majority.size


def overlay(image: Image.Image, label_map: np.ndarray, height: int = 192) -> Image.Image:
    """The image beside itself with its map's classes blended in, `height` pixels high."""
    w = max(1, round(image.width * height / image.height))
    img = np.asarray(image.convert("RGB").resize((w, height), Image.BILINEAR), dtype=np.float32)
    lab = np.asarray(Image.fromarray(label_map, "L").resize((w, height), Image.NEAREST))
    colour = PALETTE[lab % len(PALETTE)].astype(np.float32)
    blend = np.where(lab[..., None] > 0, 0.4 * img + 0.6 * colour, img)
    return Image.fromarray(np.concatenate([img, blend], axis=1).astype(np.uint8))


def overview_png(panels: list[Image.Image], out: Path) -> None:
    """The panels side by side with a 4-pixel gap, written atomically."""
    width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    sheet = Image.new("RGB", (max(width, 1), max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + 4
    with atomic_open(out) as f:
        sheet.save(f, format="PNG")


def parse_report(
    dataset: str,
    root: Path,
    labels: str,
    parsing_root: Path | None = None,
    against: Path | None = None,
    image_size: tuple[int, int] = (384, 128),
    patch: int = 16,
    examples: int = 6,
    out_png: Path | None = None,
) -> dict[str, Any]:
    """Class shares, background patches and (with `against`) IoU; writes the overview PNG."""
    ls = parsing.get_label_set(labels)
    if patch < 1 or image_size[0] % patch or image_size[1] % patch:
        raise DataError(f"--image-size {image_size} must be a multiple of --patch {patch}")
    root = Path(root)
    image_dir = formats.image_dir(dataset, root)
    ours = maps_folder(Path(parsing_root) if parsing_root else root / "parsing", ls.name)
    other = maps_folder(against, ls.name) if against else None
    if other is not None and not other.is_dir():
        raise DataError(f"--against {against}: no such folder of {ls.name} maps")
    paths = dataset_images(dataset, root)
    show = set(paths[:: max(1, len(paths) // max(examples, 1))][:examples]) if examples else set()
    missing = {"ours": 0, "other": 0}
    pixels = np.zeros(ls.num_classes, dtype=np.int64)
    confusion = np.zeros((ls.num_classes, ls.num_classes), dtype=np.int64)
    bg = total_patches = n = 0
    panels = []
    for found in iter_maps(image_dir, paths, ours, other, ls.name, missing):
        n += 1
        pixels += np.bincount(found.ours.ravel(), minlength=ls.num_classes)
        b, t = background_patches(found.ours, image_size, patch)
        bg, total_patches = bg + b, total_patches + t
        if found.other is not None:
            keys = found.ours.ravel().astype(np.int64) * ls.num_classes + found.other.ravel()
            confusion += np.bincount(keys, minlength=ls.num_classes**2).reshape(confusion.shape)
        if found.image in show:
            with Image.open(image_dir / found.image) as im:
                panels.append(overlay(im, found.ours))
    if n == 0:
        raise DataError(
            f"no {ls.name} maps for the {len(paths)} images of {dataset} under {ours}"
            + (f" (and {other})" if other else "")
            + ": run `python -m bilma parse` first, or point --parsing-root at them"
        )
    out: dict[str, Any] = {
        "labels": ls.name,
        "maps": str(ours),
        "images": len(paths),
        "compared" if other else "read": n,
        "without_map": missing["ours"],
        "pixel_share": {
            c: 100.0 * int(k) / int(pixels.sum()) for c, k in zip(ls.classes, pixels, strict=True)
        },
        "background_patches": 100.0 * bg / max(total_patches, 1),
        "patch_grid": f"{image_size[0]}x{image_size[1]}, patch {patch}",
    }
    if other is not None:
        iou, miou = iou_table(confusion)
        out.update(against=str(other), without_other=missing["other"], mIoU=miou)
        out["IoU"] = {
            c: (None if np.isnan(v) else float(v)) for c, v in zip(ls.classes, iou, strict=True)
        }
    if panels:
        png = out_png or (ours.parent / f"report-{ls.name}.png")
        overview_png(panels, png)
        out["overview"] = str(png)
    return out


def format_report(r: dict[str, Any]) -> str:
    """The report as a researcher reads it."""
    lines = [
        f"{r['labels']} parse maps in {r['maps']}: {r.get('read', r.get('compared'))} of "
        f"{r['images']} images ({r['without_map']} without a map)"
    ]
    head = f"{'class':<16}{'pixels %':>10}"
    if "IoU" in r:
        head += f"{'IoU':>9}"
    lines.append(head)
    for c, share in r["pixel_share"].items():
        row = f"{c:<16}{share:>10.2f}"
        if "IoU" in r:
            v = r["IoU"][c]
            row += f"{'-' if v is None else f'{v:.2f}':>9}"
        lines.append(row)
    lines.append(
        f"patches whose majority label is background ({r['patch_grid']}): "
        f"{r['background_patches']:.1f}%"
    )
    if "IoU" in r:
        lines.append(
            f"mIoU against {r['against']}: {r['mIoU']:.2f} "
            f"({r['without_other']} images without a map there, left out)"
        )
    if "overview" in r:
        lines.append(f"overview: {r['overview']}")
    return "\n".join(lines)
