"""An optional pre-resized uint8 cache of a dataset's images and parse maps (`data.cache=uint8`).

Decoding a JPEG and resizing it is most of a loader worker's time. With the cache, every image
of the dataset is decoded and resized to the model's input size once (bilinear, as the
transforms do; parse maps nearest), into one file per kind under `data.cache_dir` (default
`<data.root>/cache`): `images-<H>x<W>.u8`, `parse-<labels>-<H>x<W>.u8`. Workers then read
a memory map (the page cache is shared by every worker and every trial of the node) and do
only the random geometry: the numbers are those of the uncached path exactly.

A file holds a header (its fingerprint: the records' image paths with each source file's
size and modification time, the size, the resampling) and then the arrays. It is reused when
the fingerprint matches, rebuilt otherwise (one line says why), written atomically
(`bilma.fileio`), and built by one process at a time (a `flock` beside it: DDP ranks and
trials sharing a dataset wait for the first one). A file that cannot be read as a cache is
reported in one line and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bilma.errors import CacheUnreadable  # noqa: F401  (importable from here too)
from bilma.fileio import atomic_open

log = logging.getLogger(__name__)

MAGIC = b"BILMA-UINT8-CACHE\n"
FORMAT = 1
_ALIGN = 4096  # the arrays start on a page boundary


def fingerprint(sources: Sequence[Path], root: Path, **params: object) -> str:
    """sha256 of the parameters and of each source's path (relative to `root`), size and
    modification time: any added, removed, replaced or reordered file changes it."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, **params}, sort_keys=True).encode())
    for p in sources:
        st = p.stat()
        h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class ArrayCache:
    """`count` uint8 arrays of one `shape`, read from a memory map opened lazily in each
    process (a DataLoader worker maps the file itself; pickling sends only the path)."""

    def __init__(self, path: Path, count: int, shape: tuple[int, ...], offset: int):
        self.path, self.count, self.shape, self.offset = path, count, shape, offset
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(
                self.path, np.uint8, "r", offset=self.offset, shape=(self.count, *self.shape)
            )
        return np.array(self._map[i])  # a private, writable copy: callers may flip or shift it

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}


def read_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the arrays) of a cache file; CacheUnreadable says what is wrong."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise CacheUnreadable("not a bilma cache file")
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n).decode())
        count, shape = int(header["count"]), tuple(int(s) for s in header["shape"])
        if header["format"] != FORMAT:
            raise CacheUnreadable(f"format {header['format']}, this version reads {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise CacheUnreadable(f"{type(e).__name__}: {e}") from None
    offset = _data_offset(n)
    expected = offset + count * math.prod(shape)
    size = path.stat().st_size
    if size != expected:
        raise CacheUnreadable(f"{size} bytes where its header says {expected}")
    return header, offset


def _data_offset(header_len: int) -> int:
    end = len(MAGIC) + 8 + header_len
    return -(-end // _ALIGN) * _ALIGN


def _write(path: Path, header: dict, arrays: Iterator[np.ndarray], shape: tuple[int, ...]) -> None:
    raw = json.dumps(header, sort_keys=True).encode()
    with atomic_open(path) as f:
        f.write(MAGIC + struct.pack("<Q", len(raw)) + raw)
        f.write(b"\0" * (_data_offset(len(raw)) - f.tell()))
        for a in arrays:
            if a.shape != shape or a.dtype != np.uint8:
                raise ValueError(f"cache {path}: an array of {a.dtype} {a.shape}, not {shape}")
            f.write(np.ascontiguousarray(a).tobytes())


class _Resized(Dataset):
    """Item i: `load(i)`, for building a cache in DataLoader workers."""

    def __init__(self, count: int, load: Callable[[int], np.ndarray]):
        self.count, self.load = count, load

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.load(i)))  # writable: PIL's buffer is not


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the holder dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_or_build(
    path: Path,
    key: str,
    count: int,
    shape: tuple[int, ...],
    load: Callable[[int], np.ndarray],
    workers: int = 0,
) -> ArrayCache:
    """The cache at `path` if its fingerprint is `key`, else built (again) from `load(i)` for
    i < count, each a uint8 array of `shape`, in `workers` processes."""
    with _build_lock(path):
        why = "there is none yet"
        if path.exists():
            try:
                header, offset = read_header(path)
                if header["fingerprint"] == key and tuple(header["shape"]) == shape:
                    return ArrayCache(path, int(header["count"]), shape, offset)
                why = "its images changed (or the size, or the resampling)"
            except CacheUnreadable as e:
                log.warning("image cache %s is unreadable (%s): building it again", path, e)
                why = "the old one was unreadable"
        log.info("building the uint8 image cache %s: %d arrays of %s (%s)", path, count, shape, why)
        loader = DataLoader(_Resized(count, load), batch_size=64, num_workers=workers)
        _write(
            path,
            {"format": FORMAT, "fingerprint": key, "count": count, "shape": list(shape)},
            (a.numpy() for batch in loader for a in batch),
            shape,
        )
        return ArrayCache(path, count, shape, read_header(path)[1])
