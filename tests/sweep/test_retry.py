"""bilma.sweep.retry without a cluster: what a launch does with a trial whose SLURM job ended
(SLURM's states given), the bound on automatic retries, the backoff."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bilma.runs.trial_dir import TrialDir
from bilma.sweep.plan import Action, Planned
from bilma.sweep.retry import RetryPolicy, by_delay, settle_slurm

POLICY = RetryPolicy(max_retries=2, backoff_s=60)


def _trial(tmp_path, name="t1", state="running", job="5_0", **fields) -> Planned:
    d = TrialDir(tmp_path / "runs" / "s" / name)
    d.path.mkdir(parents=True)
    d.set_status("pending", backend="slurm", job_id=job)
    d.start_attempt()
    d.set_status(state, **fields)
    trial = SimpleNamespace(study="s", variant="v", seed=0)
    # what `plan` made of it: a dead "running" trial resumes, a failed one is skipped
    action = Action.SKIP_FAILED if state == "failed" else Action.SUBMIT
    return Planned(trial, d, action, "", "slurm")  # type: ignore[arg-type]


def _settle(p: Planned, slurm_state: str, write=True, retry_failed=False, policy=POLICY):
    job = p.dir.status()["job_id"]
    settle_slurm([p], {p.dir.path: job}, {job: slurm_state}, policy, retry_failed, write)


def _resubmitted(p: Planned, job: str) -> None:
    """What a launch and the next attempt's trainer write: pending, then running."""
    p.dir.set_status("pending", job_id=job)
    p.dir.start_attempt()
    p.action = Action.SUBMIT


def test_node_failure_is_retried_twice_then_fails(tmp_path):
    p = _trial(tmp_path)
    t0 = time.time()
    _settle(p, "NODE_FAIL")
    assert p.action is Action.RETRY
    assert p.note == "SLURM job 5_0 ended NODE_FAIL: node_failure (automatic retry 1 of 2)"
    st = p.dir.status()
    assert st["state"] == "failed" and st["cause"] == "node_failure" and st["auto_retries"] == 1
    assert t0 + 60 <= st["retry_after"] <= time.time() + 60
    (rec,) = st["attempt_log"]
    assert rec == {**rec, "job_id": "5_0", "cause": "node_failure", "source": "slurm"}
    assert rec["retried"] is True
    # a launch that stopped before submitting it: the next one retries it, not counted twice
    p.action = Action.SKIP_FAILED
    _settle(p, "NODE_FAIL")
    assert p.action is Action.RETRY and p.dir.status()["auto_retries"] == 1
    # the second attempt dies the same way: retry 2, after twice the backoff
    _resubmitted(p, "6_0")
    _settle(p, "NODE_FAIL")
    assert p.action is Action.RETRY and p.note.endswith("(automatic retry 2 of 2)")
    assert p.dir.status()["retry_after"] >= time.time() + 119
    # the third: the retries are spent, the trial fails (only --retry-failed reruns it)
    _resubmitted(p, "7_0")
    _settle(p, "PREEMPTED")
    assert p.action is Action.SKIP_FAILED
    assert p.note == "SLURM job 7_0 ended PREEMPTED: preemption (2 automatic retries spent)"
    st = p.dir.status()
    assert st["cause"] == "preemption" and st["auto_retries"] == 2
    assert [r["cause"] for r in st["attempt_log"]] == ["node_failure"] * 2 + ["preemption"]
    assert [r["attempt"] for r in st["attempt_log"]] == [1, 2, 3]
    _settle(p, "PREEMPTED", retry_failed=frozenset({"preemption"}))
    assert p.action is Action.RETRY


