"""Writing the dataset: splits, annotations, one job per identity (in worker processes), marker.

Everything is deterministic per seed: identities come from ``numpy.random.default_rng(seed)``,
each image from `image_rng` (seed, identity index, image index) and its captions from
`caption_rng`, so ``workers > 1`` writes byte-identical files to ``workers = 1``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bilma.data.synth.attributes import (
    LABEL_NAMES,
    Identity,
    sample_identities,
    sample_lookalike_identities,
)
from bilma.data.synth.captions import captions_for, tokenize
from bilma.data.synth.rendering import degrade, draw_figure
from bilma.fileio import atomic_write_text

SYNTH_MARKER = "synth.json"
"""Written last under the output folder; its presence marks a complete dataset."""

# The marker's "generator": the package's name (the module's, before it became a package),
# so datasets written before and after the split are the same and both count as complete.
_GENERATOR = "bilma.data.synth"
_FORMAT_VERSION = 1
_SPLITS = ("train", "val", "test")


def image_rng(seed: int, index: int, k: int) -> np.random.Generator:
    """The generator of image `k` of identity `index` (0-based): independent of the worker."""
    return np.random.default_rng([seed, index, k, 0])


def caption_rng(seed: int, index: int, k: int) -> np.random.Generator:
    """The generator of the captions of image `k` of identity `index` (0-based)."""
    return np.random.default_rng([seed, index, k, 1])


def split_sizes(
    ids: int, val_ids: int | None = None, test_ids: int | None = None
) -> dict[str, int]:
    """Identities per split: val and test default to ``max(1, ids // 10)`` (0 under 3 ids)."""
    default = max(1, ids // 10) if ids >= 3 else 0
    n_val = default if val_ids is None else val_ids
    n_test = default if test_ids is None else test_ids
    if ids < 1 or n_val < 0 or n_test < 0 or n_val + n_test > ids:
        raise ValueError(
            f"bad split sizes: ids={ids}, val_ids={n_val}, test_ids={n_test}; need ids >= 1 "
            "and 0 <= val_ids + test_ids <= ids"
        )
    return {"train": ids - n_val - n_test, "val": n_val, "test": n_test}


def _rel_path(split: str, ident_id: int, k: int) -> str:
    return f"{split}/{ident_id:05d}_{k}.jpg"


@dataclass(frozen=True)
class IdentityJob:
    """One worker's job: render and write every image of one identity with its parse maps."""

    out: str
    """The dataset folder."""
    seed: int
    index: int
    """0-based identity index; its id in the annotations is ``index + 1``."""
    identity: Identity
    split: str
    images: int
    """Images of this identity."""
    height: int
    width: int
    local_scale: float = 1.0
    """Scale of the parts that tell look-alikes apart (`body.draw_body`)."""
    chroma: str = "4:2:0"
    """JPEG chroma subsampling: "4:2:0" halves colour resolution, "4:4:4" keeps it."""


CHROMA = ("4:2:0", "4:4:4")


def write_identity(job: IdentityJob) -> int:
    """Render and write every image of one identity with its parse maps; return the count."""
    root = Path(job.out)
    for k in range(job.images):
        rel = _rel_path(job.split, job.index + 1, k)
        rng = image_rng(job.seed, job.index, k)
        rendering = draw_figure(job.identity, rng, job.height, job.width, job.local_scale)
        degrade(rendering.rgb, rng).save(
            root / "imgs" / rel, "JPEG", quality=90, subsampling=job.chroma, optimize=False
        )
        png = rel[: -len(".jpg")] + ".png"
        for name, labels in rendering.labels.items():
            # Level 1: label maps are flat regions, so fast compression is nearly as small.
            Image.fromarray(labels, "L").save(
                root / "parsing" / name / png, "PNG", compress_level=1
            )
    return job.images


def is_complete(root: str | Path) -> bool:
    """Whether `root` holds a finished synthetic dataset (its marker and annotations exist)."""
    root = Path(root)
    try:
        params = json.loads((root / SYNTH_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(params, dict)
        and params.get("generator") == _GENERATOR
        and (root / "reid_raw.json").is_file()
    )


def _annotations(
    identities: list[Identity], splits: list[str], seed: int, images_per_id: int
) -> list[dict[str, Any]]:
    """The ``reid_raw.json`` entries: one per image, two captions each."""
    entries = []
    for index, (ident, split) in enumerate(zip(identities, splits, strict=True)):
        for k in range(images_per_id):
            caps = captions_for(ident, caption_rng(seed, index, k))
            entries.append(
                {
                    "id": index + 1,
                    "file_path": _rel_path(split, index + 1, k),
                    "captions": caps,
                    "processed_tokens": [tokenize(c) for c in caps],
                    "split": split,
                }
            )
    return entries


class _Progress:
    """Reports identities and images done, and the rate, on stderr at each further 10%."""

    def __init__(self, ids: int, start: float, enabled: bool) -> None:
        self.ids, self.start, self.enabled = ids, start, enabled
        self.done_ids = self.done_images = 0
        self.next_report = 0.1

    def identity_done(self, n_images: int) -> None:
        self.done_ids += 1
        self.done_images += n_images
        done, ids = self.done_ids, self.ids
        if self.enabled and (done / ids >= self.next_report or done == ids):
            rate = self.done_images / max(time.perf_counter() - self.start, 1e-9)
            print(
                f"synth: {done}/{ids} identities ({100 * done // ids}%), "
                f"{self.done_images} images, {rate:.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
            self.next_report = math.floor(done / ids * 10 + 1) / 10


def _run(jobs: list[IdentityJob], workers: int, progress: _Progress) -> None:
    """Every job, in this process or in a pool of `workers` processes."""
    if workers == 1:
        for job in jobs:
            progress.identity_done(write_identity(job))
        return
    chunk = max(1, len(jobs) // (workers * 16))
    with multiprocessing.Pool(workers) as pool:
        for n_images in pool.imap_unordered(write_identity, jobs, chunksize=chunk):
            progress.identity_done(n_images)


def _prepare(root: Path) -> None:
    """Remove the marker first (an interrupted run must not look complete), make the folders."""
    root.mkdir(parents=True, exist_ok=True)
    (root / SYNTH_MARKER).unlink(missing_ok=True)
    for split in _SPLITS:
        (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
        for name in LABEL_NAMES:
            (root / "parsing" / name / split).mkdir(parents=True, exist_ok=True)


def _draw_identities(
    ids: int,
    sizes: dict[str, int],
    splits: list[str],
    seed: int,
    lookalike: int,
    lookalike_share: float,
    pool: str,
) -> tuple[list, list[dict[str, Any]]]:
    """The identities in split order, and the look-alike groups (empty without the option)."""
    if not lookalike:
        return sample_identities(ids, seed, pool), []
    blocks = [sizes[s] for s in _SPLITS]
    identities, drawn = sample_lookalike_identities(blocks, seed, lookalike, lookalike_share, pool)
    groups = [
        {"ids": [i + 1 for i in g.indices], "attribute": g.attribute, "split": splits[g.indices[0]]}
        for g in drawn
    ]
    return identities, groups


def identities_of(root: str | Path) -> list[Identity]:
    """The identities of the dataset written under `root`, in id order (id = index + 1),
    drawn again from its marker's parameters (generation is deterministic per seed)."""
    params = json.loads((Path(root) / SYNTH_MARKER).read_text(encoding="utf-8"))
    sizes = {"train": params["ids"] - params["val_ids"] - params["test_ids"]}
    sizes.update(val=params["val_ids"], test=params["test_ids"])
    splits = [s for s in _SPLITS for _ in range(sizes[s])]
    identities, _ = _draw_identities(
        params["ids"],
        sizes,
        splits,
        params["seed"],
        params.get("lookalike", 0),
        params.get("lookalike_share", 0.5),
        params.get("pool", "all"),
    )
    return identities


def _marker(
    ids: int,
    images_per_id: int,
    seed: int,
    height: int,
    width: int,
    sizes: dict[str, int],
    counts: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """The generation parameters written to `SYNTH_MARKER` (key order is part of its bytes)."""
    return {
        "generator": _GENERATOR,
        "version": _FORMAT_VERSION,
        "ids": ids,
        "images_per_id": images_per_id,
        "seed": seed,
        "height": height,
        "width": width,
        "val_ids": sizes["val"],
        "test_ids": sizes["test"],
        "labelsets": list(LABEL_NAMES),
        "counts": counts,
    }


def generate(
    out: str | Path,
    ids: int = 1200,
    images_per_id: int = 4,
    seed: int = 0,
    height: int = 384,
    width: int = 128,
    val_ids: int | None = None,
    test_ids: int | None = None,
    workers: int = 1,
    progress: bool = True,
    lookalike: int = 0,
    lookalike_share: float = 0.5,
    pool: str = "all",
    local_scale: float = 1.0,
    chroma: str = "4:2:0",
) -> dict[str, Any]:
    """Write the synthetic dataset under `out`; return counts per split and timing.

    `lookalike` = k > 0 draws a `lookalike_share` of each split's identities in groups of k
    that differ only in one local attribute (`attributes.LOCAL_ATTRIBUTES`); the marker then
    lists the groups (ids and attribute). 0 leaves every byte as without the option.
    `pool` ("pretrain" or "finetune") draws identities from one of two disjoint halves of the
    identity space (`attributes.in_pool`); "all", the default, from both.
    `local_scale` > 1 draws shoes, bag, hat and scarf larger (about one 16-pixel patch each
    at 2 and 192x64); `chroma` "4:4:4" keeps the JPEGs' full colour resolution. At their
    defaults both leave every byte as before they existed.

    Files are written in place; the marker (`SYNTH_MARKER`) is removed first and written
    last, so an interrupted run is never taken for a complete one. Output is byte-identical
    for equal arguments whatever `workers` is.
    """
    start = time.perf_counter()
    if (
        images_per_id < 1
        or height < 32
        or width < 16
        or workers < 1
        or not 0.5 <= local_scale <= 4.0
        or chroma not in CHROMA
    ):
        raise ValueError(
            f"bad arguments: images_per_id={images_per_id} (>= 1), height={height} (>= 32), "
            f"width={width} (>= 16), workers={workers} (>= 1), local_scale={local_scale} "
            f"(0.5..4), chroma={chroma!r} ({' or '.join(CHROMA)})"
        )
    sizes = split_sizes(ids, val_ids, test_ids)
    root = Path(out)
    _prepare(root)
    splits = [s for s in _SPLITS for _ in range(sizes[s])]
    identities, groups = _draw_identities(
        ids, sizes, splits, seed, lookalike, lookalike_share, pool
    )
    entries = _annotations(identities, splits, seed, images_per_id)
    jobs = [
        IdentityJob(
            str(root), seed, i, ident, split, images_per_id, height, width, local_scale, chroma
        )
        for i, (ident, split) in enumerate(zip(identities, splits, strict=True))
    ]
    _run(jobs, workers, _Progress(ids, start, progress))

    atomic_write_text(root / "reid_raw.json", json.dumps(entries))
    counts = {
        split: {
            "ids": sizes[split],
            "images": sizes[split] * images_per_id,
            "captions": sizes[split] * images_per_id * 2,
        }
        for split in _SPLITS
    }
    params = _marker(ids, images_per_id, seed, height, width, sizes, counts)
    if pool != "all":  # only then, as below: datasets without the options keep their bytes
        params["pool"] = pool
    if local_scale != 1.0:
        params["local_scale"] = local_scale
    if chroma != "4:2:0":
        params["chroma"] = chroma
    if lookalike:
        params.update(lookalike=lookalike, lookalike_share=lookalike_share, lookalike_groups=groups)
    # Last, atomically: its presence means every file above is complete.
    atomic_write_text(root / SYNTH_MARKER, json.dumps(params, indent=2) + "\n")
    seconds = time.perf_counter() - start
    return {
        "out": str(root),
        "splits": counts,
        "images": ids * images_per_id,
        "seconds": seconds,
        "images_per_s": ids * images_per_id / seconds,
        "workers": workers,
    }
