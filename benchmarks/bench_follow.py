"""File opens and stats per second of the local launcher's follow loop on a 1,000-trial study.

A study of N trial directories (default 1,000) as a long sweep looks in the middle: 10% done
(result.json), a few running (status.json names a live process), the rest pending. Another
thread plays the trials: every `--change-every` seconds one more trial finishes. The
launcher's real follow loop watches them for `--seconds`; an audit hook counts every `open`
of a file under the study, a wrapper counts `os.stat` calls.

    .venv/bin/python benchmarks/bench_follow.py [--trials 1000] [--seconds 30]

The loop driven is the local backend's on trials started by an earlier launch (they are only
followed: `follow_only`, before the package was layered `run_local` with nothing to submit),
so the measurement is the follow loop alone, with no job submitted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks run from a checkout


# The launcher's follow loop and its types, wherever the layout of the day keeps them.
try:
    from bilma.runs.trial_dir import TrialDir
    from bilma.sweep.backends.local import follow_only as _follow
    from bilma.sweep.plan import Action, Planned

    RUNNING_ACTION = Action.SKIP_RUNNING
except ImportError:  # before the package was layered (commit 30b543a and earlier)
    from bilma.trial import TrialDir
    from sweeps.launcher import SKIP_RUNNING as RUNNING_ACTION
    from sweeps.launcher import Planned, run_local

    def _follow(planned: list) -> None:
        run_local(planned, max_parallel=1, timeout_min=60)


def fake_trial(i: int):
    """The fields of a sweep's trial that the follow loop prints."""
    from types import SimpleNamespace

    return SimpleNamespace(study="big", variant=f"v{i % 3}", seed=i)


def follow(planned: list) -> None:
    _follow(planned)


def make_study(root: Path, n: int, alive_pid: int) -> list:
    """N trial directories (10% done, 4 running, the rest pending) as planned trials."""
    planned = []
    for i in range(n):
        d = TrialDir(root / f"t{i:05d}")
        d.path.mkdir(parents=True)
        state = "done" if i < n // 10 else "running" if i < n // 10 + 4 else "pending"
        status = {"state": state, "attempts": 1, "host": socket.gethostname(), "pid": alive_pid}
        (d.path / "status.json").write_text(json.dumps(status))
        if state == "done":
            write_result(d.path)
        planned.append(Planned(fake_trial(i), d, RUNNING_ACTION))
    return planned


def write_result(path: Path) -> None:
    result = {"metrics": {"R1": 10.0, "mAP": 9.0}, "seed": 0}
    (path / "result.json").write_text(json.dumps(result))
    (path / "status.json").write_text(json.dumps({"state": "done", "attempts": 1}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--change-every", type=float, default=1.0)
    args = ap.parse_args()
    sleeper = subprocess.Popen(["sleep", str(args.seconds + 30)])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs" / "big"
        planned = make_study(root, args.trials, sleeper.pid)
        prefix = str(root)
        opens = 0
        stats = 0

        def hook(event: str, hargs: tuple) -> None:
            nonlocal opens
            if event == "open" and str(hargs[0]).startswith(prefix):
                opens += 1

        real_stat = os.stat

        def counting_stat(path, *a, **k):
            nonlocal stats
            if str(path).startswith(prefix):
                stats += 1
            return real_stat(path, *a, **k)

        stop = threading.Event()

        def play() -> None:  # one more trial finishes every change_every seconds
            i = args.trials // 10 + 4
            while not stop.wait(args.change_every) and i < args.trials:
                write_result(planned[i].dir.path)
                i += 1

        sys.addaudithook(hook)
        os.stat = counting_stat
        player = threading.Thread(target=play, daemon=True)
        player.start()
        t0 = time.perf_counter()
        timer = threading.Timer(args.seconds, sleeper.kill)  # the followed trials "end"
        timer.start()
        follow(planned)
        wall = time.perf_counter() - t0
        stop.set()
        os.stat = real_stat
    print(
        f"{datetime.date.today()} {platform.node()} python {platform.python_version()}: "
        f"{args.trials} trials followed for {wall:.1f} s, one finishing every "
        f"{args.change_every:g} s: {opens / wall:.0f} opens/s, {stats / wall:.0f} stats/s "
        f"({opens} opens, {stats} stats)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
