"""The command line end to end: synth then data-info, config, bad input messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support.paths import REPO


def bilma(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "bilma", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_synth_then_data_info_json(tmp_path):
    out = tmp_path / "synth"
    made = bilma("synth", "--out", str(out), "--ids", "200", "--height", "128", "--width", "64")
    assert made.returncode == 0, made.stderr
    info = bilma("data-info", "--dataset", "cuhk-pedes", "--root", str(out), "--json")
    assert info.returncode == 0, info.stderr
    # 200 identities: 10% val, 10% test, 4 images each, 2 captions per image
    assert json.loads(info.stdout) == {
        "train": {"ids": 160, "images": 640, "captions": 1280},
        "val": {"ids": 20, "images": 80, "captions": 160},
        "test": {"ids": 20, "images": 80, "captions": 160},
    }


def test_data_info_missing_annotations_is_one_line(tmp_path):
    res = bilma("data-info", "--dataset", "rstpreid", "--root", str(tmp_path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_captions.json" in lines[0] and lines[0].startswith("error: ")


def test_config_command_prints_trial_id(tmp_path):
    res = bilma(
        "config",
        "--config",
        "configs/synth_tiny.yaml",
        "train.seed=7",
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert res.returncode == 0, res.stderr
    assert "seed: 7" in res.stdout and "# trial id: " in res.stdout


def test_overrides_are_taken_the_same_way_by_train_and_the_launcher():
    from bilma.commands import build_parser
    from bilma.config.load import merge_overrides
    from bilma.sweep.cli import build_parser as launcher_parser

    for argv in (
        ["train", "--config", "c.yaml", "train.epochs=5", "--set", "eval.every=2"],
        ["train", "--config", "c.yaml", "--set", "train.epochs=5", "--set", "eval.every=2"],
    ):
        args = build_parser().parse_args(argv)
        assert merge_overrides(args) == ["train.epochs=5", "eval.every=2"]
    for argv in (
        ["--grid", "smoke", "train.epochs=5", "--set", "eval.every=2"],
        ["--grid", "smoke", "--set", "train.epochs=5", "eval.every=2"],
    ):
        args = launcher_parser().parse_args(argv)
        assert sorted(merge_overrides(args)) == ["eval.every=2", "train.epochs=5"]


def test_train_refuses_a_study_that_escapes_the_runs_folder(tmp_path):
    # `bilma train` takes tracking.study from the config or an override, not from a grid: the
    # same rule as the launcher's, before anything is written (runs/<study>/<trial>).
    runs = tmp_path / "runs"
    for study, problem in [
        ("../escaped", "must be a simple name"),
        (str(tmp_path / "abs"), "must be a simple name"),
        ("s" * 300, "is 300 characters long; use at most 100"),
    ]:
        res = bilma(
            "train",
            "--config",
            "configs/synth_tiny.yaml",
            f"tracking.study={study}",
            f"paths.runs={runs}",
            "tracking.enabled=false",
            cwd=REPO,
        )
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and "tracking.study = " in res.stderr, res.stderr
        assert problem in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created, in or out
