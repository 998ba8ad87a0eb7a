"""Grid files and their expansion into trials.

A grid YAML names a study, a base trainer config, seeds, optional overrides for every trial
(`set:`), rows of the ablation table (`variants:`), a cartesian product (`grid:`), axes that
move together (`zip:`) and rules that drop trials (`exclude:`); see docs/DESIGN.md.

    grid = load_grid("ablation")          # sweeps/grids/ablation.yaml; structure and keys checked
    trials = expand(grid)                 # one resolved, validated Config per trial

Both raise `GridError` (one line naming the grid file, the key, the variant if any, and the
fix) before anything runs; neither writes a file or creates a folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bilma.config import (
    LEAF_FIELDS,
    VALID_KEYS,
    Config,
    ConfigError,
    apply_values,
    load_config,
    parse_override,
    suggest,
    trial_id,
)

log = logging.getLogger(__name__)

GRIDS_DIR = Path(__file__).parent / "grids"
REPO_ROOT = Path(__file__).parents[1]

TOP_KEYS = (
    "study",
    "base",
    "seeds",
    "set",
    "variants",
    "grid",
    "zip",
    "exclude",
    "search",
    "scheduler",
)
DEFAULT_VARIANT = "default"
# Keys the grid sets itself from `study:`, the variant label and `seeds:`.
_STUDY_KEY, _VARIANT_KEY, _SEED_KEY = "tracking.study", "tracking.variant", "train.seed"
_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Placeholder `where` handed to bilma.config so its message body can be re-prefixed.
_MARK = "\x00grid"


class GridError(ValueError):
    """A bad grid file: one message naming the file, the key (and variant) and the fix."""


# ----------------------------------------------------------------------------- data


@dataclass
class Grid:
    """A parsed, structurally validated grid file (values are checked by `expand`)."""

    path: Path
    study: str
    base: Path | None
    seeds: list[int]  # empty: one trial per combination with the config's own train.seed
    set: dict[str, Any]  # the file's `set:`, flattened to dotted keys
    variants: dict[str, dict[str, Any]]  # name -> flat overrides, in file order
    grid: dict[str, list[Any]]
    zip: list[dict[str, list[Any]]]
    exclude: list[dict[str, Any]]
    # The launcher's `--set key=value` extras, applied after `set` (they win).
    extra_set: dict[str, Any] = field(default_factory=dict)
    search: Any = None  # sweeps.search.Search (ray backend)
    scheduler: Any = None  # sweeps.search.Scheduler (ray backend)

    @property
    def axes(self) -> list[str]:
        """Every grid and zip key, in the order they vary (grid first, then zip groups)."""
        return [*self.grid, *(k for group in self.zip for k in group)]


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


# ----------------------------------------------------------------------------- helpers


def _display(path: Path) -> str:
    """The path relative to the current directory when inside it (short messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (two variants with one name would collapse)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let SafeLoader report it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _read_grid_yaml(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise GridError(f"{where}: cannot read the grid file ({e.strerror})") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GridError(f"{where}:{line}: invalid YAML: {problem}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise GridError(f"{where}: expected a mapping (study:, base:, seeds:, variants:, ...)")
    return tree


def _flat(tree: Any, where: str, what: str = "a mapping of config keys") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys, refusing a key given both ways."""
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise GridError(f"{where}: expected {what}, e.g. {{mim.mask_ratio: 0.3}}")
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if not isinstance(k, str):
                raise GridError(f"{where}: key {k!r} is not a string; quote it")
            key = prefix + k
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            elif key in out:
                raise GridError(f"{where}: key '{key}' is given twice (dotted and nested)")
            else:
                out[key] = v

    walk(tree, "")
    return out


def _fix_for(key: str, candidates: Iterable[str] = VALID_KEYS) -> str:
    hint = suggest(key, candidates)
    return f"did you mean '{hint}'?" if hint else "see `python -m bilma config --keys`"


def _check_keys(flat: dict[str, Any], where: str, owned: dict[str, str]) -> None:
    """Every key must be a config key and not one the grid sets itself (`owned`)."""
    for key in flat:
        if key not in LEAF_FIELDS:
            raise GridError(f"{where}: unknown key '{key}'; {_fix_for(key)}")
        if key in owned:
            raise GridError(f"{where}: {key} is set by the grid's {owned[key]}; remove it here")


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


def _short_names(axes: Sequence[str]) -> dict[str, str]:
    """Axis key -> its name in labels: the last component, or the full key when ambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in axes]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(axes, last, strict=True)}


def _literal_hint(key: str, value: Any) -> str:
    """'; did you mean 'pixel'?' for a misspelt choice of a Literal key."""
    _f, tp = LEAF_FIELDS[key]
    args: list[Any] = []
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) is Literal:
            args += [a for a in typing.get_args(t) if isinstance(a, str)]
    if not isinstance(value, str) or not args:
        return ""
    hits = difflib.get_close_matches(value, args, n=1, cutoff=0.5)
    return f"; did you mean '{hits[0]}'?" if hits else ""


