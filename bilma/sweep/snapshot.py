"""Frozen code per launch: the `bilma` package a launch runs, copied into its study.

A queued or requeued job imports whatever `bilma` its Python finds when it starts: without a
snapshot, an edit made while a sweep waits in the queue would be trained by the trials that
start after it (paired seeds on different code, silently). So a launch copies the package it
runs into `runs/<study>/.code/<id>/bilma/`, content-addressed (the id hashes every file's path
and bytes: two launches of the same code share one copy, an edit gives a new one), and each
job of the launch gets that folder first on its Python path (`job_env`): the local backend's
submitit job, SLURM's batch script (`setup_lines`, so requeues run it too) and Ray's workers.
The trial's launch.json names the snapshot (`code`); the trainer's provenance.json records the
snapshot it really imported (`bilma.runs.provenance.code_info`, from the manifest beside it).

What is copied, as submitit's `RsyncSnapshot` decides it (`git ls-files`), but for the package
only: in a git checkout, the package's tracked files as they are on disk (edits not committed
included: what runs is what the launcher would import) plus untracked `.py` files git does not
ignore (a new module not yet added), with the `resources/` links followed (configs, grids,
profiles: small text); an installed package (no checkout): its files. Never data, runs, caches
or `.venv`. The manifest (`CODE_MANIFEST`) holds the commit, whether the code differs from it,
the `git diff` of the package against it and when the copy was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bilma
from bilma.fileio import atomic_write_json
from bilma.runs.launch import read_launch
from bilma.runs.provenance import now_iso
from bilma.runs.schema import CODE_DIR, CODE_MANIFEST
from bilma.sweep.plan import Action, Planned

PACKAGE = "bilma"
ID_LENGTH = 12  # hex digits of the content hash that name a snapshot (48 bits)
SKIP_DIRS = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class Snapshot:
    """A snapshot folder: `path` goes first on a job's Python path (it holds `bilma/`)."""

    id: str
    path: Path
    manifest: dict[str, Any]
    reused: bool = False  # an earlier launch of the same code made it


