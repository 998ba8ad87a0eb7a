"""The run record's vocabulary: one home, used by every reader and writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

from support.paths import REPO

from bilma.runs import schema
from bilma.runs.schema import TrialState
from bilma.runs.trial_dir import TrialDir


def test_states_and_finished():
    assert [s.value for s in TrialState] == [
        "pending",
        "running",
        "done",
        "failed",
        "interrupted",
        "stopped",
    ]
    assert {s for s in TrialState if s.is_finished()} == {TrialState.DONE, TrialState.STOPPED}
    assert (
        TrialState.DONE == "done" and json.dumps({"state": TrialState.DONE}) == '{"state": "done"}'
    )
    assert TrialState.parse("stopped") is TrialState.STOPPED and TrialState.parse("bogus") is None
    assert set(schema.MLFLOW_STATUS) == set(TrialState)


def test_trial_dir_state_is_the_record_s(tmp_path: Path):
    trial = TrialDir(tmp_path / "t")
    assert trial.state() is None and not trial.is_finished()
    trial.set_status(TrialState.STOPPED, stopped_epoch=2)
    raw = json.loads((trial.path / schema.STATUS_FILE).read_text())
    assert raw["state"] == "stopped" and trial.state() is TrialState.STOPPED
    assert trial.is_finished() and not trial.is_done()
    trial.set_status("running")  # a plain string of the vocabulary is accepted
    assert trial.state() is TrialState.RUNNING and not trial.is_finished()
    trial.write_result({"metrics": {}})
    assert trial.state() is TrialState.DONE  # result.json: done, whatever status.json says


# A state spelt as a string where it is compared or written: `state == "done"`,
# `set_status("failed"`, `.get("state") in ("done", "stopped")`.
_STATES = "|".join(s.value for s in TrialState)
_LITERAL = re.compile(
    rf"""(state\w*\s*(==|!=|in|is)\s*\(?\s*["'](?:{_STATES})["'])"""
    rf"""|(set_status\(\s*["'](?:{_STATES})["'])"""
    rf"""|(close\(\s*["'](?:{_STATES})["'])"""
)


def test_no_module_spells_a_state_outside_the_schema():
    found = []
    for path in sorted((REPO / "bilma").rglob("*.py")):
        if path.name == "schema.py" and path.parent.name == "runs":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _LITERAL.search(code):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "use bilma.runs.schema.TrialState:\n" + "\n".join(found)


def test_no_module_spells_a_run_record_file_outside_the_schema():
    names = [
        schema.CONFIG_FILE,
        schema.STATUS_FILE,
        schema.RESULT_FILE,
        schema.LAUNCH_FILE,
        schema.MLFLOW_FILE,
        schema.METRICS_FILE,
    ]
    pattern = re.compile("|".join(rf"""["']{re.escape(n)}["']""" for n in names))
    found = [
        f"{p.relative_to(REPO)}:{n}"
        for p in sorted((REPO / "bilma").rglob("*.py"))
        if p.name != "schema.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line.split("#", 1)[0])
    ]
    assert not found, found
