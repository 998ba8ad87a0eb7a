"""Every user YAML (config, grid, profile) is read with a bound: an alias bomb in the value of a
valid key, or a document nested thousands deep, is one line naming the file and line, at once;
an error message never prints an unbounded value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bilma.config import ConfigError, load_config
from bilma.config.yamlfile import MAX_YAML_VALUES, safe_load_unique
from bilma.errors import shown
from bilma.sweep.backends.profiles import ProfileError, load_profile
from bilma.sweep.gridfile import GridError, load_grid

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def bomb(levels: int = 9, anchor: str = "a") -> str:
    """A flow list whose last element expands to 9**levels strings ("billion laughs")."""
    items = [f"&{anchor}0 [" + ", ".join(['"lol"'] * 9) + "]"]
    for i in range(1, levels):
        items.append(f"&{anchor}{i} [" + ", ".join([f"*{anchor}{i - 1}"] * 9) + "]")
    return "[" + ", ".join(items) + "]"


def refused_quickly(call, error, *match: str) -> str:
    start = time.monotonic()
    with pytest.raises(error) as e:
        call()
    # The expansion is never built: a 10^9-value document is refused as fast as a typo.
    assert time.monotonic() - start < 5
    message = str(e.value)
    assert "\n" not in message and len(message) < 400
    for m in match:
        assert m in message
    return message


def test_an_alias_bomb_in_a_config_value_is_refused_with_its_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"base: {CONFIGS / 'synth_tiny.yaml'}\ntrain:\n  epochs: {bomb()}\n")
    refused_quickly(
        lambda: load_config(path),
        ConfigError,
        str(path),
        "line 3:",
        f"expand to more than {MAX_YAML_VALUES:,} values",
    )


def test_an_alias_bomb_in_a_grid_seeds_list_is_refused(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(f"base: {CONFIGS / 'synth_tiny.yaml'}\nseeds: {bomb()}\n")
    refused_quickly(lambda: load_grid(path), GridError, str(path), "line 2:", "aliases")


def test_an_alias_bomb_in_a_profile_partition_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"partition: {bomb()}\ntime_min: 60\n")
    refused_quickly(lambda: load_profile(path), ProfileError, str(path), "line 1:", "aliases")


def test_a_document_nested_thousands_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("train:\n  epochs: " + "[" * 20_000 + "]" * 20_000 + "\n")
    refused_quickly(lambda: load_config(path), ConfigError, f"{path}: invalid YAML: nested too")


def test_aliases_that_stay_small_still_load():
    # Aliases are YAML: a shared list used a few times is fine.
    tree = safe_load_unique("a: &x [1, 2, 3]\nb: *x\nc: [*x, *x]\n")
    assert tree == {"a": [1, 2, 3], "b": [1, 2, 3], "c": [[1, 2, 3], [1, 2, 3]]}
    # ...and so is a big document written out (the bound counts values, not aliases).
    big = safe_load_unique("[" + ", ".join(["1"] * (MAX_YAML_VALUES - 10)) + "]")
    assert len(big) == MAX_YAML_VALUES - 10


def test_a_long_wrong_value_is_shown_cut_in_the_error(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("train:\n  epochs: [" + ", ".join(str(i) for i in range(50_000)) + "]\n")
    message = refused_quickly(lambda: load_config(path), ConfigError, "train.epochs = [0, 1")
    assert "49999" not in message and "..." in message


def test_shown_bounds_strings_lists_and_nesting():
    assert shown("x" * 10_000).count("x") < 80
    assert len(shown(list(range(10_000)))) < 60
    assert shown([[[[[1]]]]]) == "[[[[...]]]]"
    assert shown(0.5) == "0.5" and shown("gpu") == "'gpu'"