# ----------------------------------------------------------------------------- loading


def resolve_grid_path(name: str | Path) -> Path:
    """The path as given; else sweeps/grids/<name>; else sweeps/grids/<name>.yaml."""
    tried = [Path(name), GRIDS_DIR / name, GRIDS_DIR / f"{name}.yaml"]
    for path in tried:
        if path.is_file():
            return path
    available = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))) or "none"
    looked = ", ".join(str(p) for p in tried)
    raise GridError(
        f"grid '{name}' not found (looked at {looked})\navailable in {_display(GRIDS_DIR)}: "
        f"{available}"
    )


def _resolve_base(base: Any, grid_path: Path, where: str) -> Path:
    if not isinstance(base, str) or not base:
        raise GridError(f"{where}: base must be a path to a trainer config, e.g. configs/x.yaml")
    path = Path(base)
    if path.is_absolute():
        tried = [path]
    else:
        # cwd first (a launcher run from anywhere), then beside the grid, then the repository.
        tried = [Path.cwd() / path, grid_path.resolve().parent / path, REPO_ROOT / path]
    for p in tried:
        if p.is_file():
            return p.resolve()
    raise GridError(
        f"{where}: base config '{base}' not found (looked at {', '.join(map(str, tried))})"
    )


def _seeds(raw: Any, where: str) -> list[int]:
    if raw is None:
        return []
    ok = (
        isinstance(raw, list)
        and raw
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw)
    )
    if not ok:
        raise GridError(
            f"{where}: seeds = {raw!r} must be a non-empty list of non-negative integers, "
            "e.g. [0, 1, 2] (omit it to use the config's train.seed)"
        )
    if len(set(raw)) != len(raw):
        raise GridError(f"{where}: seeds = {raw!r} repeats a seed; list each once")
    return list(raw)


def _axes(raw: Any, where: str) -> dict[str, list[Any]]:
    flat = _flat(raw, where, "a mapping of config key -> list of values")
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise GridError(
                f"{where}: {key} = {values!r} must be a non-empty list of values, e.g. [0.3, 0.5]"
            )
    return flat


