"""Tiny on-disk datasets in the three benchmark formats, with each format's quirks.

Train source ids have gaps (3, 7, 8 -> pids 0, 1, 2); every image is a real 8x4 JPEG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

TRAIN_IDS = (3, 7, 8)


def write_jpeg(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    """Write a tiny real JPEG at `path`, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), color).save(path, format="JPEG")


def write_json(path: Path, data: Any) -> Path:
    """Write `data` as JSON at `path`, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def cuhk_entries() -> list[dict[str, Any]]:
    """CUHK-PEDES entries: train ids 3, 7, 8 (id 7 twice), val 101-102, test 201-203.

    Entry order is not sorted by id, and captions carry surrounding whitespace.
    """
    entries: list[tuple[int, str, str, int]] = [
        # (id, split, file_path, number of captions)
        (7, "train", "CUHK01/0007001.jpg", 2),
        (3, "train", "CUHK01/0003001.jpg", 2),
        (8, "train", "train_query/p8_s1.jpg", 1),
        (7, "train", "CUHK01/0007002.jpg", 2),
        (101, "val", "CUHK03/101_1.jpg", 2),
        (102, "val", "CUHK03/102_1.jpg", 2),
        (201, "test", "test_query/p201_s1.jpg", 2),
        (202, "test", "test_query/p202_s1.jpg", 2),
        (203, "test", "Market/0203_c1.jpg", 1),
    ]
    return [
        {
            "id": pid,
            "file_path": path,
            "captions": [f"  A person {pid} wearing item {k}. \n" for k in range(n)],
            "processed_tokens": [["a", "person"] for _ in range(n)],
            "split": split,
        }
        for pid, split, path, n in entries
    ]


def icfg_entries() -> list[dict[str, Any]]:
    """ICFG-PEDES entries: train and test only, one caption each."""
    entries = [
        (8, "train", "train/0008/0008_001.jpg"),
        (3, "train", "train/0003/0003_001.jpg"),
        (3, "train", "train/0003/0003_002.jpg"),
        (7, "train", "train/0007/0007_001.jpg"),
        (27, "test", "test/0027/0027_001.jpg"),
        (28, "test", "test/0028/0028_001.jpg"),
        (28, "test", "test/0028/0028_002.jpg"),
    ]
    return [
        {
            "id": pid,
            "file_path": path,
            "captions": [f"The man {pid} walks."],
            "processed_tokens": [["the", "man", "walks"]],
            "split": split,
        }
        for pid, split, path in entries
    ]


def rstpreid_entries() -> list[dict[str, Any]]:
    """RSTPReid entries: key `img_path`, two captions per image, train/val/test."""
    entries = [
        (3, "train", "0003_c1_0001.jpg"),
        (7, "train", "0007_c2_0001.jpg"),
        (8, "train", "0008_c3_0001.jpg"),
        (8, "train", "0008_c4_0002.jpg"),
        (3700, "val", "3700_c1_0001.jpg"),
        (3900, "test", "3900_c5_0001.jpg"),
        (3901, "test", "3901_c6_0001.jpg"),
    ]
    return [
        {
            "id": pid,
            "img_path": path,
            "captions": [f"Woman {pid} in red.", f"She carries a bag {pid}."],
            "split": split,
        }
        for pid, split, path in entries
    ]


def _make(
    root: Path, filename: str, entries: list[dict[str, Any]], path_key: str, images: bool
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / filename, entries)
    if images:
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get(path_key), str):
                write_jpeg(root / "imgs" / entry[path_key])
    return root


def make_cuhk(
    tmp_path: Path,
    entries: list[dict[str, Any]] | None = None,
    *,
    name: str = "cuhk",
    filename: str = "reid_raw.json",
    images: bool = True,
) -> Path:
    """Write a CUHK-PEDES-format dataset under tmp_path/name; return its root."""
    entries = cuhk_entries() if entries is None else entries
    return _make(tmp_path / name, filename, entries, "file_path", images)


def make_icfg(
    tmp_path: Path,
    entries: list[dict[str, Any]] | None = None,
    *,
    name: str = "icfg",
    filename: str = "ICFG-PEDES.json",
    images: bool = True,
) -> Path:
    """Write an ICFG-PEDES dataset (annotation file `filename`) under tmp_path/name."""
    entries = icfg_entries() if entries is None else entries
    return _make(tmp_path / name, filename, entries, "file_path", images)


def make_rstpreid(
    tmp_path: Path,
    entries: list[dict[str, Any]] | None = None,
    *,
    name: str = "rstpreid",
    filename: str = "data_captions.json",
    images: bool = True,
) -> Path:
    """Write an RSTPReid dataset under tmp_path/name; return its root."""
    entries = rstpreid_entries() if entries is None else entries
    return _make(tmp_path / name, filename, entries, "img_path", images)
