"""Grids expanded into trials: one resolved, validated config per trial.

Reading and checking the grid file is `bilma.sweep.gridfile`'s (re-exported here):

    grid = load_grid("ablation")          # sweeps/grids/ablation.yaml; structure and keys checked
    trials = expand(grid)                 # one resolved, validated Config per trial

Both raise `GridError` (one line naming the grid file, the key, the variant if any, and the
fix) before anything runs; neither writes a file or creates a folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from bilma.config import LEAF_FIELDS, Config, ConfigError, apply_values, trial_id
from bilma.config.yamlfile import did_you_mean
from bilma.runs.launch import Launch
from bilma.sweep.gridfile import (
    _SEED_KEY,
    _STUDY_KEY,
    _VARIANT_KEY,
    DEFAULT_VARIANT,
    GRIDS_DIR,
    SECTIONS,
    TOP_KEYS,
    Grid,
    GridError,
    _base_config,
    _display,
    _short_names,
    load_grid,
    resolve_grid_path,
)

__all__ = [
    "DEFAULT_VARIANT",
    "GRIDS_DIR",
    "SECTIONS",
    "TOP_KEYS",
    "Grid",
    "GridError",
    "Trial",
    "expand",
    "expand_report",
    "load_grid",
    "resolve_grid_path",
]

log = logging.getLogger(__name__)

# Placeholder `where` handed to bilma.config so its message body can be re-prefixed.
_MARK = "\x00grid"


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: a resolved config and where it sits in the ablation table."""

    study: str
    variant: str  # row label: variant name plus " [mask_ratio=0.3, ...]" when axes exist
    seed: int
    overrides: dict[str, Any]  # every override applied on top of base, in order (as written)
    config: Config
    trial_id: str
    axes: dict[str, Any]  # grid/zip key -> resolved value for this trial
    variant_base: str = ""  # the grid's variant name, without axis values
    variant_index: int = -1  # its position in the grid: the table's row order

    def launch(self, grid: str, parent_run_id: str | None, tracking: dict[str, Any]) -> Launch:
        """What launch.json records of this trial: the one description every backend writes
        (`bilma.runs.launch.write_launch`); tables group runs by it without parsing labels."""
        return Launch(
            study=self.study,
            grid=grid,
            variant=self.variant,
            variant_base=self.variant_base,
            variant_index=self.variant_index,
            grid_point=dict(self.axes),
            seed=self.seed,
            parent_run_id=parent_run_id,
            tracking=dict(tracking),
        )


# ----------------------------------------------------------------------------- helpers


def _fmt(value: Any) -> str:
    """A value as YAML would write it inline (labels: 0.3, soft, true, [384, 128])."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).splitlines()[0]
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _resolved(cfg: Config, key: str) -> Any:
    sec, name = key.split(".", 1)
    return getattr(getattr(cfg, sec), name)


def _literal_hint(key: str, value: Any) -> str:
    """'; did you mean 'pixel'?' for a misspelt choice of a Literal key."""
    _f, tp = LEAF_FIELDS[key]
    args: list[Any] = []
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) is Literal:
            args += [a for a in typing.get_args(t) if isinstance(a, str)]
    if not isinstance(value, str) or not args:
        return ""
    hint = did_you_mean(value, args, cutoff=0.5)
    return f"; {hint}" if hint else ""


# ----------------------------------------------------------------------------- expansion


def _combinations(grid: Grid) -> list[dict[str, Any]]:
    """Every grid/zip combination as {key: value}, the last axis varying fastest."""
    factors: list[list[dict[str, Any]]] = [[{k: v} for v in vs] for k, vs in grid.grid.items()]
    for group in grid.zip:
        keys = list(group)
        factors.append(
            [dict(zip(keys, row, strict=True)) for row in zip(*group.values(), strict=True)]
        )
    return [
        {k: v for part in combo for k, v in part.items()} for combo in itertools.product(*factors)
    ]


def _build(base: Config, stages: list[tuple[str, dict[str, Any]]]) -> tuple[Config, dict]:
    """Apply the stages' overrides in order; a ConfigError names the stage that set the key."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, values in stages:
        for key, value in values.items():
            merged[key] = value
            origin[key] = where
    try:
        return apply_values(base, merged, _MARK), merged
    except ConfigError as e:
        body = str(e).removeprefix(f"{_MARK}: ")
        # The first key the message names that an override set decides whom to blame.
        named = [t.strip("',:") for t in body.split()]
        key = next((t for t in named if t in origin), None)
        where = origin[key] if key else stages[-1][0]  # a cross-key check on base values
        hint = _literal_hint(key, merged[key]) if key and "is not one of" in body else ""
        raise GridError(f"{where}: {body}{hint}") from None


