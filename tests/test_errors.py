"""One root for every error a researcher can act on, and one way each command prints it."""

from __future__ import annotations

import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import bilma
from bilma import errors
from bilma.errors import BilmaError, ConfigError, DiskFull, Interrupted, run_command


def _library_exceptions() -> list[type]:
    """Every exception class defined (or re-exported) by a module of the package."""
    import importlib

    found = set()
    for info in pkgutil.walk_packages(bilma.__path__, "bilma."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__.startswith("bilma"):
                found.add(obj)
    return sorted(found, key=lambda c: c.__qualname__)


def test_every_error_of_the_package_lives_in_errors_under_one_root():
    classes = _library_exceptions()
    # Control flow, not errors: an ASHA stop is raised by a callback and caught by the trainer.
    control = {"StopTrial"}
    assert len(classes) >= 15
    for cls in classes:
        if cls.__name__ in control:
            continue
        assert cls.__module__ == "bilma.errors", cls
        assert issubclass(cls, BilmaError), cls


def test_exit_codes_and_one_line(capsys):
    def bad() -> int:
        raise ConfigError("configs/x.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'?")

    assert run_command(bad) == 2
    assert capsys.readouterr().err == (
        "error: configs/x.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'?\n"
    )

    def full() -> int:
        raise DiskFull("disk full: cannot write in runs/x (0.0 MB free now)")

    assert run_command(full) == 1
    assert capsys.readouterr().err.startswith("error: disk full: cannot write in runs/x")

    def stopped() -> int:
        raise Interrupted(15, 2, 30, "runs/x/ckpt/last.pt")

    assert run_command(stopped) == 128 + 15
    assert capsys.readouterr().err.startswith("interrupted: SIGTERM received: saved epoch 3")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_command(lambda: 1 // 0)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--config", "nope.yaml"],
        ["sweep", "--grid", "nope"],
        ["tables", "--runs", "nope", "--study", "x"],
    ],
)
def test_each_command_prints_one_error_line(tmp_path, args):
    out = subprocess.run(
        [sys.executable, "-m", "bilma", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode in (1, 2), out.stderr
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr


def test_pickled_interrupted_keeps_its_fields():
    import pickle

    e = pickle.loads(pickle.dumps(errors.Interrupted(12, 0, 5, "p")))
    assert (e.signum, e.epoch, e.step, e.exit_code) == (12, 0, 5, 140)


def test_a_write_the_file_system_refuses_is_one_line(capsys):
    import errno as e

    def refused(code: int):
        def write():
            raise OSError(code, os.strerror(code), "/nfs/runs/study/abc")

        return write

    assert run_command(refused(e.EROFS)) == 1
    assert capsys.readouterr().err == (
        "error: cannot write /nfs/runs/study/abc (read-only file system); make its folder "
        "writable or choose another path (paths.runs=<folder> for trials, --out for outputs)\n"
    )
    assert run_command(refused(e.EACCES)) == 1
    assert "(permission denied)" in capsys.readouterr().err
    assert run_command(refused(e.EEXIST)) == 1
    assert "abc is a file where a folder is needed; choose another path" in capsys.readouterr().err
    assert run_command(refused(e.EISDIR)) == 1
    assert "abc is a folder where a file is needed" in capsys.readouterr().err
    with pytest.raises(OSError):  # any other OSError is not the environment's: a traceback
        run_command(refused(e.EIO))
