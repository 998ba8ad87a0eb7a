"""A grid's size before its expansion (`bilma.sweep.size`) and the launcher's --max-trials."""

from __future__ import annotations

import io

import pytest
import yaml
from support.paths import REPO

from bilma.errors import GridTooLarge
from bilma.sweep import cli
from bilma.sweep.expand import expand, load_grid
from bilma.sweep.size import check_size, grid_size


def write(tmp_path, name: str, **body) -> str:
    grid = {"study": name, "base": str(REPO / "configs" / "synth_tiny.yaml"), **body}
    grid.setdefault("set", {"paths.runs": str(tmp_path / "runs")})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def test_the_count_is_the_product_and_matches_the_expansion(tmp_path):
    path = write(
        tmp_path,
        "small",
        seeds=[0, 1, 2],
        variants={"a": {}, "b": {"loss.mim_weight": 0.5}},
        grid={"mim.mask_ratio": [0.3, 0.5]},
        zip=[{"loss.mlm_weight": [0.5, 1.0], "loss.id_weight": [0.5, 1.0]}],
    )
    grid = load_grid(path)
    size = grid_size(grid)
    assert size.count == 2 * 2 * 2 * 3 == len(expand(grid))
    assert size.line("small") == (
        "grid small: 24 trials (2 variants x 2 mask_ratio values x "
        "2 zipped (mlm_weight, id_weight) x 3 seeds)"
    )


def test_exclude_rules_make_the_count_an_upper_bound(tmp_path):
    path = write(
        tmp_path,
        "ex",
        variants={"a": {}, "b": {"loss.mim_weight": 0.5}},
        grid={"mim.mask_ratio": [0.3, 0.5]},
        exclude=[{"variant": "a", "mask_ratio": 0.5}],
    )
    grid = load_grid(path)
    assert len(expand(grid)) == 3
    assert grid_size(grid).line("ex") == (
        "grid ex: at most 4 trials (2 variants x 2 mask_ratio values x 1 seed)"
    )


def huge(tmp_path) -> str:
    """10 variants x 100 mask ratios x 100 seeds = 100,000 trials."""
    return write(
        tmp_path,
        "huge",
        seeds=list(range(100)),
        variants={f"v{i}": {"loss.mim_weight": i / 10} for i in range(10)},
        grid={"mim.mask_ratio": [round(0.05 + i * 0.009, 3) for i in range(100)]},
    )


def test_a_grid_of_100000_trials_is_counted_and_refused_before_expansion(
    tmp_path, monkeypatch, capsys
):
    def no_expansion(grid):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr("bilma.sweep.expand.expand_report", no_expansion)
    code = cli.main(["--grid", huge(tmp_path), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == "grid huge: 100,000 trials (10 variants x 100 mask_ratio values x 100 seeds)\n"
    assert err == (
        "error: grid huge: 100,000 trials is above --max-trials 500; add --yes to go on "
        "(or --max-trials 100000), or make the grid smaller\n"
    )
    assert not (tmp_path / "runs").exists()


def test_max_trials_and_yes_let_a_launch_go_on(tmp_path, capsys):
    path = write(tmp_path, "six", seeds=[0, 1, 2], variants={"a": {}, "b": {"optim.lr": 0.002}})
    assert cli.main(["--grid", path, "--dry-run", "--max-trials", "5"]) == 2
    assert "6 trials is above --max-trials 5" in capsys.readouterr().err
    for extra in (["--max-trials", "5", "--yes"], ["--max-trials", "6"]):
        assert cli.main(["--grid", path, "--dry-run", *extra]) == 0
        assert "six: 6 trials (dry run" in capsys.readouterr().out


def test_the_status_of_a_large_study_needs_no_yes(tmp_path, capsys):
    """--status only reads: a study launched with --yes is looked at without it."""
    path = write(tmp_path, "six", seeds=[0, 1, 2], variants={"a": {}, "b": {"optim.lr": 0.002}})
    assert cli.main(["--grid", path, "--status", "--max-trials", "5"]) == 0
    out, err = capsys.readouterr()
    assert "above --max-trials" not in err and out.count(" new ") == 6


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _NoInput(io.StringIO):
    def readline(self, *args) -> str:
        raise AssertionError("asked without a terminal")


@pytest.mark.parametrize(("answer", "goes_on"), [("y\n", True), ("yes\n", True), ("\n", False)])
def test_a_terminal_is_asked(answer, goes_on):
    size = grid_size_of(600)
    out = io.StringIO()
    if goes_on:
        check_size(size, "s", 500, yes=False, stdin=_Terminal(answer), out=out)
    else:
        with pytest.raises(GridTooLarge):
            check_size(size, "s", 500, yes=False, stdin=_Terminal(answer), out=out)
    assert out.getvalue() == "600 trials is above --max-trials 500; go on? [y/N] "


def test_without_a_terminal_nothing_is_asked():
    with pytest.raises(GridTooLarge, match="add --yes"):
        check_size(grid_size_of(600), "s", 500, yes=False, stdin=_NoInput(), out=io.StringIO())
    check_size(grid_size_of(600), "s", 500, yes=True, stdin=_NoInput())
    check_size(grid_size_of(500), "s", 500, yes=False, stdin=_NoInput())


def grid_size_of(n: int):
    from bilma.sweep.size import Size

    return Size(n, [f"{n} seeds"], False)
