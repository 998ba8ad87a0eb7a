"""Reuse across studies (`bilma.sweep.reuse`): a trial finished under one study is recorded,
not retrained, when a second study under the same runs root plans the same trial id.

The end-to-end test trains a tiny grid as study A with the debug backend, then launches the
same grid as study B; the unit tests write trial directories by hand (no process started).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from support.tiny import tiny_grid

from bilma.analysis import make_tables
from bilma.analysis.records import load_dirs
from bilma.config import load_config, trial_id
from bilma.runs.reuse import reused_from
from bilma.runs.trial_dir import TrialDir
from bilma.sweep import cli
from bilma.sweep.expand import Trial
from bilma.sweep.plan import Action, Planned, plan, summary
from bilma.sweep.reuse import apply_reuse, plan_reuse
from bilma.tracking.sync import sync

ALIVE = os.getpid()

# ----------------------------------------------------------------------------- end to end


def write_grid(tmp_path: Path, root: Path, study: str) -> Path:
    return tiny_grid(tmp_path, root, [1], study=study, name=f"{study}.yaml")


def files_state(study_dir: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file of every trial of a study (through no link)."""
    return {
        str(p.relative_to(study_dir)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(study_dir.rglob("*"))
        if p.is_file() and not p.is_symlink() and ".claim" not in p.name
    }


@pytest.mark.slow
def test_second_study_reuses_finished_trials_without_training(synth_small, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert (
        cli.main(["--grid", str(write_grid(tmp_path, synth_small, "A")), "--backend", "debug"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("== ") == 2  # both trials trained in A
    a_files = files_state(runs / "A")
    a_ids = sorted(p.parent.name for p in (runs / "A").glob("*/result.json"))
    assert len(a_ids) == 2

    grid_b = str(write_grid(tmp_path, synth_small, "B"))
    assert cli.main(["--grid", grid_b, "--backend", "debug", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 trials reused from study A" in out and "0 to start" in out
    assert not (runs / "B").exists()  # a dry run writes nothing

    assert cli.main(["--grid", grid_b, "--backend", "debug"]) == 0
    out = capsys.readouterr().out
    assert "== " not in out  # no trial ran: the debug backend prints one line per trial it runs
    assert "2 trials reused from study A" in out
    assert files_state(runs / "A") == a_files  # A untouched: no train.log, metric or ckpt written

    for tid in a_ids:
        a, b = TrialDir(runs / "A" / tid), TrialDir(runs / "B" / tid)
        ra, rb = a.read_result(), b.read_result()
        assert rb["metrics"] == ra["metrics"] and rb["study"] == "B" and rb["reused_from"] == "A"
        assert b.status()["state"] == "done" and b.status()["attempts"] == 0
        assert reused_from(b) == "A" and not b.log_path.exists()
        assert b.ckpt_dir.is_symlink() and b.best_ckpt.resolve() == a.best_ckpt.resolve()
        assert b.read_metrics() == a.read_metrics()
        assert b.read_launch().study == "B" and b.read_config().tracking.study == "B"

    # Both tables list the trials, with the same numbers.
    studies = load_dirs(runs, ["A", "B"])
    by_study = {
        s: {r.trial_id: (r.variant_base, r.metrics) for r in rs} for s, rs in studies.items()
    }
    assert by_study["A"] == by_study["B"] and len(by_study["A"]) == 2
    assert all(r.finished for rs in studies.values() for r in rs)
    tables = {}
    for study in ("A", "B"):
        assert make_tables.main(["--runs", str(runs), "--study", study]) == 0
        tables[study] = capsys.readouterr().out
    assert tables["A"].startswith("### A:") and tables["B"].startswith("### B:")
    assert tables["A"].split("\n", 1)[1] == tables["B"].split("\n", 1)[1]  # all but the title
    assert "IRRA" in tables["B"] and "BiLMa" in tables["B"]

    # MLflow: B's experiment holds a finished run per trial, tagged with the study that trained it.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("B")
    trial_runs = [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"
    ]
    assert sorted(r.data.tags["trial_id"] for r in trial_runs) == a_ids
    assert {r.data.tags["reused_from"] for r in trial_runs} == {"A"}
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    a_r1 = {tid: TrialDir(runs / "A" / tid).read_result()["metrics"]["R1"] for tid in a_ids}
    assert {r.data.tags["trial_id"]: r.data.metrics["test/R1"] for r in trial_runs} == a_r1

    # Relaunching either study runs nothing; --status says where B's results come from.
    for grid in (str(tmp_path / "A.yaml"), grid_b):
        assert cli.main(["--grid", grid, "--backend", "debug"]) == 0
        assert "nothing to submit" in capsys.readouterr().out
    assert cli.main(["--grid", grid_b, "--status"]) == 0
    assert capsys.readouterr().out.count("done (reused from A)") == 2
    assert files_state(runs / "A") == a_files

    # A third study reuses A's (the trials that trained), or trains with --no-reuse.
    write_grid(tmp_path, synth_small, "C")
    grid_c = str(tmp_path / "C.yaml")
    assert cli.main(["--grid", grid_c, "--dry-run"]) == 0
    assert "2 trials reused from study A" in capsys.readouterr().out
    assert cli.main(["--grid", grid_c, "--dry-run", "--no-reuse"]) == 0
    out = capsys.readouterr().out
    assert "2 to start" in out and "reused" not in out

    # `bilma sync` into a new store rebuilds the same (the record is in the directories).
    new = f"sqlite:///{tmp_path}/rebuilt.db"
    assert sync(runs, new)["trials"] == 4
    client = mlflow.MlflowClient(tracking_uri=new)
    exp = client.get_experiment_by_name("B")
    rebuilt = [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"
    ]
    assert {r.data.tags["trial_id"]: r.data.tags["reused_from"] for r in rebuilt} == dict.fromkeys(
        a_ids, "A"
    )
    assert {r.data.tags["trial_id"]: r.data.metrics["test/R1"] for r in rebuilt} == a_r1


# ----------------------------------------------------------------------------- by hand


def trial(tmp_path: Path, study: str, seed: int = 1) -> Trial:
    cfg = load_config(None, [f"paths.runs={tmp_path / 'runs'}", f"tracking.study={study}",
                             f"train.seed={seed}"])  # fmt: skip
    return Trial(study, "base", seed, {}, cfg, trial_id(cfg), {}, "base", 0)


def finished(t: Trial, r1: float = 42.0, **status) -> TrialDir:
    """A trained trial directory of `t` (result, metrics, a checkpoint)."""
    d = TrialDir.for_config(t.config)
    d.init(t.config)
    d.append_metrics({"split": "val", "epoch": 1, "R1": r1})
    d.last_ckpt.write_bytes(b"weights")
    d.set_status("done", started=1.0, **status)
    d.write_result({"study": t.study, "metrics": {"R1": r1, "mAP": 1.0}, "epochs": 1})
    return d


def planned(tmp_path: Path, study: str) -> list[Planned]:
    p = plan([trial(tmp_path, study)])
    assert p[0].action is Action.SUBMIT
    return p


def test_nothing_to_reuse_leaves_the_plan(tmp_path):
    p = planned(tmp_path, "B")
    plan_reuse(p)
    assert p[0].action is Action.SUBMIT and "reused" not in summary(p)


def test_a_trial_running_in_another_study_is_not_started_twice(tmp_path):
    a = TrialDir.for_config(trial(tmp_path, "A").config)
    a.init(trial(tmp_path, "A").config)
    a.set_status("running", pid=ALIVE, host=os.uname().nodename)
    p = planned(tmp_path, "B")
    plan_reuse(p)
    assert p[0].action is Action.SKIP_ELSEWHERE and not p[0].action.runs()
    assert p[0].note.startswith("in study A (pid") and "relaunch after it ends" in p[0].note
    assert "1 trial running in study A" in summary(p)
    assert apply_reuse(None, p) == [] and not p[0].dir.path.exists()  # nothing written


@pytest.mark.parametrize("state", ["stopped", "failed", "interrupted"])
def test_only_a_finished_trial_is_reused(tmp_path, state):
    a = TrialDir.for_config(trial(tmp_path, "A").config)
    a.init(trial(tmp_path, "A").config)
    a.set_status(state)
    p = planned(tmp_path, "B")
    plan_reuse(p)
    assert p[0].action is Action.SUBMIT


def test_no_reuse_trains_it(tmp_path):
    finished(trial(tmp_path, "A"))
    p = planned(tmp_path, "B")
    plan_reuse(p, enabled=False)
    assert p[0].action is Action.SUBMIT


def test_a_reuse_of_a_reuse_names_the_study_that_trained_it(tmp_path):
    grid = type("G", (), {"path": Path("g.yaml")})()
    a = finished(trial(tmp_path, "A"), r1=33.0)
    for study in ("B", "C"):
        p = planned(tmp_path, study)
        plan_reuse(p)
        assert p[0].action is Action.REUSE and p[0].note == "from study A"
        assert apply_reuse(grid, p) == p
    c = TrialDir(tmp_path / "runs" / "C" / a.trial_id)
    assert c.read_result()["reused_from"] == "A" and c.read_result()["metrics"]["R1"] == 33.0
    # A's folder gone: C's copy still reuses, naming A; its checkpoint link is left out.
    import shutil

    shutil.rmtree(a.path)
    p = planned(tmp_path, "A")
    plan_reuse(p)
    assert p[0].action is Action.REUSE and p[0].note in ("from study B", "from study C")
    apply_reuse(grid, p)
    again = TrialDir(a.path)
    assert again.read_result()["reused_from"] == "A" and not again.ckpt_dir.is_symlink()


def test_a_reused_trial_rerun_by_hand_loses_its_checkpoint_link_first(tmp_path):
    grid = type("G", (), {"path": Path("g.yaml")})()
    a = finished(trial(tmp_path, "A"))
    p = planned(tmp_path, "B")
    plan_reuse(p)
    apply_reuse(grid, p)
    b = p[0].dir
    b.result_path.unlink()  # the user wants it trained in B
    p = plan([p[0].trial])
    assert p[0].action is Action.RESUME  # through the link: it would train into A's ckpt/
    plan_reuse(p)
    assert p[0].action is Action.RESUME  # only new trials are reused
    apply_reuse(grid, p)
    assert p[0].action is Action.SUBMIT and not b.ckpt_dir.exists()
    assert a.last_ckpt.read_bytes() == b"weights"