# ----------------------------------------------------------------------------- what is copied


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _walk(folder: Path) -> Iterator[Path]:
    """Every file under `folder` (links followed), caches left out."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(SKIP_SUFFIXES):
                yield Path(dirpath) / name


def _z(text: str | None) -> list[str]:
    return [p for p in (text or "").split("\0") if p]


def package_files(package: Path | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """({path in the snapshot: source file}, git facts) of the package `package` (default:
    the `bilma` this process imported). A checkout gives its tracked files and untracked,
    not ignored .py files; anything else (an installed package) every file of the package."""
    package = (package or Path(bilma.__file__).parent).resolve()
    root = package.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    tracked = _z(_git(root, "ls-files", "-z", "--", package.name)) if top else []
    if not tracked:
        files = {f"{package.name}/{p.relative_to(package)}": p for p in _walk(package)}
        return files, {"source": "installed", "commit": None, "untracked": []}
    untracked = _z(
        _git(root, "ls-files", "-z", "--others", "--exclude-standard", "--", package.name)
    )
    untracked = [p for p in untracked if p.endswith(".py")]
    files: dict[str, Path] = {}
    linked: list[str] = []  # the repository folders the package's links point at (resources)
    for rel in sorted(set(tracked) | set(untracked)):
        src = root / rel
        if src.is_symlink() and src.is_dir():
            target = src.resolve()
            inside = _git(target, "ls-files", "-z") if target.is_relative_to(root) else None
            names = (
                _z(inside)
                if inside is not None
                else [str(p.relative_to(target)) for p in _walk(target)]
            )
            files.update({f"{rel}/{n}": target / n for n in names if (target / n).is_file()})
            if target.is_relative_to(root):
                linked.append(str(target.relative_to(root)))
        elif src.is_file():  # a tracked file deleted on disk is not part of what runs
            files[rel] = src
            if src.is_symlink() and src.resolve().is_relative_to(root):
                linked.append(str(src.resolve().relative_to(root)))
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    # The package's difference from the commit (staged or not), what `dirty` means here.
    diff = _git(root, "diff", "HEAD", "--binary", "--", package.name, *linked) or ""
    return files, {"source": "checkout", "commit": commit, "diff": diff, "untracked": untracked}


def content_id(files: dict[str, Path]) -> str:
    """The snapshot id: a hash of every (path, bytes), in path order."""
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel].read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:ID_LENGTH]


def code_root(study_dir: Path) -> Path:
    """Where a study keeps its snapshots: runs/<study>/.code/."""
    return Path(study_dir) / CODE_DIR


# ----------------------------------------------------------------------------- making one


def make_snapshot(study_dir: Path, package: Path | None = None) -> Snapshot:
    """The snapshot of the package now on disk under `study_dir`: reused when the same code
    was copied before, else copied into a temporary folder and renamed into place (two
    launchers making the same snapshot at once both end with one complete copy)."""
    files, git = package_files(package)
    sid = content_id(files)
    final = code_root(study_dir) / sid
    if (final / CODE_MANIFEST).is_file():
        return Snapshot(sid, final, read_manifest(final), reused=True)
    code_root(study_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sid}-", dir=code_root(study_dir)))
    try:
        size = 0
        for rel, src in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            size += dest.stat().st_size
        diff = git.get("diff", "")
        manifest = {
            "id": sid,
            "source": git["source"],
            "commit": git["commit"],
            "dirty": bool(diff or git["untracked"]) if git["source"] == "checkout" else None,
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            "diff": diff,
            "untracked": git["untracked"],
            "files": len(files),
            "bytes": size,
            "from": str((package or Path(bilma.__file__).parent).resolve()),
            "created": now_iso(),
        }
        atomic_write_json(tmp / CODE_MANIFEST, manifest)
        try:
            tmp.rename(final)
        except OSError:  # another launcher renamed the same code into place first
            if not (final / CODE_MANIFEST).is_file():
                raise
            return Snapshot(sid, final, read_manifest(final), reused=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot(sid, final, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        out = json.loads((Path(path) / CODE_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


# ----------------------------------------------------------------------------- a launch's


def for_launch(planned: list[Planned], enabled: bool = True) -> Snapshot | None:
    """The snapshot the trials this launch runs will import (None: --no-snapshot, or nothing
    to run); prints one line when queued or earlier trials were submitted with other code."""
    to_run = [p for p in planned if p.action.runs()]
    if not enabled or not to_run:
        return None
    t0 = time.perf_counter()
    snap = make_snapshot(to_run[0].dir.path.parent)
    line = changed_line(planned, snap.id)
    if line:
        print(line, flush=True)
    how = "reused" if snap.reused else f"made in {time.perf_counter() - t0:.1f} s"
    dirty = " with uncommitted changes" if snap.manifest.get("dirty") else ""
    print(f"code: snapshot {snap.id}{dirty} ({how}): {snap.path}", flush=True)
    return snap


def changed_line(planned: list[Planned], new_id: str) -> str | None:
    """One line when some trial was submitted with other code than `new_id`: which trials
    will run the new code (those this launch starts) and which keep theirs (queued or
    running ones); None when nothing was submitted with other code."""
    old: dict[str, int] = {}
    keep = 0
    for p in planned:
        if p.action not in (Action.SKIP_RUNNING,) and not p.action.runs():
            continue
        code = read_launch(p.dir.path).code if p.dir.launch_path.exists() else None
        if code and code != new_id:
            old[code] = old.get(code, 0) + 1
            keep += p.action is Action.SKIP_RUNNING
    if not old:
        return None
    start = sum(p.action.runs() for p in planned)
    was = ", ".join(sorted(old))
    return (
        f"code changed since trials were submitted (snapshot {was}, now {new_id}): "
        f"{start} trial(s) this launch starts run the new code; {keep} queued or running "
        "keep the snapshot they were submitted with"
    )


def trial_snapshot(trial_dir: Path) -> Path | None:
    """The snapshot folder launch.json names for a trial (None: none, or it is gone)."""
    code = read_launch(trial_dir).code
    if not code:
        return None
    path = code_root(Path(trial_dir).parent) / code
    return path if (path / CODE_MANIFEST).is_file() else None


def job_env(trial_dir: Path) -> dict[str, str]:
    """Environment variables that make a job of this trial import its snapshot: the folder
    first on PYTHONPATH, and PYTHONSAFEPATH=1 so that `python -m submitit...` started in a
    checkout does not put that checkout (the current directory) before it. {} without one."""
    path = trial_snapshot(trial_dir)
    if path is None:
        return {}
    rest = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join([str(path), *([rest] if rest else [])]),
            "PYTHONSAFEPATH": "1"}  # fmt: skip


def job_environment(trial_dir: Path):
    """A context in which a submitit job submitted (or a process started) runs the trial's
    snapshot: the local backend's."""
    env = job_env(trial_dir)
    if not env:
        return nullcontext()
    import submitit

    return submitit.helpers.environment_variables(**env)


def setup_lines(trial_dir: Path) -> list[str]:
    """The batch script's lines that make a SLURM job import the trial's snapshot (each
    requeue runs the same script, so the same code)."""
    path = trial_snapshot(trial_dir)
    if path is None:
        return []
    return [
        f'export PYTHONPATH={_quote(path)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        "export PYTHONSAFEPATH=1",
    ]


@contextmanager
def in_snapshot(path: Path | None) -> Iterator[None]:
    """In `path` (nothing without one), back where it was after: around `ray.init`, which
    puts the driver's current directory first on every worker's path, before PYTHONPATH
    (from a checkout, its `bilma` would win). Tune moves each trial into its own folder, so
    the workers' start folder is nothing else to them."""
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


def short(code: str | None) -> str:
    """The snapshot id as the status table shows it."""
    return (code or "")[:8]


def manifest_summary(snap: Snapshot) -> dict[str, Any]:
    """The manifest without the diff text (for messages and benchmarks)."""
    return {k: v for k, v in snap.manifest.items() if k != "diff"}
