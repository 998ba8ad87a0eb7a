"""The one Backend protocol: every backend of `--backend` implements it, and `check` refuses a
launch before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bilma.errors import BilmaError, ProfileError
from bilma.sweep import cli
from bilma.sweep.backends.base import Backend
from bilma.sweep.expand import expand, load_grid


def args_for(backend: str, *more: str):
    return cli.build_parser().parse_args(["--grid", "smoke", "--backend", backend, *more])


def smoke(tmp_path: Path):
    grid = load_grid("smoke", [f"paths.runs={tmp_path / 'runs'}", "tracking.enabled=false"])
    return grid, expand(grid)


@pytest.mark.parametrize("name", list(cli.BACKENDS))
def test_every_backend_implements_the_protocol(name):
    if name == "ray":
        pytest.importorskip("ray")
    backend = cli.BACKENDS[name](args_for(name))
    assert isinstance(backend, Backend) and backend.name == name
    for method in ("check", "submit", "status", "reconcile", "dry_run"):
        assert callable(getattr(backend, method)), method
    assert backend.status([]) == {}  # nothing ran: nothing to say
    assert isinstance(backend.waits, bool)


def test_the_help_lists_the_backends_in_their_order():
    assert "--backend {local,slurm,ray,debug}" in cli.build_parser().format_help()


@pytest.mark.parametrize("name", ["local", "debug"])
def test_local_and_debug_refuse_nothing_up_front(name, tmp_path):
    cli.BACKENDS[name](args_for(name)).check(*smoke(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_slurm_check_without_sbatch_raises_before_any_folder_is_made(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    grid, trials = smoke(tmp_path)
    backend = cli.BACKENDS["slurm"](args_for("slurm", "--profile", "local-slurm"))
    with pytest.raises(BilmaError) as e:
        backend.check(grid, trials)
    assert str(e.value) == (
        "--backend slurm: sbatch is not on this machine (SLURM is not installed or not on "
        "PATH); run on the cluster's login node, or use --backend local"
    )
    assert e.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]
    # --status and --dry-run need no sbatch; the profile is checked all the same.
    cli.BACKENDS["slurm"](args_for("slurm", "--profile", "local-slurm", "--dry-run")).check(
        grid, trials
    )
    with pytest.raises(ProfileError, match="nope"):
        cli.BACKENDS["slurm"](args_for("slurm", "--profile", "nope", "--status")).check(
            grid, trials
        )
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]