def load_grid(name_or_path: str | Path, extra_set: Sequence[str] = ()) -> Grid:
    """Read and check a grid file: structure, every key, the base config. Writes nothing.

    `extra_set` are the launcher's `--set key=value` strings, applied after `set:`.
    Values are checked by `expand`, which builds every trial's config.
    """
    path = resolve_grid_path(name_or_path)
    gf = _display(path)
    tree = _read_grid_yaml(path, gf)

    for key in tree:
        if key not in TOP_KEYS:
            hint = difflib.get_close_matches(str(key), TOP_KEYS, n=1, cutoff=0.5)
            fix = f"did you mean '{hint[0]}'?" if hint else f"valid keys: {', '.join(TOP_KEYS)}"
            raise GridError(f"{gf}: unknown top-level key '{key}'; {fix}")

    study = tree.get("study")
    if study is None:
        raise GridError(f"{gf}: `study:` is missing; add e.g. `study: {path.stem}`")
    if (
        not isinstance(study, str)
        or not _SIMPLE_NAME.fullmatch(study)
        or not study.strip(".")  # "." and ".." are not folder names
    ):
        raise GridError(
            f"{gf}: study {study!r} must be a simple name (letters, digits, '-', '_', '.'), "
            "it names runs/<study>/"
        )

    base = None if tree.get("base") is None else _resolve_base(tree["base"], path, f"{gf}: base")
    seeds = _seeds(tree.get("seeds"), gf)
    owned = {_STUDY_KEY: "`study:`", _VARIANT_KEY: "variant label"}
    if seeds:
        owned[_SEED_KEY] = "`seeds:`"

    set_ = _flat(tree.get("set"), f"{gf}: set")
    _check_keys(set_, f"{gf}: set", owned)

    extras: dict[str, Any] = {}
    for text in extra_set:
        try:
            key, value = parse_override(text)
        except ConfigError:
            raise GridError(
                f"{gf}: --set '{text}': expected key=value, e.g. train.epochs=10"
            ) from None
        extras[key] = value
    _check_keys(extras, f"{gf}: --set", owned)

    raw_variants = tree.get("variants")
    variants: dict[str, dict[str, Any]] = {}
    if raw_variants is None:
        variants[DEFAULT_VARIANT] = {}
    elif not isinstance(raw_variants, dict) or not raw_variants:
        raise GridError(
            f'{gf}: variants must be a mapping of name -> overrides, e.g. "+MIM pixel": '
            "{mim.target: pixel} (omit it for one default variant)"
        )
    else:
        for name, body in raw_variants.items():
            if not isinstance(name, str) or not name.strip():
                raise GridError(f"{gf}: variant name {name!r} must be a non-empty string; quote it")
            where = f'{gf}: variant "{name}"'
            variants[name] = _flat(body, where, "a mapping of overrides")
            _check_keys(variants[name], where, owned)

    grid = _axes(tree.get("grid"), f"{gf}: grid")
    raw_zip = tree.get("zip")
    if raw_zip is None:
        raw_zip = []
    if not isinstance(raw_zip, list):
        raise GridError(
            f"{gf}: zip must be a list of groups, e.g. [{{loss.mlm_weight: [0.5, 1], "
            "loss.mim_weight: [0.5, 1]}]"
        )
    zips = []
    for i, group in enumerate(raw_zip, 1):
        where = f"{gf}: zip group {i}"
        flat = _axes(group, where)
        if not flat:
            raise GridError(f"{where}: is empty; give it two or more keys or remove it")
        lengths = {k: len(v) for k, v in flat.items()}
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise GridError(f"{where}: lists must have equal lengths ({sizes})")
        zips.append(flat)
    seen: set[str] = set()
    for where, keys in [(f"{gf}: grid", grid)] + [
        (f"{gf}: zip group {i}", g) for i, g in enumerate(zips, 1)
    ]:
        _check_keys(keys, where, owned)
        for key in keys:
            if key in seen:
                raise GridError(f"{where}: {key} is already an axis; give each axis once")
            seen.add(key)

    raw_exclude = tree.get("exclude")
    if raw_exclude is None:
        raw_exclude = []
    if not isinstance(raw_exclude, list):
        raise GridError(f'{gf}: exclude must be a list of rules, e.g. [{{variant: "x"}}]')
    axis_names = set(_short_names([*grid, *(k for g in zips for k in g)]).values())
    exclude = []
    for i, rule in enumerate(raw_exclude, 1):
        where = f"{gf}: exclude rule {i}"
        flat = _flat(rule, where, "a mapping of key -> value")
        if not flat:
            raise GridError(f"{where}: is empty (it would drop every trial); remove it")
        for key, value in flat.items():
            if key == "variant":
                if not isinstance(value, str) or value not in variants:
                    hint = suggest(str(value), variants)
                    fix = f"did you mean '{hint}'?" if hint else f"variants: {', '.join(variants)}"
                    raise GridError(f"{where}: no variant {value!r}; {fix}")
            elif key not in LEAF_FIELDS and key not in axis_names:
                fix = _fix_for(key, ["variant", *sorted(axis_names), *VALID_KEYS])
                raise GridError(f"{where}: unknown key '{key}'; {fix}")
        exclude.append(flat)

    grid_obj = Grid(path, study, base, seeds, set_, variants, grid, zips, exclude, extras)
    grid_obj.search, grid_obj.scheduler = _ray_sections(tree, gf, [*owned, *seen])
    _base_config(grid_obj)  # a broken base file is an error of this grid, found now
    return grid_obj


def _ray_sections(tree: dict[str, Any], gf: str, owned: list[str]) -> tuple[Any, Any]:
    from sweeps.search import SearchError, parse_scheduler, parse_search

    try:
        search = parse_search(tree.get("search"), gf, LEAF_FIELDS, owned)
        return search, parse_scheduler(tree.get("scheduler"), gf)
    except SearchError as e:
        raise GridError(str(e)) from None


def _base_config(grid: Grid) -> Config:
    try:
        return load_config(grid.base)
    except ConfigError as e:
        raise GridError(f"{_display(grid.path)}: base: {e}") from None


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
    ids: set[str] = set()
    dropped = 0
    for name, variant in grid.variants.items():
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
                    continue
                ids.add(tid)
                trials.append(Trial(grid.study, label, cfg.train.seed, overrides, cfg, tid, axes))
    for i, hits in enumerate(rule_hits):
        if not hits:
            raise GridError(
                f"{gf}: exclude rule {i + 1} {grid.exclude[i]} matches no trial; "
                "compare its values with the variants and axes (or remove it)"
            )
    if not trials:
        raise GridError(f"{gf}: exclude drops every trial; nothing would run")
    if dropped:
        log.info("%s: dropped %d duplicate trial(s) (same config, same trial id)", gf, dropped)
    return trials, dropped


def expand(grid: Grid) -> list[Trial]:
    """The grid's trials: variants in file order, then grid/zip combinations, then seeds.

    Combinations resolving to the same config (same trial id) collapse to the first.
    """
    return expand_report(grid)[0]
