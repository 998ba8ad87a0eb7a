"""`python -m bilma parse`: write a parse map for every image of a dataset with a local parser.

The parser is any transformers ``AutoModelForSemanticSegmentation`` folder with its image
processor (e.g. a downloaded ``mattmdjaga/segformer_b2_clothes``). Maps go where
`bilma.data.parsing` documents (``<parsing_root>/<labelset>/<image path>.png``), each written
atomically, so a killed run leaves only whole maps and the same command resumes: an image
whose map exists, has its image's size and holds labels of the set is skipped. ``shard=(i, n)``
parses the i-th of n disjoint slices (every n-th image from the i-th), one per GPU or per task
of a SLURM array.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bilma.data import formats, parsing
from bilma.data.records import DataError
from bilma.fileio import atomic_open
from bilma.parse.labelmaps import (
    LabelMap,
    LabelMapError,
    build_label_map,
    exact_label_set,
    id2label_names,
)

log = logging.getLogger(__name__)

DOWNLOAD_HINT = (
    "download one first, e.g. `hf download mattmdjaga/segformer_b2_clothes "
    "--local-dir parsers/segformer_b2_clothes`, and pass that folder"
)


@dataclass
class ParseOptions:
    """What `parse_dataset` does; the CLI's flags one to one."""

    dataset: str
    root: Path
    model: Path
    labels: str | None = None  # None: the parser's own set, when it is exactly one
    batch_size: int = 8
    device: str | None = None  # None: cuda when available
    shard: tuple[int, int] = (0, 1)
    parsing_root: Path | None = None
    workers: int = 2
    progress: bool = True


def parse_shard_spec(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8): the third of eight slices (0-based, as SLURM array task ids)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= I < N (I counts from 0)")
    return i, n


