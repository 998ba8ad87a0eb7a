"""The grid's `search:` and `scheduler:` sections: parsing and the errors they give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.paths import REPO

from bilma.sweep.expand import GridError, load_grid
from bilma.sweep.search import Scheduler, Search


def grid_file(tmp_path: Path, **extra) -> Path:
    tree = {
        "study": "s",
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": [0, 1],
        "grid": {"mim.mask_ratio": [0.3, 0.5]},
        **extra,
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_defaults_are_grid_and_fifo(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    assert grid.search == Search("grid", 1, None, {})
    assert grid.scheduler == Scheduler("fifo", 1, 2, None)


def test_random_search_and_asha(tmp_path):
    grid = load_grid(
        grid_file(
            tmp_path,
            search={
                "method": "random",
                "num_samples": 3,
                "seed": 7,
                "space": {
                    "optim.lr": {"loguniform": [1e-4, 1e-2]},
                    "loss": {"mim_weight": {"uniform": [0.0, 1.0]}},  # nested sections work
                    "train.batch_size": {"randint": [8, 32]},
                    "mim.target": {"choice": ["pixel", "semantic"]},
                },
            },
            scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 3, "max_t": 8},
        )
    )
    assert grid.search.method == "random" and grid.search.num_samples == 3
    assert grid.search.seed == 7
    assert grid.search.space == {
        "optim.lr": ("loguniform", [1e-4, 1e-2]),
        "loss.mim_weight": ("uniform", [0.0, 1.0]),
        "train.batch_size": ("randint", [8, 32]),
        "mim.target": ("choice", ["pixel", "semantic"]),
    }
    assert grid.scheduler == Scheduler("asha", 2, 3, 8)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"serch": {}}, "unknown top-level key 'serch'; did you mean 'search'?"),
        (
            {"search": {"method": "randm"}},
            "search.method: unknown method 'randm'; did you mean 'random'?",
        ),
        ({"search": {"metod": "random"}}, "search: unknown key 'metod'; did you mean 'method'?"),
        ({"search": {"method": "random"}}, "search: method random needs a space"),
        ({"search": {"num_samples": 4}}, "search: num_samples needs method random or optuna"),
        (
            {"search": {"method": "random", "space": {"optim.lrr": {"uniform": [0, 1]}}}},
            "search.space: unknown key 'optim.lrr'; did you mean 'optim.lr'?",
        ),
        (
            {"search": {"method": "random", "space": {"mim.mask_ratio": {"uniform": [0, 1]}}}},
            "search.space: mim.mask_ratio is set by the grid itself",
        ),
        (
            {"search": {"method": "random", "space": {"train.seed": {"randint": [0, 9]}}}},
            "search.space: train.seed is set by the grid itself",
        ),
        (
            {"search": {"method": "random", "space": {"optim.lr": {"loguniform": [0, 1]}}}},
            "optim.lr: loguniform needs low > 0, got 0",
        ),
        (
            {"search": {"method": "random", "space": {"optim.lr": {"normal": [0, 1]}}}},
            "optim.lr: unknown distribution 'normal'",
        ),
        (
            {
                "search": {
                    "method": "random",
                    "num_samples": 0,
                    "space": {"optim.lr": {"uniform": [0, 1]}},
                }
            },
            "search.num_samples = 0 must be an integer >= 1",
        ),
        ({"scheduler": {"name": "hyperband"}}, "scheduler.name: unknown scheduler 'hyperband'"),
        ({"scheduler": {"grace_period": 2}}, "scheduler: grace_period only apply to name: asha"),
        ({"scheduler": {"name": "asha", "reduction_factor": 1}}, "reduction_factor = 1 must be"),
        (
            {"scheduler": {"name": "asha", "grace_period": 4, "max_t": 2}},
            "max_t = 2 is below grace_period = 4",
        ),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, extra, message):
    path = grid_file(tmp_path, **extra)
    with pytest.raises(GridError) as e:
        load_grid(path)
    assert message in str(e.value)
    assert "g.yaml" in str(e.value)


def test_space_values_are_checked_before_ray_starts(tmp_path):
    """A bound the trainer's config refuses (a negative rate) stops the launch, with nothing
    written and no Ray started."""
    path = grid_file(
        tmp_path,
        set={"paths.runs": str(tmp_path / "runs")},
        search={"method": "random", "space": {"train.batch_size": {"randint": [-2, 8]}}},
    )
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "launch.py"),
            "--grid",
            str(path),
            "--backend",
            "ray",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "search.space: train.batch_size randint [-2, 8]" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_optuna_missing_says_how_to_fix(tmp_path):
    pytest.importorskip("ray")
    try:
        import optuna  # noqa: F401

        pytest.skip("optuna is installed")
    except ImportError:
        pass
    path = grid_file(
        tmp_path,
        set={"paths.runs": str(tmp_path / "runs")},
        search={"method": "optuna", "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}},
    )
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "launch.py"),
            "--grid",
            str(path),
            "--backend",
            "ray",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "needs the optuna package: pip install optuna" in out.stderr
    assert not (tmp_path / "runs").exists()
