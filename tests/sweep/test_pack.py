"""`bilma.sweep.pack.TrialPack`: the trials of one packed job, run one after another in this
process (their training replaced by a recorder: what runs, in which order, is the subject)."""

from __future__ import annotations

import pytest

from bilma.errors import TrialInterrupted
from bilma.runs.trial_dir import TrialDir
from bilma.sweep import pack
from bilma.sweep.pack import TrialPack


@pytest.fixture
def ran(monkeypatch):
    """The trial directories whose TrialJob ran; a trial named fail-* fails, stop-* stops."""
    calls: list[str] = []

    def call(self):
        d = TrialDir(self.trial_dir)
        calls.append(d.trial_id)
        if d.trial_id.startswith("fail"):
            d.set_status("failed", error="bug")
            raise ValueError("bug")
        if d.trial_id.startswith("stop"):
            d.set_status("interrupted")
            raise TrialInterrupted("SIGTERM")
        d.set_status("done")
        d.write_result({"metrics": {"R1": 1.0}})
        return {}

    monkeypatch.setattr(pack.TrialJob, "__call__", call)
    return calls


def dirs(tmp_path, *names: str) -> list[str]:
    out = []
    for name in names:
        d = TrialDir(tmp_path / "S" / name)
        d.path.mkdir(parents=True)
        d.set_status("pending", job_id="7_0")
        out.append(str(d.path))
    return out


def test_trials_run_in_order_and_a_failure_does_not_stop_the_pack(tmp_path, ran):
    paths = dirs(tmp_path, "a", "fail-b", "c")
    ended = TrialPack(paths)()
    assert ran == ["a", "fail-b", "c"]
    assert list(ended.values()) == ["done", "failed: ValueError: bug", "done"]


def test_a_stop_signal_ends_the_pack_and_a_requeue_goes_on_from_there(tmp_path, ran):
    paths = dirs(tmp_path, "a", "fail-b", "stop-c", "d")
    job = TrialPack(paths)
    with pytest.raises(TrialInterrupted):
        job()
    assert ran == ["a", "fail-b", "stop-c"]  # d not started
    ran.clear()
    with pytest.raises(TrialInterrupted):  # the requeued job: same object, called again
        job()
    assert ran == ["stop-c"]  # a (done) and fail-b (failed in this job) are not run again
    TrialDir(paths[2]).set_status("done")
    TrialDir(paths[2]).write_result({"metrics": {"R1": 1.0}})
    ran.clear()
    assert job()[paths[3]] == "done" and ran == ["d"]


def test_pack_groups_consecutive_trials():
    assert pack.pack([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert pack.pack([1, 2], 1) == [[1], [2]]