def shard_paths(paths: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """The i-th of n disjoint slices of `paths`: every n-th path from the i-th."""
    i, n = shard
    return list(paths[i::n])


def dataset_images(dataset: str, root: Path) -> list[str]:
    """Every image path of the dataset (all splits), once, in annotation-file order."""
    return list(dict.fromkeys(r.image_path for r in formats.read_annotations(dataset, root)))


def load_parser(folder: Path, device: torch.device) -> tuple[Any, Any]:
    """The segmentation model (eval mode, on `device`) and its image processor, offline."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DataError(f"no parser at {folder} (no config.json there): {DOWNLOAD_HINT}")
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot load a semantic-segmentation model and image processor from {folder}: "
            f"{reason}; it needs config.json, the weights and preprocessor_config.json"
        ) from None
    return model.to(device).eval(), processor


def choose_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: no CUDA device here; use --device cpu")
    return device


def label_map_for(model: Any, labels: str | None, folder: Path) -> LabelMap:
    """Check the parser's id2label against the requested set (or find its own set)."""
    where = f"parser {folder} (config.json id2label)"
    try:
        if labels is None:
            names = id2label_names(model.config.id2label, where)
            labels = exact_label_set(names)
            if labels is None:
                raise LabelMapError(
                    f"{where}: its classes ({', '.join(names[:6])}, ...) are not exactly one "
                    "label set; pass --labels lip20, atr18 or ppp7"
                )
        return build_label_map(model.config.id2label, labels, where)
    except LabelMapError as e:
        raise DataError(str(e)) from None


def map_is_valid(map_path: Path, image_path: Path, labels: str) -> bool:
    """Whether a finished map is there: it opens, has its image's size and in-range labels."""
    if not map_path.is_file():
        return False
    try:
        with Image.open(image_path) as im:
            size = im.size
        parsing.load_parse_map(map_path, labels, size)
    except (DataError, OSError):
        return False
    return True


class _Images(torch.utils.data.Dataset):
    """Decoded, preprocessed images for the parser, with their index and (W, H) size."""

    def __init__(self, image_dir: Path, paths: list[str], processor: Any):
        self.image_dir, self.paths, self.processor = image_dir, paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, tuple[int, int]]:
        path = self.image_dir / self.paths[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read image {path}: {e}; re-download it") from None
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return i, pixels, image.size


def _collate(batch: list[tuple[int, torch.Tensor, tuple[int, int]]]) -> tuple[list, Any, list]:
    return [b[0] for b in batch], torch.stack([b[1] for b in batch]), [b[2] for b in batch]


def predict(model: Any, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Parser class ids ``[H, W]`` per image: logits upsampled to each (W, H) size, argmax.

    bf16 autocast on a GPU; the upsampling and argmax run in fp32, as the processor's own
    ``post_process_semantic_segmentation`` does.
    """
    device = next(model.parameters()).device
    pixels = pixels.to(device, non_blocking=True)
    with torch.inference_mode():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(pixel_values=pixels).logits
        out = []
        for k, (w, h) in enumerate(sizes):
            up = torch.nn.functional.interpolate(
                logits[k : k + 1].float(), size=(h, w), mode="bilinear", align_corners=False
            )
            out.append(up.argmax(dim=1)[0].to(torch.uint8).cpu().numpy())
    return out


def write_map(path: Path, labels: np.ndarray) -> None:
    """One 8-bit mode-L PNG of class ids, atomically."""
    with atomic_open(path) as f:
        Image.fromarray(labels, "L").save(f, format="PNG", compress_level=1)


class Progress:
    """'parse: 1200/4000 images (30%), 85.0 images/s, 33 s left' on stderr, in place on a TTY."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self.tty = sys.stderr.isatty()
        # A log file (a SLURM job's) gets a line every 30 s, not a screenful a minute.
        self.every_s = 2.0 if self.tty else 30.0

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every_s or self.done == self.total):
            self.last = now
            left = (self.total - self.done) / max(self.rate, 1e-9)
            line = (
                f"parse: {self.done}/{self.total} images ({100 * self.done // max(self.total, 1)}%), "
                f"{self.rate:.1f} images/s, {left:.0f} s left"
            )
            end = "\n" if not self.tty or self.done == self.total else ""
            print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def parse_dataset(opts: ParseOptions) -> dict[str, Any]:
    """Parse the images of one shard that have no valid map yet; return counts and speed."""
    root = Path(opts.root)
    image_dir = formats.image_dir(opts.dataset, root)
    parsing_root = Path(opts.parsing_root) if opts.parsing_root else root / "parsing"
    paths = shard_paths(dataset_images(opts.dataset, root), opts.shard)
    device = choose_device(opts.device)
    model, processor = load_parser(opts.model, device)
    lmap = label_map_for(model, opts.labels, opts.model)
    labels = lmap.target.name
    log.info("parser %s on %s: %s", opts.model, device, lmap.describe())

    def target(p: str) -> Path:
        return parsing.parse_map_path(parsing_root, labels, p)

    todo = [p for p in paths if not map_is_valid(target(p), image_dir / p, labels)]
    i, n = opts.shard
    log.info(
        "shard %d/%d: %d images, %d already parsed, %d to parse into %s",
        i,
        n,
        len(paths),
        len(paths) - len(todo),
        len(todo),
        parsing_root / labels,
    )
    loader = torch.utils.data.DataLoader(
        _Images(image_dir, todo, processor),
        batch_size=opts.batch_size,
        num_workers=opts.workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    progress = Progress(len(todo), opts.progress)
    for idx, pixels, sizes in loader:
        for k, pred in zip(idx, predict(model, pixels, sizes), strict=True):
            write_map(target(todo[k]), lmap.apply(pred))
        progress.update(len(idx))
    seconds = time.perf_counter() - progress.start
    return {
        "images": len(paths),
        "skipped": len(paths) - len(todo),
        "parsed": len(todo),
        "seconds": seconds,
        "images_per_s": len(todo) / max(seconds, 1e-9),
        "labels": labels,
        "out": str(parsing_root / labels),
    }
