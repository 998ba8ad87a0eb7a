"""Readers for the three text-based person re-id benchmark formats (and synth) into `Record`s.

Every format is a JSON list of per-image entries; the readers validate each entry and raise
`DataError` with one line naming the file, the entry and the fix. Image files are checked
separately by `check_images` (existence) and `validate_image` (decodability).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bilma.data.records import SPLITS, DataError, Record
from bilma.labels import LabelSet, get_label_set

log = logging.getLogger(__name__)

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid")
"""The benchmark datasets. "synth" is also accepted: it is written in the CUHK-PEDES format."""

ALL_DATASETS = (*DATASETS, "synth")
"""Every name the readers accept (for CLI choices)."""

_SKIP_HINT = "set data.skip_bad_images=true to drop them with a warning"


@dataclass(frozen=True)
class _Format:
    """How one dataset is laid out on disk."""

    filenames: tuple[str, ...]  # candidate annotation files, in order of preference
    path_key: str  # the entry key holding the image path (relative to image_dir)
    splits: tuple[str, ...]  # the split values this dataset may contain


_CUHK = _Format(("reid_raw.json",), "file_path", SPLITS)
_FORMATS: dict[str, _Format] = {
    "cuhk-pedes": _CUHK,
    "synth": _CUHK,
    "icfg-pedes": _Format(("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", ("train", "test")),
    "rstpreid": _Format(("data_captions.json",), "img_path", SPLITS),
}


def _format(dataset: str) -> _Format:
    try:
        return _FORMATS[dataset]
    except KeyError:
        raise DataError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(ALL_DATASETS)}"
        ) from None


def annotation_file(dataset: str, root: Path) -> Path:
    """Return the file holding `dataset`'s annotations under `root` (first existing candidate)."""
    fmt = _format(dataset)
    root = Path(root)
    candidates = [root / name for name in fmt.filenames]
    for path in candidates:
        if path.is_file():
            return path
    looked = " or ".join(str(p) for p in candidates)
    where = "" if root.is_dir() else f" (the folder {root} does not exist)"
    raise DataError(
        f"no annotation file for {dataset}: looked for {looked}{where}; "
        f"point --root / data.root (now {root}) at the folder that holds it"
    )


def image_dir(dataset: str, root: Path) -> Path:
    """Return the folder that `Record.image_path` is relative to (root/imgs for all formats)."""
    _format(dataset)
    return Path(root) / "imgs"


def parse_map_path(
    parsing_root: str | Path, labelset: str | LabelSet, image_relpath: str | Path
) -> Path:
    """Path of the parse map of an image (the layout: `bilma.data.parsing`'s docstring).

    ``image_relpath`` is relative to the images folder (``CUHK01/0001001.png``).
    """
    name = get_label_set(labelset).name
    rel = PurePosixPath(Path(image_relpath).as_posix())
    # An absolute path or '..' would silently escape parsing_root.
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise ValueError(
            f"image path {str(image_relpath)!r} must be relative to the images folder, without '..'"
        )
    return Path(parsing_root) / name / rel.with_suffix(".png")


