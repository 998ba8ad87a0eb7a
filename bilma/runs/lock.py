"""One process per trial: an exclusive `flock` on `<trial dir>/.lock`, held while it trains.

The kernel releases a flock when its holder exits, however it exits (SIGKILL, out of memory),
so a stale lock never blocks a relaunch. The trainer is the one process present in every
backend (local, debug, SLURM, Ray, `python -m bilma train`), so the trainer takes it:

    acquire_trial_lock(trial.path)   # raises TrialBusy naming the holder when another has it
    ...
    release_trial_lock(trial.path)   # or leave it to process exit

Launchers also hold a short `claim` (another file) while they re-read a trial's state and
submit it, so that two launchers never both submit it (`bilma.sweep.plan.claimed`).

On NFS, Linux implements flock with the server's byte-range locks (NFSv4), which hold across
nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from bilma.errors import TrialBusy  # noqa: F401  (importable from here too)
from bilma.runs import schema
from bilma.runs.schema import TrialState

LOCK_NAME = schema.LOCK_FILE
CLAIM_NAME = schema.CLAIM_FILE
# A probe (`is_locked`) holds a shared lock for microseconds: a trainer starting at that very
# moment tries again for this long before calling the trial busy.
_RETRY_S = 1.0
# Forked helpers (data loader workers) share their trainer's lock and outlive a trainer killed
# hard by a few seconds; when the holder is dead, wait this long for them to exit.
_ORPHAN_S = 20.0

# Resolved trial dir -> (fd, pid of the process that took it). Taking the lock again in the
# same process is a no-op: two flocks of one process on two descriptors would block each other.
_held: dict[Path, tuple[int, int]] = {}


def lock_path(trial_dir: str | Path) -> Path:
    return Path(trial_dir) / LOCK_NAME


def holder(trial_dir: str | Path) -> str:
    """Who holds (or last held) the lock, as its holder wrote it: 'pid N on HOST since T'."""
    try:
        return lock_path(trial_dir).read_text().strip() or "unknown process"
    except OSError:
        return "unknown process"


def local_holder_pid(trial_dir: str | Path) -> int | None:
    """The pid of the lock's recorded holder when it is a process of this machine, else None."""
    parts = holder(trial_dir).split()
    if len(parts) < 4 or parts[0] != "pid" or parts[2] != "on" or not parts[1].isdigit():
        return None
    return int(parts[1]) if parts[3] == socket.gethostname() else None


def holder_alive(trial_dir: str | Path) -> bool:
    """False only when the recorded holder is a dead process of this machine."""
    parts = holder(trial_dir).split()
    if len(parts) < 4 or parts[0] != "pid" or parts[2] != "on" or not parts[1].isdigit():
        return True  # unknown: assume it runs
    if parts[3] != socket.gethostname():
        return True  # another machine's process (a shared file system): cannot tell
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_main_process() -> bool:
    """Rank 0, by the rule of bilma.training.trainer.init_distributed: only it takes the lock."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return True


def _try_flock(fd: int, mode: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def acquire_trial_lock(trial_dir: str | Path, wait_s: float | None = None) -> None:
    """Take the trial's lock for this process (rank 0 only), or raise TrialBusy.

    `wait_s`: wait up to that long for another holder to finish first (math.inf: as long
    as it takes), as a Ray worker does for a sample that maps to a trial already training."""
    if not _is_main_process():
        return
    key = Path(trial_dir).resolve()
    held = _held.get(key)
    if held is not None and held[1] == os.getpid():
        return
    key.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC (Python's default): programs this process execs do not inherit the lock.
    fd = os.open(lock_path(key), os.O_RDWR | os.O_CREAT, 0o644)
    first_try = _RETRY_S if wait_s is None else max(_RETRY_S, wait_s)
    if not _try_flock(fd, fcntl.LOCK_EX, first_try) and (
        holder_alive(key) or not _try_flock(fd, fcntl.LOCK_EX, _ORPHAN_S)
    ):
        os.close(fd)
        raise TrialBusy(
            f"{key} is already being trained by another process ({holder(key)}); "
            "a trial never runs twice at once: wait for it, or stop it (it resumes later)"
        )
    # Who holds it, for the message above. Not a data file: written in place under the lock.
    note = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
    except OSError:  # a full disk: the lock holds without its note; the next write says why
        pass
    _held[key] = (fd, os.getpid())


def release_trial_lock(trial_dir: str | Path) -> None:
    """Release the lock if this very process took it (a forked child never releases it)."""
    key = Path(trial_dir).resolve()
    held = _held.get(key)
    if held is None or held[1] != os.getpid():
        return
    del _held[key]
    with contextlib.suppress(OSError):
        fcntl.flock(held[0], fcntl.LOCK_UN)
    os.close(held[0])


@contextlib.contextmanager
def trial_lock(trial_dir: str | Path, wait_s: float | None = None) -> Iterator[None]:
    """`acquire_trial_lock` for a block (the trainer inside takes it again: a no-op)."""
    acquire_trial_lock(trial_dir, wait_s)
    try:
        yield
    finally:
        release_trial_lock(trial_dir)


def is_locked(trial_dir: str | Path) -> bool:
    """Whether a live process (this one included) holds the trial's lock: it trains it now."""
    key = Path(trial_dir).resolve()
    held = _held.get(key)
    if held is not None and held[1] == os.getpid():
        return True
    try:
        fd = os.open(lock_path(key), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        held_by_other = not _try_flock(fd, fcntl.LOCK_SH, 0.0)
    finally:
        os.close(fd)  # drops the shared lock the probe may have taken
    return held_by_other and holder_alive(key)


def live_state(trial_dir: str | Path, state: TrialState | None) -> TrialState | None:
    """The state as a relaunch acts on it: RUNNING only while a live process holds the
    trial's lock; a trainer gone without a word (SIGKILL, a lost node) left INTERRUPTED."""
    if state is TrialState.RUNNING and not is_locked(trial_dir):
        return TrialState.INTERRUPTED
    return state


@contextlib.contextmanager
def claim(trial_dir: str | Path) -> Iterator[None]:
    """Hold the trial's launch claim (waits for another launcher's): re-read the trial's state
    and submit it inside, so that no other launcher does the same in between."""
    path = Path(trial_dir)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / CLAIM_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
