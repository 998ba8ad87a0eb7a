"""The study's status table (`bilma.sweep.report`): the cause column."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bilma.runs.trial_dir import TrialDir
from bilma.sweep.plan import Action, Planned
from bilma.sweep.report import shown_cause, status_table


@pytest.mark.parametrize(
    ("status", "job", "cause"),
    [
        ({"state": "failed", "cause": "data_error"}, "", "data_error"),
        ({"state": "failed", "cause": "data_error"}, "5_0 FAILED", "data_error"),
        ({"state": "failed", "cause": "bug"}, "5_0 OUT_OF_MEMORY", "out_of_memory"),
        ({"state": "failed"}, "", ""),  # before causes
        ({"state": "running", "cause": "bug"}, "5_0 RUNNING", ""),  # an earlier attempt's
        ({"state": "running"}, "5_0 NODE_FAIL", "node_failure"),  # died without a word
        ({"state": "pending"}, "5_0 FAILED", "bug"),
        ({"state": "interrupted"}, "5_0 CANCELLED by 0", "cancelled"),
        ({"state": "interrupted", "cause": "time_limit"}, "5_0 FAILED", "time_limit"),
        ({"state": "done", "cause": "node_failure"}, "5_0 COMPLETED", ""),
        ({"state": "stopped"}, "", ""),
    ],
)
def test_shown_cause(status, job, cause):
    assert shown_cause(status, job) == cause


def test_status_table_has_a_cause_column(tmp_path):
    d = TrialDir(tmp_path / "s" / "abc")
    d.path.mkdir(parents=True)
    d.set_status("pending", backend="slurm", job_id="5_0")
    d.start_attempt()  # then the node failed: status.json still says running
    p = Planned(SimpleNamespace(variant="IRRA", seed=1), d, Action.SUBMIT)  # type: ignore[arg-type]
    lines = status_table([p], {d.path: "5_0 NODE_FAIL"}, "slurm job").splitlines()
    assert lines[0].split()[:7] == ["variant", "seed", "trial", "state", "slurm", "job", "cause"]
    assert lines[2].split()[:8] == [
        "IRRA",
        "1",
        "abc",
        "running",
        "5_0",
        "NODE_FAIL",
        "node_failure",
        "1",
    ]
