"""Grid files: loading, validation messages, expansion into trials (pure: nothing on disk)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from support.paths import REPO

from bilma import resources
from bilma.config import load_config, trial_id
from bilma.sweep.expand import (
    GRIDS_DIR,
    SECTIONS,
    TOP_KEYS,
    GridError,
    expand,
    expand_report,
    load_grid,
    resolve_grid_path,
)

# A base beside the grid file: small values that differ from the defaults.
BASE = """\
model: {name: tiny, embed_dim: 64, cross_heads: 4, cross_depth: 1}
mim: {depth: 1}
train: {epochs: 7, seed: 5}
"""

ABLATION = """\
study: abl
base: base.yaml
seeds: [0, 1]
set: {train.epochs: 3}
variants:
  "IRRA (SDM+ID+MLM)": {loss.mim_weight: 0}
  "+MIM pixel": {mim.target: pixel}
  "+SemMIM LIP-20": {mim.target: semantic, mim.labels: atr18}
grid:
  mim.mask_ratio: [0.3, 0.5]
zip:
  - {loss.mlm_weight: [0.5, 1.0], loss.sdm_weight: [2, 3]}
"""


def write(tmp_path: Path, text: str, name: str = "x.yaml", base: str | None = BASE) -> Path:
    """Write a grid (and base.yaml beside it) into tmp_path, the current directory in tests."""
    if base is not None:
        (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------------------------- expansion


def test_counts_order_labels_and_values(tmp_path):
    grid = load_grid(write(tmp_path, ABLATION))
    trials = expand(grid)
    assert len(trials) == 3 * 2 * 2 * 2  # variants x grid x zip x seeds

    # Variants in file order, then combinations (last axis fastest), then seeds.
    first = [(t.variant, t.seed) for t in trials[:5]]
    assert first == [
        ("IRRA (SDM+ID+MLM) [mask_ratio=0.3, mlm_weight=0.5, sdm_weight=2.0]", 0),
        ("IRRA (SDM+ID+MLM) [mask_ratio=0.3, mlm_weight=0.5, sdm_weight=2.0]", 1),
        ("IRRA (SDM+ID+MLM) [mask_ratio=0.3, mlm_weight=1.0, sdm_weight=3.0]", 0),
        ("IRRA (SDM+ID+MLM) [mask_ratio=0.3, mlm_weight=1.0, sdm_weight=3.0]", 1),
        ("IRRA (SDM+ID+MLM) [mask_ratio=0.5, mlm_weight=0.5, sdm_weight=2.0]", 0),
    ]
    assert [t.variant.split(" [")[0] for t in trials[::8]] == [
        "IRRA (SDM+ID+MLM)",
        "+MIM pixel",
        "+SemMIM LIP-20",
    ]

    t = trials[-1]  # +SemMIM, mask 0.5, zip row 2, seed 1
    assert t.study == "abl"
    assert t.axes == {"mim.mask_ratio": 0.5, "loss.mlm_weight": 1.0, "loss.sdm_weight": 3.0}
    c = t.config
    assert (c.mim.target, c.mim.labels, c.mim.mask_ratio) == ("semantic", "atr18", 0.5)
    assert (c.loss.mlm_weight, c.loss.sdm_weight, c.loss.mim_weight) == (1.0, 3.0, 1.0)
    assert (c.train.epochs, c.train.seed, c.model.embed_dim) == (3, 1, 64)  # set, seed, base
    assert (c.tracking.study, c.tracking.variant) == ("abl", t.variant)
    assert trials[0].config.loss.mim_weight == 0.0
    assert trials[8].config.mim.target == "pixel"
    # Every override in order: set, variant, axes, then what the grid sets itself.
    assert list(t.overrides) == [
        "train.epochs",
        "mim.target",
        "mim.labels",
        "mim.mask_ratio",
        "loss.mlm_weight",
        "loss.sdm_weight",
        "tracking.study",
        "tracking.variant",
        "train.seed",
    ]
    # The sweep's part of the identity is the trial's (launch.json), not the config's.
    assert (t.variant_base, t.variant_index) == ("+SemMIM LIP-20", 2)
    launch = t.launch("g.yaml", None, {})
    assert (launch.variant_base, launch.variant_index, launch.grid_point) == (
        "+SemMIM LIP-20",
        2,
        t.axes,
    )
    assert not hasattr(c.tracking, "variant_base")
    # The trial's config is exactly load_config(base, overrides).
    assert t.config == load_config(tmp_path / "base.yaml", t.overrides)
    assert t.trial_id == trial_id(t.config)


def test_ids_unique_and_stable(tmp_path):
    path = write(tmp_path, ABLATION)
    a, b = expand(load_grid(path)), expand(load_grid(path))
    ids = [t.trial_id for t in a]
    assert len(set(ids)) == len(ids) == 24
    assert ids == [t.trial_id for t in b]
    assert a[0].trial_id != a[1].trial_id  # seeds differ


def test_no_variants_no_axes_no_seeds_uses_the_config_seed(tmp_path):
    trials = expand(load_grid(write(tmp_path, "study: s\nbase: base.yaml\n")))
    assert [(t.variant, t.seed, t.axes) for t in trials] == [("default", 5, {})]
    assert trials[0].config.train.epochs == 7


def test_dedupe_keeps_the_first(tmp_path):
    text = """\
    study: s
    base: base.yaml
    seeds: [0, 1]
    variants:
      A: {mim.target: pixel}
      B: {mim: {target: pixel}}
      C: {mim.target: none}
    grid:
      data.num_workers: [0, 1]   # not part of the trial id: the two values are one trial
    """
    grid = load_grid(write(tmp_path, text))
    trials, dropped = expand_report(grid)
    assert [(t.variant, t.seed) for t in trials] == [
        ("A [num_workers=0]", 0),
        ("A [num_workers=0]", 1),
        ("C [num_workers=0]", 0),
        ("C [num_workers=0]", 1),
    ]
    assert dropped == 3 * 2 * 2 - 4
    assert expand(grid) == trials


def test_extra_set_wins_over_the_grid_set(tmp_path):
    path = write(tmp_path, ABLATION)
    grid = load_grid(path, ["train.epochs=9", "data.image_size=[256,128]"])
    assert grid.extra_set == {"train.epochs": 9, "data.image_size": [256, 128]}
    trials = expand(grid)
    assert {(t.config.train.epochs, tuple(t.config.data.image_size)) for t in trials} == {
        (9, (256, 128))
    }
    # The variant still wins over both sets, and ids change with the extras.
    plain = expand(load_grid(path))
    assert {t.trial_id for t in trials}.isdisjoint(t.trial_id for t in plain)


def test_nested_and_dotted_keys_are_equivalent(tmp_path):
    dotted = write(tmp_path, ABLATION, "dotted.yaml")
    nested = write(
        tmp_path,
        """\
        study: abl
        base: base.yaml
        seeds: [0, 1]
        set: {train: {epochs: 3}}
        variants:
          "IRRA (SDM+ID+MLM)": {loss: {mim_weight: 0}}
          "+MIM pixel": {mim: {target: pixel}}
          "+SemMIM LIP-20": {mim: {target: semantic, labels: atr18}}
        grid:
          mim: {mask_ratio: [0.3, 0.5]}
        zip:
          - {loss: {mlm_weight: [0.5, 1.0], sdm_weight: [2, 3]}}
        """,
        "nested.yaml",
    )
    a, b = expand(load_grid(dotted)), expand(load_grid(nested))
    assert [(t.trial_id, t.variant) for t in a] == [(t.trial_id, t.variant) for t in b]


def test_exclude(tmp_path):
    text = ABLATION + textwrap.dedent(
        """\
        exclude:
          - {variant: "IRRA (SDM+ID+MLM)", mim.mask_ratio: 0.3}
          - {mlm_weight: 1, mim.target: pixel}   # an axis by its label name; resolved values
        """
    )
    trials = expand(load_grid(write(tmp_path, text)))
    assert len(trials) == 24 - 4 - 4
    for t in trials:
        c = t.config
        assert not (t.variant.startswith("IRRA") and c.mim.mask_ratio == 0.3)
        assert not (c.mim.target == "pixel" and c.loss.mlm_weight == 1.0)


def test_axes_with_the_same_leaf_name_keep_full_keys(tmp_path):
    text = "study: s\nbase: base.yaml\ngrid: {train.batch_size: [8], eval.batch_size: [16]}\n"
    (t,) = expand(load_grid(write(tmp_path, text)))
    assert t.variant == "default [train.batch_size=8, eval.batch_size=16]"


def test_base_resolution(tmp_path):
    sub = tmp_path / "grids"
    sub.mkdir()
    (sub / "b.yaml").write_text("train: {epochs: 11}\n")
    grid_path = sub / "g.yaml"
    grid_path.write_text("study: s\nbase: b.yaml\n")
    assert load_grid(grid_path).base == (sub / "b.yaml").resolve()  # beside the grid
    (tmp_path / "b.yaml").write_text("train: {epochs: 12}\n")
    grid = load_grid(grid_path)
    assert grid.base == (tmp_path / "b.yaml").resolve()  # the current directory first
    assert expand(grid)[0].config.train.epochs == 12
    grid_path.write_text("study: s\nbase: configs/synth_tiny.yaml\n")
    assert load_grid(grid_path).base == resources.CONFIGS / "synth_tiny.yaml"  # shipped


# ----------------------------------------------------------------------------- errors


def error_of(tmp_path: Path, text: str, extra: tuple[str, ...] = (), base: str = BASE) -> str:
    path = write(tmp_path, text, base=base)
    with pytest.raises(GridError) as info:
        expand(load_grid(path, extra))
    msg = str(info.value)
    assert len(msg.splitlines()) <= 3, msg
    assert msg.startswith("x.yaml"), msg  # names the grid file
    return msg


HEAD = "study: s\nbase: base.yaml\n"

ERRORS = [
    # (grid text, expected substrings)
    (HEAD + "variant: {a: {}}\n", ["unknown top-level key 'variant'; did you mean 'variants'?"]),
    ("study: a/b\n", ["study 'a/b' must be a simple name"]),
    ("study: ..\n", ["study '..' must be a simple name"]),
    (HEAD + "seeds: [0, -1]\n", ["seeds = [0, -1] must be a non-empty list of non-negative"]),
    (HEAD + "seeds: 3\n", ["seeds = 3 must be"]),
    (HEAD + "seeds: [1, 1]\n", ["repeats a seed"]),
    (HEAD + "variants: [a, b]\n", ["variants must be a mapping of name -> overrides"]),
    (HEAD + "variants: {a: 3}\n", ['variant "a": expected a mapping of overrides']),
    (
        HEAD + 'variants:\n  "+MIM pixel": {mim.targte: pixel}\n',
        ["x.yaml: variant \"+MIM pixel\": unknown key 'mim.targte'; did you mean 'mim.target'?"],
    ),
    (
        HEAD + 'variants:\n  "+MIM pixel": {mim: {target: pixl}}\n',
        ["variant \"+MIM pixel\": mim.target = 'pixl' is not one of", "did you mean 'pixel'?"],
    ),
    (
        HEAD + "set: {train.epochs: many}\n",
        ["x.yaml: set: train.epochs = 'many' is not an integer"],
    ),
    (
        HEAD + "set: {train.epoch: 2}\n",
        ["set: unknown key 'train.epoch'; did you mean 'train.epochs'?"],
    ),
    (
        HEAD + "grid: {mim.mask_ratio: 0.3}\n",
        ["grid: mim.mask_ratio = 0.3 must be a non-empty list"],
    ),
    (HEAD + "grid: {mim.mask_ratio: []}\n", ["grid: mim.mask_ratio = [] must be a non-empty list"]),
    (
        HEAD + "grid: {mim.mask_ratio: [0.3, 1.5]}\n",
        ["x.yaml: grid: mim.mask_ratio = 1.5 is out of range [0.0, 0.95]"],
    ),
    (
        HEAD + "grid: {mim.mask_ratoi: [0.3]}\n",
        ["grid: unknown key 'mim.mask_ratoi'; did you mean 'mim.mask_ratio'?"],
    ),
    (
        HEAD + "zip:\n  - {loss.mlm_weight: [0.5, 1.0], loss.mim_weight: [1.0]}\n",
        ["zip group 1: lists must have equal lengths (loss.mlm_weight: 2, loss.mim_weight: 1)"],
    ),
    (
        HEAD + "zip:\n  - {loss.mlm_weight: [0.5], loss.mim_weight: [-1]}\n",
        ["x.yaml: zip: loss.mim_weight = -1.0 is out of range [0.0, inf]"],
    ),
    (
        HEAD + "grid: {mim.depth: [1]}\nzip:\n  - {mim.depth: [2]}\n",
        ["zip group 1: mim.depth is already an axis"],
    ),
    (
        HEAD + "grid: {mim.mask_ratio: [0.3]}\nexclude:\n  - {mask_ration: 0.3}\n",
        ["exclude rule 1: unknown key 'mask_ration'; did you mean 'mask_ratio'?"],
    ),
    (
        HEAD + "variants: {IRRA: {}, BiLMa: {}}\nexclude:\n  - {variant: IRAA}\n",
        ["exclude rule 1: no variant 'IRAA'; did you mean 'IRRA'?"],
    ),
    (
        HEAD + "grid: {mim.mask_ratio: [0.3]}\nexclude:\n  - {mim.mask_ratio: 0.35}\n",
        ["exclude rule 1 {'mim.mask_ratio': 0.35} matches no trial"],
    ),
    (HEAD + "exclude:\n  - {mim.mask_ratio: 0.5}\n", ["exclude drops every trial"]),
    (
        HEAD + "seeds: [0]\nset: {train.seed: 3}\n",
        ["set: train.seed is set by the grid's `seeds:`"],
    ),
    (
        HEAD + "variants: {a: {tracking.study: other}}\n",
        ['variant "a": tracking.study is set by the grid\'s `study:`'],
    ),
    (
        HEAD + "variants:\n  a: {}\n  a: {}\n",
        ["x.yaml: line 5: invalid YAML: key 'a' is given twice"],
    ),
    (
        HEAD + "set: {mim.target: pixel, mim: {target: none}}\n",
        ["set: key 'mim.target' is given twice"],
    ),
    ("study: s\nbase: nope.yaml\n", ["base config 'nope.yaml' not found (looked at", "nope.yaml"]),
    (
        HEAD + "variants: {a: {model.embed_dim: 66}}\n",
        ['variant "a": model.embed_dim = 66 must be divisible by model.cross_heads = 4'],
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=range(len(ERRORS)))
def test_errors(tmp_path, text, expected):
    msg = error_of(tmp_path, text)
    for part in expected:
        assert part in msg


def test_extra_set_errors(tmp_path):
    msg = error_of(tmp_path, ABLATION, ("train.epohcs=3",))
    assert "--set: unknown key 'train.epohcs'; did you mean 'train.epochs'?" in msg
    msg = error_of(tmp_path, ABLATION, ("train.epochs",))
    assert "--set 'train.epochs': expected key=value" in msg
    msg = error_of(tmp_path, ABLATION, ("train.epochs=0",))
    assert "x.yaml: --set: train.epochs = 0 is out of range [1, 10000]" in msg


def test_broken_base_config_names_the_grid(tmp_path):
    msg = error_of(tmp_path, HEAD, base="train: {epocs: 3}\n")
    assert "x.yaml: base:" in msg and "did you mean 'train.epochs'?" in msg


def test_key_typos_are_found_before_any_config_is_built(tmp_path):
    # load_grid alone (no expansion, no config per trial) already refuses the typo.
    path = write(tmp_path, ABLATION.replace("mim.target: pixel", "mim.targte: pixel"))
    with pytest.raises(GridError, match=r"variant \"\+MIM pixel\": unknown key 'mim.targte'"):
        load_grid(path)


def test_nothing_is_written(tmp_path):
    write(tmp_path, ABLATION)
    write(tmp_path, HEAD + "grid: {mim.mask_ratio: [1.5]}\n", "bad.yaml")
    before, grids_before, repo_before = listing(tmp_path), listing(GRIDS_DIR), os.listdir(REPO)
    assert len(expand(load_grid("x.yaml"))) == 24
    with pytest.raises(GridError):
        expand(load_grid("bad.yaml"))
    expand(load_grid("smoke"))
    assert listing(tmp_path) == before
    assert listing(GRIDS_DIR) == grids_before
    assert os.listdir(REPO) == repo_before
    assert Path.cwd() == tmp_path


# ----------------------------------------------------------------------------- finding grids


def test_resolve_by_name(tmp_path):
    assert resolve_grid_path("smoke") == GRIDS_DIR / "smoke.yaml"
    assert resolve_grid_path("smoke.yaml") == GRIDS_DIR / "smoke.yaml"
    assert resolve_grid_path(GRIDS_DIR / "smoke.yaml") == GRIDS_DIR / "smoke.yaml"
    write(tmp_path, "study: mine\n", "smoke.yaml", base=None)
    assert resolve_grid_path("smoke.yaml") == Path("smoke.yaml")  # the path as given first
    assert load_grid("smoke.yaml").study == "mine"
    with pytest.raises(GridError) as info:
        resolve_grid_path("smok")
    msg = str(info.value)
    assert "grid 'smok' not found" in msg and len(msg.splitlines()) <= 3
    assert "ablation" in msg and "semmim_labels" in msg  # the grids available


SHIPPED = sorted(GRIDS_DIR.glob("*.yaml"))


def test_the_shipped_grids_are_there():
    names = {p.stem for p in SHIPPED}
    assert {"smoke", "ablation", "mask_ratio", "loss_weights", "semmim_labels"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_grid_loads_and_expands(path):
    assert path.read_text().startswith("#")  # says what it asks and how to run it
    assert f"python sweeps/launch.py --grid {path.stem}" in path.read_text()
    grid = load_grid(path.stem)
    trials, dropped = expand_report(grid)
    n_combos = 1
    for values in grid.grid.values():
        n_combos *= len(values)
    for group in grid.zip:
        n_combos *= len(next(iter(group.values())))
    assert dropped == 0
    assert len(trials) == len(grid.variants) * n_combos * max(1, len(grid.seeds))
    assert len({t.trial_id for t in trials}) == len(trials)
    assert {t.config.tracking.study for t in trials} == {grid.study}


def test_shipped_grid_contents():
    smoke = expand(load_grid("smoke"))
    assert [(t.variant, t.seed) for t in smoke] == [
        ("IRRA (SDM+ID+MLM)", 1),
        ("IRRA (SDM+ID+MLM)", 2),
        ("BiLMa (+SemMIM)", 1),
        ("BiLMa (+SemMIM)", 2),
    ]
    c = smoke[0].config
    assert (c.train.epochs, c.train.max_steps_per_epoch, c.data.synth_ids) == (2, 15, 300)
    assert (c.data.root, c.eval.every, c.tracking.study) == ("data/synth-smoke", 1, "smoke")
    assert (c.loss.mim_weight, smoke[2].config.loss.mim_weight) == (0.0, 1.0)
    assert c.loss.mlm_weight == smoke[2].config.loss.mlm_weight == 1.0

    abl = expand(load_grid("ablation"))
    assert abl[0].study == "ablation" and abl[0].config.data.dataset == "cuhk-pedes"
    assert [t.variant for t in abl[::3]] == ["IRRA (SDM+ID+MLM)", "+MIM pixel", "+SemMIM LIP-20"]
    assert [t.config.mim.target for t in abl[::3]] == ["semantic", "pixel", "semantic"]

    ratios = expand(load_grid("mask_ratio"))
    assert [t.config.mim.mask_ratio for t in ratios[::3]] == [0.15, 0.3, 0.45, 0.6]

    labels = expand(load_grid("semmim_labels"))
    assert [(t.config.mim.labels, t.config.mim.label_rule) for t in labels[::3]] == [
        ("lip20", "majority"),
        ("lip20", "soft"),
        ("atr18", "majority"),
        ("atr18", "soft"),
        ("ppp7", "majority"),
        ("ppp7", "soft"),
    ]


def test_sections_parse_in_table_order_whatever_the_file_order(tmp_path):
    # Two errors: the one of the section parsed first (set, before variants) is reported,
    # though the file writes variants first.
    text = HEAD + "variants: {a: {mim.targte: pixel}}\nset: {train.epoch: 2}\n"
    msg = error_of(tmp_path, text)
    assert "set: unknown key 'train.epoch'" in msg and "variant" not in msg
    assert tuple(SECTIONS) == TOP_KEYS
    assert TOP_KEYS[:8] == ("study", "base", "seeds", "set", "variants", "grid", "zip", "exclude")


def test_dedupe_names_both_variants(tmp_path, caplog):
    text = """\
    study: s
    base: base.yaml
    seeds: [0, 1]
    variants:
      "IRRA": {loss.mim_weight: 0}
      "IRRA again": {loss: {mim_weight: 0.0}}
      "BiLMa": {}
    """
    caplog.set_level("WARNING", logger="bilma.sweep.expand")
    trials, dropped = expand_report(load_grid(write(tmp_path, text)))
    assert [t.variant for t in trials] == ["IRRA", "IRRA", "BiLMa", "BiLMa"] and dropped == 2
    assert [r.getMessage() for r in caplog.records] == [
        'x.yaml: "IRRA again" is the same trial as "IRRA" (same resolved config, seeds 0, 1): '
        'it runs once, under "IRRA"; make them differ or remove one'
    ]


def test_the_study_is_the_grid_files_name_unless_it_says_otherwise(tmp_path):
    write(tmp_path, "base: base.yaml\n", "my-study.yaml")
    assert load_grid(tmp_path / "my-study.yaml").study == "my-study"
    write(tmp_path, "base: base.yaml\n", "two words.yaml")
    with pytest.raises(GridError, match="cannot name a study .* add `study: <name>`"):
        load_grid(tmp_path / "two words.yaml")
    # every shipped grid: one name for the grid, the study, runs/<study>/ and the parent run
    from bilma.sweep.gridfile import resolve_grid_path

    for name in ("ablation", "smoke", "main", "synth_ablation", "synth_knobs"):
        assert load_grid(resolve_grid_path(name)).study == name


@pytest.mark.parametrize("name", ["a\\nb", "tab\\there", "x" * 81])
def test_a_variant_name_is_one_printable_line(tmp_path, name):
    path = write(tmp_path, f'study: s\nbase: base.yaml\nvariants:\n  "{name}": {{}}\n')
    with pytest.raises(GridError, match="must be one line of at most 80 printable characters"):
        load_grid(path)