@pytest.mark.parametrize(
    ("slurm", "cause"), [("OUT_OF_MEMORY", "out_of_memory"), ("FAILED", "bug")]
)
def test_a_job_killed_without_a_word_fails_with_slurms_cause(tmp_path, slurm, cause):
    p = _trial(tmp_path)
    _settle(p, slurm)
    assert p.action is Action.SKIP_FAILED and p.note.endswith(f": {cause}")
    st = p.dir.status()
    assert st["state"] == "failed" and st["cause"] == cause and "auto_retries" not in st
    assert st["error"] == f"SLURM job 5_0 ended {slurm}: {cause}"
    for wanted, action in (
        (frozenset({cause}), Action.RETRY),
        (frozenset({"x"}), Action.SKIP_FAILED),
        (True, Action.RETRY),
    ):
        _settle(p, slurm, retry_failed=wanted)
        assert p.action is action


def test_the_trainers_cause_stands_when_slurm_says_failed(tmp_path):
    p = _trial(tmp_path, state="failed", cause="data_error", error="DataError: image not found")
    before = p.dir.status_path.read_bytes()
    _settle(p, "FAILED")
    assert p.action is Action.SKIP_FAILED and p.note.endswith(": data_error")
    assert p.dir.status_path.read_bytes() == before  # nothing new to record
    # ...but an OOM kill that SLURM saw wins over what the trainer caught on the way down
    _settle(p, "OUT_OF_MEMORY")
    assert p.dir.status()["cause"] == "out_of_memory"
    assert p.dir.status()["error"] == "DataError: image not found"


def test_cancelled_and_time_limit_resume(tmp_path):
    for name, slurm, cause in (
        ("a", "CANCELLED by 0", "cancelled"),
        ("b", "TIMEOUT", "time_limit"),
    ):
        p = _trial(tmp_path, name=name, state="failed", cause="bug")
        _settle(p, slurm)
        assert p.action is Action.SUBMIT and p.note.endswith(f": {cause}")
        st = p.dir.status()
        assert st["state"] == "interrupted" and st["cause"] == cause


def test_an_interrupted_trial_whose_job_then_failed_is_left_alone(tmp_path):
    p = _trial(tmp_path, state="interrupted")
    before = p.dir.status_path.read_bytes()
    _settle(p, "FAILED")
    assert p.action is Action.SUBMIT and p.dir.status_path.read_bytes() == before


def test_status_and_dry_run_write_nothing(tmp_path):
    p = _trial(tmp_path)
    before = p.dir.status_path.read_bytes()
    _settle(p, "NODE_FAIL", write=False)
    assert p.action is Action.RETRY and p.note.endswith("(automatic retry 1 of 2)")
    _settle(p, "OUT_OF_MEMORY", write=False)
    assert p.action is Action.SKIP_FAILED
    assert p.dir.status_path.read_bytes() == before


def test_live_and_finished_jobs_are_not_touched(tmp_path):
    for i, slurm in enumerate(("RUNNING", "PENDING", "REQUEUED", "COMPLETED", "unknown")):
        p = _trial(tmp_path, name=f"t{i}")
        before = p.dir.status_path.read_bytes()
        _settle(p, slurm)
        assert p.action is Action.SUBMIT and p.dir.status_path.read_bytes() == before


def test_no_retries_when_the_profile_says_none(tmp_path):
    p = _trial(tmp_path)
    _settle(p, "NODE_FAIL", policy=RetryPolicy(0, 60))
    assert p.action is Action.SKIP_FAILED and p.dir.status()["cause"] == "node_failure"


def test_backoff_doubles_and_retries_wait_in_their_own_array(tmp_path):
    assert [POLICY.delay_s(n) for n in (1, 2, 3)] == [60, 120, 240]
    retried = _trial(tmp_path, name="r")
    _settle(retried, "NODE_FAIL")
    fresh = _trial(tmp_path, name="f")
    fresh.action = Action.SUBMIT
    groups = by_delay([retried, fresh])
    assert [d for d, _ in groups][0] == 0 and 58 <= groups[1][0] <= 60
    assert [[p.dir.trial_id for p in ps] for _, ps in groups] == [["f"], ["r"]]
