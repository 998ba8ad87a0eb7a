"""Atomic file writes: the one helper the whole project uses.

A reader (another process, a relaunch after a kill) sees the old file or the new one, never a
torn one. Files are created with `open(..., "x")`, so they respect the umask (colleagues on a
shared cluster can read them), unlike `tempfile.mkstemp`'s 0600. Temporary files carry a dot
prefix and a `.tmp` suffix (`TMP_GLOB`) so that a kill's leftovers can be found and removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from bilma.errors import DiskFull  # noqa: F401  (importable from here too)

TMP_GLOB = ".*.tmp"

# A name that becomes one folder or file name (a study: runs/<study>/): one path component on
# every file system the project meets (NFS, Lustre, a laptop), never hidden, never an option.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_NAME = 100
NAME_RULE = f"letters, digits, '-', '_', '.' (at most {MAX_NAME}, not starting with '.' or '-')"


def name_problem(name: object) -> str | None:
    """Why `name` cannot be one folder name, or None. Every entry point that turns a
    user's name into a path (the config's tracking.study, a grid's study) asks this."""
    if not isinstance(name, str) or not name:
        return f"must be a non-empty name: {NAME_RULE}"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; use at most {MAX_NAME}"
    if not _NAME.fullmatch(name):
        return f"must be a simple name ({NAME_RULE}); it names a folder"
    return None


def disk_full_message(path: str | Path, needed: int | None = None) -> str:
    """One line: which folder is full, how much space is needed (if known) and free."""
    path = Path(path)
    folder = path.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free now"
    except OSError:
        free = "free space unknown"
    if needed is None:
        return (
            f"disk full: cannot write in {folder} ({free}); free some space and run the same "
            "command again"
        )
    return (
        f"disk full: cannot write {path.name} in {folder}: it needs about "
        f"{needed / 2**20:.1f} MB ({free}); the previous checkpoint is intact: free some "
        "space and run the same command to resume"
    )


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC (or a quota), or torch's writer failing on it (`inline_container.cc`)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "inline_container" in text or "file write failed" in text or "No space left" in text
    )


T = TypeVar("T")

# Files written (and fsynced) at once by `in_threads`: fsyncs in flight together share the file
# system's journal commits (1,000 trial folders: 22 s one after another, ~2 s with 8 threads).
FSYNC_THREADS = 8


def in_threads(fn: Callable[[T], Any], items: Iterable[T]) -> None:
    """`fn(item)` for every item, `FSYNC_THREADS` at a time; the first error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(FSYNC_THREADS) as pool:
        list(pool.map(fn, items))


def tmp_path(path: Path) -> Path:
    """A unique temporary name beside `path` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Yield a temporary binary file beside `path`; on success fsync it and os.replace it.
    A full disk raises `DiskFull` (one line naming the folder), `path` left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(e, DiskFull) and is_disk_full(e):
            raise DiskFull(disk_full_message(path)) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    # numpy / torch scalars and arrays, Paths: whatever a trainer hands us.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, default=json_default, ensure_ascii=False)
    atomic_write_text(path, text + ("\n" if indent is not None else ""))


def replace_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary file and os.replace it over `path`, without fsync: for files
    that are only a view of a process's state (progress.json), rewritten every few seconds. A
    reader never sees a torn file; a crash may lose the last write, which nothing needs."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, default=json_default), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through `atomic_open`: a kill never leaves a torn checkpoint."""
    import torch  # lazily: the analysis side reads trial directories without torch

    with atomic_open(path) as f:
        torch.save(obj, f)


def atomic_numpy_save(path: str | Path, array: Any) -> None:
    import numpy as np

    with atomic_open(path) as f:
        np.save(f, array)


def remove_stale_tmp(folder: str | Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete temporary files that a killed writer left in `folder` (not recursive).

    Only files of this module's naming (`TMP_GLOB`) whose writer pid is gone, or that are older
    than `older_than_s`, are removed, so a live writer's file is never pulled from under it.
    """
    removed = []
    now = time.time()
    for p in Path(folder).glob(TMP_GLOB):
        parts = p.name.split(".")  # ['', name..., pid, token, 'tmp']
        try:
            pid = int(parts[-3])
        except (ValueError, IndexError):
            continue
        alive = pid != os.getpid() and pid_alive(pid)
        try:
            old = now - p.stat().st_mtime > older_than_s if older_than_s > 0 else False
        except OSError:
            continue
        if pid == os.getpid() or not alive or old:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def files_like_umask(folder: str | Path) -> None:
    """Give every file under `folder` the mode a new file gets under the umask (0644 under
    022): libraries such as safetensors create theirs 0600, unreadable to colleagues."""
    mask = os.umask(0)
    os.umask(mask)
    for f in Path(folder).rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it takes `path`'s place.

    A folder cannot be swapped in one rename over a non-empty one: an old `path` is first
    renamed aside, the new folder renamed in, then the old one deleted. A reader sees the old
    folder, no folder for an instant, or the new one, never a half-written one. On failure the
    temporary folder is removed and `path` is left as it was.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        if path.exists():
            old = tmp_path(path)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # put the old folder back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