def _matches(rule: dict[str, Any], name: str, cfg: Config, short: dict[str, str]) -> bool:
    by_short = {s: k for k, s in short.items()}
    for key, want in rule.items():
        if key == "variant":
            have = name
        else:
            have = _resolved(cfg, by_short.get(key, key))
        if have != want:
            return False
    return True


def expand_report(grid: Grid) -> tuple[list[Trial], int]:
    """(trials, duplicates dropped): variants x combinations x seeds, minus excludes.

    Raises GridError for a bad value (naming the file, the variant or axis, and the key) or
    an exclude rule that matches nothing; pure: reads config files, writes nothing.
    """
    gf = _display(grid.path)
    base = _base_config(grid)
    short = _short_names(grid.axes)
    combos = _combinations(grid)
    seeds: list[int | None] = list(grid.seeds) or [None]
    rule_hits = [0] * len(grid.exclude)
    trials: list[Trial] = []
    ids: dict[str, str] = {}  # trial id -> the label it runs under
    merged: dict[tuple[str, str], list[Any]] = {}  # (dropped label, kept label) -> seeds
    dropped = 0
    for index, (name, variant) in enumerate(grid.variants.items()):
        for combo in combos:
            for seed in seeds:
                own = {_STUDY_KEY: grid.study, _VARIANT_KEY: name}  # the label comes below
                if seed is not None:
                    own[_SEED_KEY] = seed
                stages = [
                    (f"{gf}: set", grid.set),
                    (f"{gf}: --set", grid.extra_set),
                    (f'{gf}: variant "{name}"', variant),
                    (f"{gf}: grid", {k: v for k, v in combo.items() if k in grid.grid}),
                    (f"{gf}: zip", {k: v for k, v in combo.items() if k not in grid.grid}),
                    (f'{gf}: variant "{name}"', own),
                ]
                cfg, overrides = _build(base, stages)
                # The label shows resolved axis values (1 -> 1.0) so that two grids writing a
                # value differently still share table rows; it is not part of the trial id.
                axes = {k: _resolved(cfg, k) for k in combo}
                label = name
                if axes:
                    label += (
                        " [" + ", ".join(f"{short[k]}={_fmt(v)}" for k, v in axes.items()) + "]"
                    )
                overrides[_VARIANT_KEY] = label
                cfg = dataclasses.replace(
                    cfg, tracking=dataclasses.replace(cfg.tracking, variant=label)
                )
                hits = [_matches(r, name, cfg, short) for r in grid.exclude]
                for i, hit in enumerate(hits):
                    rule_hits[i] += hit
                if any(hits):
                    continue
                tid = trial_id(cfg)
                if tid in ids:
                    dropped += 1
                    merged.setdefault((label, ids[tid]), []).append(cfg.train.seed)
                    continue
                ids[tid] = label
                trials.append(
                    Trial(grid.study, label, cfg.train.seed, overrides, cfg, tid, axes, name, index)
                )
    for i, hits in enumerate(rule_hits):
        if not hits:
            raise GridError(
                f"{gf}: exclude rule {i + 1} {grid.exclude[i]} matches no trial; "
                "compare its values with the variants and axes (or remove it)"
            )
    if not trials:
        raise GridError(f"{gf}: exclude drops every trial; nothing would run")
    _warn_merged(gf, merged)
    return trials, dropped


def _warn_merged(gf: str, merged: dict[tuple[str, str], list[Any]], most: int = 5) -> None:
    """Name both rows of every pair of variants that resolve to one trial (one line each)."""
    for (gone, kept), seeds in list(merged.items())[:most]:
        log.warning(
            '%s: "%s" is the same trial as "%s" (same resolved config, seed%s %s): it runs '
            'once, under "%s"; make them differ or remove one',
            gf,
            gone,
            kept,
            "s" if len(seeds) > 1 else "",
            ", ".join(map(str, seeds)),
            kept,
        )
    if len(merged) > most:
        log.warning("%s: %d more pairs of rows are the same trial", gf, len(merged) - most)


def expand(grid: Grid) -> list[Trial]:
    """The grid's trials: variants in file order, then grid/zip combinations, then seeds.

    Combinations resolving to the same config (same trial id) collapse to the first.
    """
    return expand_report(grid)[0]
