"""Notifications (`bilma.sweep.notify`) against a real HTTP server on this machine: what it
receives, and that a webhook that is down, slow or failing costs only a warning."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tiny import tiny_grid

from bilma.errors import ConfigError
from bilma.runs.schema import NOTIFY_FILE
from bilma.runs.trial_dir import TrialDir
from bilma.sweep import cli, notify


class Hook:
    """A webhook on 127.0.0.1: records each POST's JSON body; answers `code` after `delay` s."""

    def __init__(self, code: int = 200, delay: float = 0.0):
        self.received: list[dict] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                time.sleep(delay)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/SECRET"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def refused_url() -> str:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# ----------------------------------------------------------------------------- post


def test_post_delivers_the_json(hook):
    assert notify.post(hook.url, {"event": "end", "counts": {"done": 2}})
    assert hook.received == [{"event": "end", "counts": {"done": 2}}]


def test_a_down_webhook_only_warns(caplog):
    with caplog.at_level(logging.WARNING):
        assert notify.post(refused_url(), {"event": "end"}) is False
    (line,) = caplog.messages
    assert "not reached for the end event" in line and "the sweep goes on" in line


def test_a_slow_webhook_only_warns_after_the_timeout(caplog):
    slow = Hook(delay=2.0)
    try:
        with caplog.at_level(logging.WARNING):
            assert notify.post(slow.url, {"event": "failure"}, timeout_s=0.3) is False
    finally:
        slow.close()
    (line,) = caplog.messages
    assert "timed out" in line and "SECRET" not in line  # the path (a token) is not shown
    assert slow.received == [{"event": "failure"}]


def test_an_http_error_only_warns(caplog):
    failing = Hook(code=500)
    try:
        with caplog.at_level(logging.WARNING):
            assert notify.post(failing.url, {"event": "end"}) is False
    finally:
        failing.close()
    assert "Internal Server Error" in caplog.messages[0]


@pytest.mark.parametrize("url", ["ftp://host/x", "hooks.example.com/x", "http:///path"])
def test_a_url_that_is_not_http_is_refused(url):
    with pytest.raises(ConfigError, match="is not an http"):
        notify.check_url(url)


def test_the_launcher_refuses_a_bad_url_in_one_line(tmp_path, capsys):
    assert cli.main(["--grid", "demo", "--notify", "not-a-url", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --notify") and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- check


def study(tmp_path: Path, url: str, n: int = 3) -> list[TrialDir]:
    folder = tmp_path / "runs" / "S"
    trials = [TrialDir(folder / f"t{i}") for i in range(n)]
    for d in trials:
        d.path.mkdir(parents=True)
    notify.arm(url, folder, "grids/g.yaml", [d.trial_id for d in trials])
    return trials


def test_first_failure_once_then_the_end_once(tmp_path, hook):
    t0, t1, t2 = study(tmp_path, hook.url)
    assert os.stat(t0.path.parent / NOTIFY_FILE).st_mode & 0o777 == 0o600
    t0.set_status("failed", error="CUDA out of memory\ntraceback")
    assert notify.check(t0.path.parent, ended="t0") == ["failure"]
    assert notify.check(t0.path.parent) == []  # sent once
    t1.set_status("running", pid=os.getpid())  # alive: the study goes on
    t1.set_status("done")
    t1.write_result({"metrics": {"R1": 50.0}, "train_seconds": 3600.0, "gpu_hours": 2.0})
    assert notify.check(t0.path.parent) == []  # t2 has not started
    t2.set_status("interrupted")
    assert notify.check(t0.path.parent, ended="t2") == ["end"]
    assert notify.check(t0.path.parent) == []
    failure, end = hook.received
    counts = {"done": 1, "failed": 1, "interrupted": 1, "stopped": 0}
    assert failure["event"] == "failure" and failure["study"] == "S"
    assert failure["trial"] == {"trial_id": "t0", "variant": "", "seed": None,
                                "error": "CUDA out of memory"}  # fmt: skip
    assert end == {"event": "end", "study": "S", "grid": "grids/g.yaml", "counts": counts,
                   "trials": 3, "train_hours": 1.0, "gpu_hours": 2.0}  # fmt: skip


def test_a_running_trial_holds_the_end_back_but_its_own_job_does_not(tmp_path, hook):
    (t0,) = study(tmp_path, hook.url, n=1)
    t0.set_status("interrupted", pid=os.getpid())  # this process: "alive"
    assert notify.check(t0.path.parent) == []
    assert notify.check(t0.path.parent, ended="t0") == ["end"]


def test_a_failed_trial_whose_job_goes_on_does_not_hold_the_end_back(tmp_path, hook):
    # trials_per_job: a failed trial's job runs the next trial of its pack
    t0, t1 = study(tmp_path, hook.url, n=2)
    t0.set_status("failed", pid=os.getpid(), error="bug")
    t1.set_status("done")
    assert notify.check(t0.path.parent, ended="t1") == ["failure", "end"]


def test_no_url_removes_the_study_setting_and_sends_nothing(tmp_path, hook):
    (t0,) = study(tmp_path, hook.url, n=1)
    notify.arm(None, t0.path.parent, "g", ["t0"])
    t0.set_status("failed")
    assert notify.check(t0.path.parent, ended="t0") == [] and hook.received == []


def test_a_down_webhook_never_breaks_the_check(tmp_path, caplog):
    (t0,) = study(tmp_path, refused_url(), n=1)
    t0.set_status("failed", error="bug")
    with caplog.at_level(logging.WARNING):
        assert notify.check(t0.path.parent, ended="t0") == ["failure", "end"]
    assert len(caplog.messages) == 2  # one line per event


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_sweep_with_a_failing_trial_notifies_failure_then_end(synth_small, tmp_path, hook):
    variants = {
        "ok": {},
        "broken": {"data.dataset": "rstpreid", "data.root": str(tmp_path / "nowhere")},
    }
    grid = tiny_grid(tmp_path, synth_small, [1], variants)
    args = ["--grid", str(grid), "--backend", "debug", "--no-preflight", "--notify", hook.url]
    assert cli.main(args) == 1
    events = [r["event"] for r in hook.received]
    assert events == ["failure", "end"]
    assert hook.received[0]["trial"]["variant"] == "broken"
    assert hook.received[1]["counts"] == {"done": 1, "failed": 1, "interrupted": 0, "stopped": 0}
    assert hook.received[1]["trials"] == 2 and hook.received[1]["train_hours"] > 0
