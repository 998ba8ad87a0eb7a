"""`python sweeps/parse.py`: parse shards as local submitit jobs, or as one SLURM job array."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.parse_fixtures import make_cuhk, make_parser

from bilma.parse.run import dataset_images
from bilma.sweep.parse_shards import main, slurm_parameters


def maps(root: Path) -> set[str]:
    return {str(p.relative_to(root / "parsing" / "atr18")) for p in root.rglob("atr18/**/*.png")}


def expected(root: Path) -> set[str]:
    return {str(Path(p).with_suffix(".png")) for p in dataset_images("cuhk-pedes", root)}


def test_local_shards_write_every_map_once(tmp_path, capsys):
    root, model = make_cuhk(tmp_path), make_parser(tmp_path / "parser")
    args = ["--dataset", "cuhk-pedes", "--root", str(root), "--model", str(model)]
    assert main([*args, "--shards", "2", "--gpus", "0", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "parsed 5 (0 already done)" in out and "parsed 4 (0 already done)" in out
    assert "2 of 2 shards done" in out and maps(root) == expected(root)
    assert len(list((root / "parsing" / "jobs").glob("local-*"))) == 2


def test_dry_run_shows_commands_and_one_task_per_shard(tmp_path, capsys):
    args = ["--dataset", "rstpreid", "--root", str(tmp_path), "--model", str(tmp_path / "m")]
    assert main([*args, "--shards", "3", "--backend", "slurm", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("--shard ")[1] for ln in lines[:3]] == ["0/3", "1/3", "2/3"]
    assert "SLURM job array of 3 tasks, profile default" in lines[3]
    params, _ = slurm_parameters("default")
    assert params["ntasks_per_node"] == 1 and params["gpus_per_node"] == 1
    assert params["partition"] == "gpu"  # the rest is the profile's own
    assert main([*args, "--shards", "2", "--backend", "slurm", "--profile", "nope"]) == 2
    assert "no profile 'nope'" in capsys.readouterr().err


def _slurm_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


@pytest.mark.slow
@pytest.mark.skipif(not _slurm_answers(), reason="no SLURM cluster answering on this machine")
def test_slurm_array_writes_every_map(tmp_path, capsys):
    root, model = make_cuhk(tmp_path), make_parser(tmp_path / "parser")
    args = ["--dataset", "cuhk-pedes", "--root", str(root), "--model", str(model)]
    assert main([*args, "--shards", "2", "--backend", "slurm", "--profile", "local-slurm"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 parse shards as job array" in out
    deadline = time.time() + 300
    while maps(root) != expected(root) and time.time() < deadline:
        time.sleep(2)
    assert maps(root) == expected(root)
    (script,) = (root / "parsing" / "jobs").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-1%2" in script.read_text()