def _load_json_list(path: Path) -> list[Any]:
    """Parse `path` as JSON and check that the top level is a list."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
            "re-download the annotation file or fix it by hand"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-download the annotation file"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the annotation file: {e.strerror or e}") from None
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of entries at the top level, got {type(data).__name__}; "
            "is this the right annotation file?"
        )
    return data


def _parse_entry(
    entry: Any, index: int, path: Path, fmt: _Format
) -> tuple[str, tuple[str, ...], str, int]:
    """Validate one entry; return (image_path, captions, split, source_id)."""
    if not isinstance(entry, dict):
        raise DataError(
            f"{path}: entry {index} is a {type(entry).__name__}, not an object; "
            "fix or remove that entry"
        )
    where = f"{path}: entry {index} (id={entry.get('id')!r}, {fmt.path_key}={entry.get(fmt.path_key)!r})"
    for key in ("id", fmt.path_key, "captions", "split"):
        if key not in entry:
            raise DataError(f"{where}: missing key {key!r}; add it or remove that entry")

    source_id = entry["id"]
    if isinstance(source_id, bool) or not isinstance(source_id, int):
        raise DataError(
            f"{where}: key 'id' must be an integer, got {type(source_id).__name__} "
            f"{source_id!r}; fix the id"
        )

    image_path = entry[fmt.path_key]
    if not isinstance(image_path, str) or not image_path.strip():
        raise DataError(
            f"{where}: key {fmt.path_key!r} must be a non-empty string; fix the image path"
        )

    captions = entry["captions"]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{where}: key 'captions' must be a list of strings; fix that entry")
    if not captions:
        raise DataError(f"{where}: key 'captions' is empty; add a caption or remove that entry")
    stripped = tuple(c.strip() for c in captions)
    for k, caption in enumerate(stripped):
        if not caption:
            raise DataError(
                f"{where}: key 'captions' has an empty caption at position {k}; "
                "remove it or remove that entry"
            )

    split = entry["split"]
    if split not in fmt.splits:
        raise DataError(
            f"{where}: key 'split' has unknown value {split!r}; use one of {', '.join(fmt.splits)}"
        )
    return image_path, stripped, split, source_id


def read_annotations(dataset: str, root: str | Path) -> list[Record]:
    """Read and validate `dataset`'s annotation file under `root`, in the file's order.

    Train ids are remapped to 0..N-1 in order of sorted source id; val/test keep their id.
    """
    fmt = _format(dataset)
    path = annotation_file(dataset, Path(root))
    parsed = [_parse_entry(e, i, path, fmt) for i, e in enumerate(_load_json_list(path))]
    _refuse_repeated_images(parsed, path)
    train_ids = sorted({sid for _, _, split, sid in parsed if split == "train"})
    train_pid = {sid: pid for pid, sid in enumerate(train_ids)}
    return [
        Record(
            image_path=image_path,
            pid=train_pid[sid] if split == "train" else sid,
            captions=captions,
            split=split,
            source_id=sid,
        )
        for image_path, captions, split, sid in parsed
    ]


def _refuse_repeated_images(
    parsed: list[tuple[str, tuple[str, ...], str, int]], path: Path
) -> None:
    """An image listed twice would count twice in the gallery (or carry two identities)."""
    first: dict[str, int] = {}
    for i, (image_path, _captions, split, sid) in enumerate(parsed):
        key = os.path.normpath(image_path)
        j = first.setdefault(key, i)
        if j != i:
            was = parsed[j]
            raise DataError(
                f"{path}: image {image_path!r} is listed twice: entry {j} (id={was[3]}, "
                f"split={was[2]}) and entry {i} (id={sid}, split={split}); keep one entry "
                "(with both entries' captions) and remove the other"
            )


def split_records(records: Iterable[Record], split: str) -> list[Record]:
    """Return the records of one split, in order."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return [r for r in records if r.split == split]


def dataset_stats(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    """Count ids, images and captions per split, leaving out splits with no records."""
    ids: dict[str, set[int]] = {s: set() for s in SPLITS}
    images = dict.fromkeys(SPLITS, 0)
    captions = dict.fromkeys(SPLITS, 0)
    for r in records:
        ids[r.split].add(r.pid)
        images[r.split] += 1
        captions[r.split] += len(r.captions)
    return {
        s: {"ids": len(ids[s]), "images": images[s], "captions": captions[s]}
        for s in SPLITS
        if images[s]
    }


def check_images(
    records: Sequence[Record], image_dir: str | Path, skip_missing: bool
) -> list[Record]:
    """Check that every record's image exists under `image_dir`.

    Missing images raise `DataError` (count and first 5 paths) unless `skip_missing`, in which
    case they are logged as a warning and their records dropped. If every image is missing the
    folder is almost certainly wrong, so that raises even with `skip_missing`.
    """
    base = os.fspath(image_dir)
    paths = list(dict.fromkeys(r.image_path for r in records))  # unique, in file order
    present = {p for p in paths if os.path.exists(os.path.join(base, p))}
    missing = [p for p in paths if p not in present]
    if not missing:
        return list(records)
    head = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    n_images = len(present) + len(missing)
    if not present:
        raise DataError(
            f"none of the {n_images} images listed in the annotations exist under {base} "
            f"(e.g. {head}); check --root / data.root"
        )
    if not skip_missing:
        raise DataError(
            f"{len(missing)} of {n_images} images listed in the annotations are missing under "
            f"{base}: {head}; re-download them or {_SKIP_HINT}"
        )
    log.warning(
        "dropping %d records whose images are missing under %s: %s",
        len(missing),
        base,
        ", ".join(missing),
    )
    return [r for r in records if r.image_path in present]


def validate_image(path: str | Path) -> None:
    """Open `path` with PIL, `verify()` it and decode it; raise `DataError` if that fails."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        # verify() does not decode pixel data (a truncated JPEG passes it), so load as well.
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot read image {path}: {reason}; re-download it or set data.skip_bad_images=true"
        ) from e
