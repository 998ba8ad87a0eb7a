"""Preflight: a launch whose trials would fail on their inputs is refused before anything is
created or submitted, with one line per distinct problem naming the key, the value and the fix.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.data_fixtures import cuhk_entries, make_cuhk
from support.paths import REPO
from support.slurm import run_launch
from support.tiny import SYNTH_OVERRIDES

from bilma.config import load_config
from bilma.data.parsing import parse_map_path
from bilma.errors import PreflightError
from bilma.sweep.preflight import SAMPLE, preflight, raise_problems

BASE = REPO / "configs" / "cuhk_pedes.yaml"


def cfg(**overrides):
    """The CUHK-PEDES preset at a batch the fixture's 7 training pairs can fill."""
    overrides = {"train.batch_size": 4, **overrides}
    return load_config(BASE, [f"{k}={v}" for k, v in overrides.items()])


def launcher(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_launch(*args, cwd=cwd, timeout=120)


def clip_folder(tmp_path: Path) -> Path:
    """A folder that passes the preflight's look at model.pretrained (config.json present)."""
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_the_literal_ablation_command_without_cuhk_pedes_creates_nothing(tmp_path):
    proc = launcher("--grid", "ablation.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    root = [ln for ln in lines if ln.startswith("data.root=datasets/CUHK-PEDES (9 trials)")]
    assert len(root) == 1, proc.stderr
    assert "--set data.root=" in root[0] and 'README "Datasets"' in root[0]
    assert any(ln.startswith("model.pretrained=") and "hf download" in ln for ln in lines)
    assert "nothing was created or submitted" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == []  # no runs/, no mlflow.db, no job folder


def test_dry_run_prints_the_same_problems_and_fails(tmp_path):
    proc = launcher("--grid", "ablation", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "9 to start" in proc.stdout  # the plan is still shown
    assert "data.root=datasets/CUHK-PEDES (9 trials): no such folder" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_no_preflight_skips_the_checks(tmp_path):
    proc = launcher("--grid", "ablation", "--dry-run", "--no-preflight", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "preflight skipped" in proc.stderr
    assert "data.root=" not in proc.stderr


def test_a_complete_dataset_passes(tmp_path):
    root = make_cuhk(tmp_path)
    c = cfg(**{"data.root": root, "model.pretrained": clip_folder(tmp_path), "mim.target": "pixel"})
    assert preflight([c, c]) == []


def test_each_distinct_value_is_one_line_with_its_trial_count(tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    clip = clip_folder(tmp_path)
    configs = [
        cfg(**{"data.root": r, "model.pretrained": clip, "train.seed": s, "mim.target": "pixel"})
        for r in roots
        for s in (0, 1, 2)
    ]
    problems = preflight(configs)
    assert [(p.key, p.value, p.trials) for p in problems] == [
        ("data.root", str(roots[0]), 3),
        ("data.root", str(roots[1]), 3),
    ]
    with pytest.raises(PreflightError) as e:
        raise_problems(problems)
    assert e.value.exit_code == 2
    assert str(e.value).count("no such folder") == 2


def test_missing_annotation_file_and_image_folder_are_named(tmp_path):
    clip = clip_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (p,) = preflight([cfg(**{"data.root": empty, "model.pretrained": clip})])
    assert p.key == "data.root" and "reid_raw.json" in p.message

    no_images = make_cuhk(tmp_path, images=False)
    (p,) = preflight(
        [cfg(**{"data.root": no_images, "model.pretrained": clip, "mim.target": "pixel"})]
    )
    assert f"no image folder {no_images / 'imgs'}" in p.message


def test_missing_images_are_found_in_the_sample(tmp_path):
    entries = cuhk_entries()
    root = make_cuhk(tmp_path, entries)
    (root / "imgs" / entries[-1]["file_path"]).unlink()  # the last record is always looked at
    c = cfg(**{"data.root": root, "model.pretrained": clip_folder(tmp_path), "mim.target": "pixel"})
    (p,) = preflight([c])
    assert entries[-1]["file_path"] in p.message and "missing under" in p.message


def test_semmim_without_parse_maps_names_the_parse_command(tmp_path):
    entries = cuhk_entries()
    root = make_cuhk(tmp_path, entries)
    clip = clip_folder(tmp_path)
    semantic = cfg(**{"data.root": root, "model.pretrained": clip, "mim.labels": "atr18"})
    (p,) = preflight([semantic])
    assert (p.key, p.value) == ("mim.labels", "atr18")
    assert f"python -m bilma parse --dataset cuhk-pedes --root {root}" in p.message
    assert "--labels atr18" in p.message
    # no MIM loss, or pixel targets: no parse maps needed
    assert (
        preflight([cfg(**{"data.root": root, "model.pretrained": clip, "loss.mim_weight": 0})])
        == []
    )
    # with the maps of every training image written, it passes
    train = [e for e in entries if e["split"] == "train"]
    assert len(train) <= SAMPLE
    for e in train:
        path = parse_map_path(root / "parsing", "atr18", e["file_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
    assert preflight([semantic]) == []


def test_pretrained_folder_without_config_json(tmp_path):
    root = make_cuhk(tmp_path)
    c = cfg(**{"data.root": root, "model.pretrained": tmp_path / "nope", "mim.target": "pixel"})
    (p,) = preflight([c])
    assert p.key == "model.pretrained" and "config.json" in p.message and "hf download" in p.message


def test_a_synthetic_root_made_with_other_parameters(synth_small):
    base = REPO / "configs" / "synth_tiny.yaml"
    same = load_config(base, [f"data.root={synth_small}", *SYNTH_OVERRIDES])
    assert preflight([same]) == []
    other = load_config(base, [f"data.root={synth_small}", *SYNTH_OVERRIDES, "data.synth_ids=40"])
    (p,) = preflight([other])
    assert p.key == "data.root" and "ids 30 (config: 40)" in p.message
    fresh = load_config(base, [f"data.root={synth_small.parent / 'not-yet'}"])
    assert preflight([fresh]) == []  # generated on first use


def test_a_real_dataset_without_any_tokenizer(tmp_path):
    root = make_cuhk(tmp_path)
    (p,) = preflight(
        [cfg(**{"data.root": root, "model.pretrained": "null", "mim.target": "pixel"})]
    )
    assert (p.key, p.value) == ("model.pretrained", "null")
    assert p.message.startswith("no tokenizer for cuhk-pedes: set model.pretrained")
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "vocab.json").write_text("{}")
    c = cfg(
        **{
            "data.root": root,
            "model.pretrained": "null",
            "data.tokenizer": bad,
            "mim.target": "pixel",
        }
    )
    (p,) = preflight([c])
    assert (p.key, p.message) == (
        "data.tokenizer",
        "no merges.txt in that folder; point data.tokenizer at a CLIP model folder or a "
        "tokenizer made by `python -m bilma synth`",
    )


def test_splits_that_cannot_train_or_rank_are_named(tmp_path):
    root = make_cuhk(tmp_path)
    clip = clip_folder(tmp_path)
    common = {"data.root": root, "model.pretrained": clip, "mim.target": "pixel"}
    (p,) = preflight([cfg(**common, **{"train.batch_size": 64, "train.seed": s}) for s in (0, 1)])
    assert p.line() == (
        f"train.batch_size=64 (2 trials): larger than the 7 training pairs of {root}; set "
        "train.batch_size to at most 7"
    )
    synth = load_config(None, [*SYNTH_OVERRIDES, "data.synth_ids=9", "train.batch_size=4"])
    (p,) = preflight([synth])
    assert p.key == "data.synth_ids" and "the test split has 1 identity" in p.message


def test_a_runs_folder_that_cannot_be_written(tmp_path, read_only):
    root = make_cuhk(tmp_path)
    common = {"data.root": root, "model.pretrained": clip_folder(tmp_path), "mim.target": "pixel"}
    _, view = read_only
    (p,) = preflight([cfg(**common, **{"paths.runs": view / "runs"})])
    assert p.line() == (
        f"paths.runs={view / 'runs'} (1 trial): {view} is not writable (a read-only file "
        "system); point paths.runs at a writable folder (--set paths.runs=<folder>)"
    )
    (tmp_path / "afile").write_text("")
    (p,) = preflight([cfg(**common, **{"paths.runs": tmp_path / "afile" / "runs"})])
    assert p.message.startswith(f"{tmp_path / 'afile'} is a file, not a folder")
    # A synthetic dataset not generated yet is made under data.root: the same check.
    synth = load_config(None, [*SYNTH_OVERRIDES, f"data.root={view / 'synth'}"])
    assert [p.key for p in preflight([synth])] == ["data.root"]
