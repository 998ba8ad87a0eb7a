"""Every error a researcher can act on, under one root: `BilmaError`.

Each is one line that names the file, key or line and the fix; `exit_code` is what a command
exits with. Every command's `main` catches `BilmaError` alone (`run_command`) and prints that
line; anything else is a bug and keeps its traceback.

    2   bad input: a config, grid, profile, dataset or trial directory to fix
    1   the environment: a full disk, MLflow out of reach
    128 + N   stopped by signal N after saving (run the same command to resume)
"""

from __future__ import annotations

import errno
import reprlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path


class BilmaError(Exception):
    """The root: a problem told in one line, with the exit code of the command that meets it."""

    exit_code = 2
    label = "error"  # the word before the message: "error: ..."


# ----------------------------------------------------------------------------- bad input (2)


class ConfigError(BilmaError, ValueError):
    """A bad trainer config: the file, the key and the fix."""


class GridError(BilmaError, ValueError):
    """A bad grid file: the file, the key (and variant) and the fix."""


class GridTooLarge(GridError):
    """A grid of more trials than `--max-trials`, launched without `--yes`."""


class SearchError(BilmaError, ValueError):
    """A bad `search:` or `scheduler:` section (load_grid re-raises it as a GridError)."""


class ProfileError(BilmaError, ValueError):
    """A bad SLURM profile: the file, the key and the fix."""


class DataError(BilmaError, ValueError):
    """A missing or malformed dataset file: the file, the line and the fix."""


class LabelMapError(DataError):
    """A parser whose classes cannot be placed in the requested label set."""


class CheckpointMismatch(DataError):
    """A checkpoint whose model differs from the one the config builds."""


class CacheUnreadable(DataError):
    """A pre-resized image cache file that is not whole (torn, foreign, another format): the
    loader says so in one warning line and rebuilds it."""


class UnreadableCheckpoint(DataError):
    """A checkpoint file that cannot be read as one (torn, truncated, foreign); `reason` says
    what it is in a few words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable across processes (Ray, submitit results)
        return (type(self), (str(self), self.reason))


class PretrainedNotFound(DataError):
    """A pretrained folder that does not exist or is not a CLIP model."""

    @staticmethod
    def fix(folder: Path | str) -> str:
        """How to get the weights into `folder` (the trainer's error and the preflight's)."""
        return (
            "download the model once on a machine with internet (e.g. `hf download "
            f"openai/clip-vit-base-patch16 --local-dir {folder}`) and point model.pretrained at "
            "that folder"
        )


class PreflightError(BilmaError, ValueError):
    """Inputs of a launch's trials that would make them fail (one line each, with the fix),
    found before anything was created or submitted."""


class AnalysisError(BilmaError, RuntimeError):
    """Bad input for the tables: the study, store or folder and the fix."""

    exit_code = 1


class RunRecordError(BilmaError, ValueError):
    """A trial directory that cannot be used as asked."""


class TrialConflictError(RunRecordError):
    """A trial directory holds a different experiment than the config being run."""


class ChangedTrials(RunRecordError):
    """Finished trials of the study were trained with other values than the plan (a changed
    default, an edited grid): the launch asks whether to rerun them or keep them."""


class TrialBusy(RunRecordError):
    """Another live process holds the trial's lock: it is training that trial now."""

    exit_code = 3


# ----------------------------------------------------------------------------- environment (1)


class DiskFull(BilmaError, RuntimeError):
    """A file could not be written for lack of space; what was there before is intact."""

    exit_code = 1


class TrackingError(BilmaError, RuntimeError):
    """MLflow could not be brought up to date (sync, parent runs): the URI and the fix."""

    exit_code = 1


# ----------------------------------------------------------------------------- signals


class Interrupted(BilmaError):
    """Training stopped by a signal after saving `ckpt/last.pt`."""

    label = "interrupted"

    def __init__(self, signum: int, epoch: int, step: int, path: Path):
        self.signum, self.epoch, self.step, self.path = signum, epoch, step, path
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: saved epoch {epoch + 1} step {step} to {path}; run the same "
            "command to resume"
        )

    def __reduce__(self):  # picklable across processes (Ray, submitit results)
        return (type(self), (self.signum, self.epoch, self.step, self.path))

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


class TrialInterrupted(BilmaError, RuntimeError):
    """A trial job stopped on a signal after saving; launching again resumes it."""

    exit_code = 1


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict = 3, 6, 6
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 60, 60, 40


def shown(value: object) -> str:
    """`repr(value)` cut to a readable size: what an error message prints of a user's value
    (a value can be a 10,000-item list, or a YAML alias expanding to millions)."""
    return _SHOWN.repr(value)


def first_line(e: BaseException) -> str:
    """'TypeName: first line of the message' (at most 300 characters), for warnings and
    errors that quote an exception from a library (MLflow, a parser) without its traceback."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def path_error_line(e: OSError) -> str | None:
    """One line for a path the file system refuses (read-only, no permission, a file where a
    folder must be or the reverse), naming it and the fix: the environment or the command
    line to fix, not a bug. None for any other OSError (it keeps its traceback)."""
    where = e.filename
    if not where:
        return None
    fix = "choose another path (paths.runs=<folder> for trials, --out for outputs)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return f"cannot write {where} ({why}); make its folder writable or {fix}"
    if e.errno == errno.EEXIST:  # mkdir(exist_ok=True) meeting a file
        return f"{where} is a file where a folder is needed; {fix}"
    if e.errno == errno.ENOTDIR:
        return f"a part of {where} is a file, not a folder; {fix}"
    if e.errno == errno.EISDIR:
        return f"{where} is a folder where a file is needed; give the file's path"
    return None


def run_command(func: Callable[[], int], message: Callable[[BilmaError], str] | None = None) -> int:
    """`func()`'s exit code; a `BilmaError` is printed as one line and exits with its code."""
    try:
        return func()
    except BilmaError as e:
        print(f"{e.label}: {(message or str)(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if (line := path_error_line(e)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
