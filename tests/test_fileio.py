import json
import os
import stat
import subprocess
import sys

import pytest

from bilma.fileio import atomic_write_json, atomic_write_text, remove_stale_tmp


class _Unprintable:
    def __str__(self) -> str:
        raise TypeError("cannot serialise")


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_failed_write_keeps_old_file_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"b": _Unprintable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_remove_stale_tmp_keeps_live_writers(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".last.pt.{int(done.stdout)}.abcd1234.tmp"
    stale.write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = tmp_path / f".best.pt.{live.pid}.abcd1234.tmp"
        busy.write_bytes(b"y")
        other = tmp_path / "notes.tmp"
        other.write_bytes(b"z")
        removed = remove_stale_tmp(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert removed == [stale]
    assert busy.exists() and other.exists() and not stale.exists()


@pytest.mark.parametrize(
    "name, problem",
    [
        ("bilma-cuhk_pedes.v2", None),
        ("_scratch", None),
        ("../x", "must be a simple name"),
        ("/abs/path", "must be a simple name"),
        ("a/b", "must be a simple name"),
        ("..", "must be a simple name"),
        (".hidden", "must be a simple name"),
        ("-rf", "must be a simple name"),
        ("x" * 300, "is 300 characters long; use at most 100"),
        ("", "must be a non-empty name"),
        (7, "must be a non-empty name"),
    ],
)
def test_name_problem_is_the_one_rule_for_names_that_become_folders(name, problem):
    from bilma.fileio import name_problem

    got = name_problem(name)
    assert (got is None) if problem is None else (problem in got)


def test_in_threads_runs_every_item_and_raises_the_first_error(tmp_path):
    from bilma.fileio import atomic_write_text, in_threads

    in_threads(lambda n: atomic_write_text(tmp_path / f"{n}.txt", str(n)), range(20))
    assert sorted(int(p.read_text()) for p in tmp_path.glob("*.txt")) == list(range(20))

    def fail_on_7(n: int) -> None:
        if n == 7:
            raise OSError(28, "No space left on device", str(tmp_path / "7.txt"))

    with pytest.raises(OSError, match="No space left"):
        in_threads(fail_on_7, range(20))
