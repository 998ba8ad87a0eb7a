"""Grid files: finding, reading and checking one (`load_grid`), before any trial exists.

A grid YAML names a study (default: its file name), a base trainer config, seeds, optional overrides for every trial
(`set:`), rows of the ablation table (`variants:`), a cartesian product (`grid:`), axes that
move together (`zip:`) and rules that drop trials (`exclude:`); see docs/DESIGN.md. Each
top-level key has one parser, listed in `SECTIONS`. Expanding a `Grid` into trials is
`bilma.sweep.expand`'s, which also uses the helpers here (`_display`, `_short_names`, ...).

Errors are `GridError`: one line naming the grid file, the key, the variant if any, and the
fix. Nothing here writes a file or creates a folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bilma import resources
from bilma.config import (
    LEAF_FIELDS,
    VALID_KEYS,
    Config,
    ConfigError,
    load_config,
    parse_override,
)
from bilma.config.yamlfile import did_you_mean, safe_load_unique, yaml_error
from bilma.errors import GridError, shown  # noqa: F401  (GridError importable from here too)
from bilma.fileio import NAME_RULE, name_problem

GRIDS_DIR = resources.GRIDS

DEFAULT_VARIANT = "default"
# Keys the grid sets itself from `study:`, the variant label and `seeds:`.
_STUDY_KEY, _VARIANT_KEY, _SEED_KEY = "tracking.study", "tracking.variant", "train.seed"


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
    search: Any = None  # bilma.sweep.search.Search (ray backend)
    scheduler: Any = None  # bilma.sweep.search.Scheduler (ray backend)

    @property
    def axes(self) -> list[str]:
        """Every grid and zip key, in the order they vary (grid first, then zip groups)."""
        return [*self.grid, *(k for group in self.zip for k in group)]


# ----------------------------------------------------------------------------- helpers


def _display(path: Path) -> str:
    """The path relative to the current directory when inside it (short messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_grid_yaml(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise GridError(f"{where}: cannot read the grid file ({e.strerror})") from None
    try:
        # A key given twice is refused (two variants with one name would collapse).
        tree = safe_load_unique(text)
    except yaml.YAMLError as e:
        raise GridError(f"{where}{yaml_error(e)}") from None
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
    return did_you_mean(key, candidates, "see `python -m bilma config --keys`")


def _check_keys(flat: dict[str, Any], where: str, owned: dict[str, str]) -> None:
    """Every key must be a config key and not one the grid sets itself (`owned`)."""
    for key in flat:
        if key not in LEAF_FIELDS:
            raise GridError(f"{where}: unknown key '{key}'; {_fix_for(key)}")
        if key in owned:
            raise GridError(f"{where}: {key} is set by the grid's {owned[key]}; remove it here")


def _short_names(axes: Sequence[str]) -> dict[str, str]:
    """Axis key -> its name in labels: the last component, or the full key when ambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in axes]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(axes, last, strict=True)}


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
        # cwd first (a launcher run from anywhere), then beside the grid, then the shipped
        # files (configs/ of a checkout or of the installed package).
        tried = [Path.cwd() / path, grid_path.resolve().parent / path, resources.ROOT / path]
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
            f"{where}: seeds = {shown(raw)} must be a non-empty list of non-negative integers, "
            "e.g. [0, 1, 2] (omit it to use the config's train.seed)"
        )
    if len(set(raw)) != len(raw):
        raise GridError(f"{where}: seeds = {shown(raw)} repeats a seed; list each once")
    return list(raw)


def _axes(raw: Any, where: str) -> dict[str, list[Any]]:
    flat = _flat(raw, where, "a mapping of config key -> list of values")
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise GridError(
                f"{where}: {key} = {shown(values)} must be a non-empty list of values, e.g. [0.3, 0.5]"
            )
    return flat


@dataclass
class _Parsing:
    """What a section parser sees besides its own value: the file and the sections before it."""

    path: Path
    gf: str  # the grid file as messages name it
    extra_set: Sequence[str]  # the launcher's --set strings
    fields: dict[str, Any] = field(default_factory=dict)  # Grid fields parsed so far

    def owned(self) -> dict[str, str]:
        """Config keys the grid sets itself -> what sets them (no section may set them)."""
        owned = {_STUDY_KEY: "`study:`", _VARIANT_KEY: "variant label"}
        if self.fields.get("seeds"):
            owned[_SEED_KEY] = "`seeds:`"
        return owned


def _parse_study(raw: Any, p: _Parsing) -> dict[str, Any]:
    if raw is None:  # one name: the study is the grid's, unless the grid says otherwise
        raw = p.path.stem
        if name_problem(raw) is not None:
            raise GridError(
                f"{p.gf}: the file name {shown(raw)} cannot name a study (runs/<study>/); add "
                f"`study: <name>` with {NAME_RULE}"
            )
    if (problem := name_problem(raw)) is not None:
        raise GridError(f"{p.gf}: study {shown(raw)} {problem} (runs/<study>/)")
    return {"study": raw}


def _parse_base(raw: Any, p: _Parsing) -> dict[str, Any]:
    return {"base": None if raw is None else _resolve_base(raw, p.path, f"{p.gf}: base")}


def _parse_seeds(raw: Any, p: _Parsing) -> dict[str, Any]:
    return {"seeds": _seeds(raw, p.gf)}


def _parse_set(raw: Any, p: _Parsing) -> dict[str, Any]:
    """The file's `set:`, then the launcher's `--set key=value` extras (which win)."""
    set_ = _flat(raw, f"{p.gf}: set")
    _check_keys(set_, f"{p.gf}: set", p.owned())
    extras: dict[str, Any] = {}
    for text in p.extra_set:
        try:
            key, value = parse_override(text)
        except ConfigError:
            raise GridError(
                f"{p.gf}: --set '{text}': expected key=value, e.g. train.epochs=10"
            ) from None
        extras[key] = value
    _check_keys(extras, f"{p.gf}: --set", p.owned())
    return {"set": set_, "extra_set": extras}


MAX_VARIANT = 80


def _parse_variants(raw: Any, p: _Parsing) -> dict[str, Any]:
    if raw is None:
        return {"variants": {DEFAULT_VARIANT: {}}}
    if not isinstance(raw, dict) or not raw:
        raise GridError(
            f'{p.gf}: variants must be a mapping of name -> overrides, e.g. "+MIM pixel": '
            "{mim.target: pixel} (omit it for one default variant)"
        )
    variants: dict[str, dict[str, Any]] = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise GridError(
                f"{p.gf}: variant name {shown(name)} must be a non-empty string; quote it"
            )
        # A row label: of the tables, the status lines and the MLflow run names (one line each).
        if not name.isprintable() or len(name) > MAX_VARIANT:
            raise GridError(
                f"{p.gf}: variant name {shown(name)} must be one line of at most {MAX_VARIANT} "
                "printable characters (it labels a table row and an MLflow run)"
            )
        where = f'{p.gf}: variant "{name}"'
        variants[name] = _flat(body, where, "a mapping of overrides")
        _check_keys(variants[name], where, p.owned())
    return {"variants": variants}


def _parse_grid(raw: Any, p: _Parsing) -> dict[str, Any]:
    where = f"{p.gf}: grid"
    grid = _axes(raw, where)
    _check_keys(grid, where, p.owned())
    return {"grid": grid}


def _parse_zip(raw: Any, p: _Parsing) -> dict[str, Any]:
    """Groups of axes that move together; no axis may repeat one of `grid:` or another group."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise GridError(
            f"{p.gf}: zip must be a list of groups, e.g. [{{loss.mlm_weight: [0.5, 1], "
            "loss.mim_weight: [0.5, 1]}]"
        )
    seen = set(p.fields["grid"])
    zips = []
    for i, group in enumerate(raw, 1):
        where = f"{p.gf}: zip group {i}"
        flat = _axes(group, where)
        if not flat:
            raise GridError(f"{where}: is empty; give it two or more keys or remove it")
        lengths = {k: len(v) for k, v in flat.items()}
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise GridError(f"{where}: lists must have equal lengths ({sizes})")
        _check_keys(flat, where, p.owned())
        for key in flat:
            if key in seen:
                raise GridError(f"{where}: {key} is already an axis; give each axis once")
            seen.add(key)
        zips.append(flat)
    return {"zip": zips}


def _parse_exclude(raw: Any, p: _Parsing) -> dict[str, Any]:
    """Rules naming a variant, config keys or axes (by their label name) and a value each."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise GridError(f'{p.gf}: exclude must be a list of rules, e.g. [{{variant: "x"}}]')
    variants = p.fields["variants"]
    axes = [*p.fields["grid"], *(k for g in p.fields["zip"] for k in g)]
    axis_names = set(_short_names(axes).values())
    exclude = []
    for i, rule in enumerate(raw, 1):
        where = f"{p.gf}: exclude rule {i}"
        flat = _flat(rule, where, "a mapping of key -> value")
        if not flat:
            raise GridError(f"{where}: is empty (it would drop every trial); remove it")
        for key, value in flat.items():
            if key == "variant":
                if not isinstance(value, str) or value not in variants:
                    fix = did_you_mean(value, variants, f"variants: {', '.join(variants)}")
                    raise GridError(f"{where}: no variant {shown(value)}; {fix}")
            elif key not in LEAF_FIELDS and key not in axis_names:
                fix = _fix_for(key, ["variant", *sorted(axis_names), *VALID_KEYS])
                raise GridError(f"{where}: unknown key '{key}'; {fix}")
        exclude.append(flat)
    return {"exclude": exclude}


def _parse_search(raw: Any, p: _Parsing) -> dict[str, Any]:
    """`search:` (Ray Tune: grid, random or Optuna), parsed by sweeps/search.py."""
    from bilma.sweep.search import SearchError, parse_search

    axes = [*p.fields["grid"], *(k for g in p.fields["zip"] for k in g)]
    try:
        return {"search": parse_search(raw, p.gf, LEAF_FIELDS, [*p.owned(), *axes])}
    except SearchError as e:
        raise GridError(str(e)) from None


def _parse_scheduler(raw: Any, p: _Parsing) -> dict[str, Any]:
    """`scheduler:` (Ray Tune: FIFO or ASHA), parsed by sweeps/search.py."""
    from bilma.sweep.search import SearchError, parse_scheduler

    try:
        return {"scheduler": parse_scheduler(raw, p.gf)}
    except SearchError as e:
        raise GridError(str(e)) from None


_SectionParser = Callable[[Any, _Parsing], dict[str, Any]]

SECTIONS: dict[str, _SectionParser] = {
    "study": _parse_study,
    "base": _parse_base,
    "seeds": _parse_seeds,
    "set": _parse_set,
    "variants": _parse_variants,
    "grid": _parse_grid,
    "zip": _parse_zip,
    "exclude": _parse_exclude,
    "search": _parse_search,
    "scheduler": _parse_scheduler,
}
"""Top-level key -> its parser, in parsing order: a parser gets the key's value (None when
absent) and returns the `Grid` fields it fills; it may read the fields of the sections
before it (`_Parsing.fields`). A new section is a `Grid` field, a parser and one entry here."""

TOP_KEYS = tuple(SECTIONS)


def load_grid(name_or_path: str | Path, extra_set: Sequence[str] = ()) -> Grid:
    """Read and check a grid file: structure, every key, the base config. Writes nothing.

    `extra_set` are the launcher's `--set key=value` strings, applied after `set:`.
    Values are checked by `expand`, which builds every trial's config.
    """
    path = resolve_grid_path(name_or_path)
    gf = _display(path)
    tree = _read_grid_yaml(path, gf)
    for key in tree:
        if key not in SECTIONS:
            fix = did_you_mean(key, TOP_KEYS, f"valid keys: {', '.join(TOP_KEYS)}", cutoff=0.5)
            raise GridError(f"{gf}: unknown top-level key '{key}'; {fix}")
    parsing = _Parsing(path, gf, extra_set)
    for key, parse in SECTIONS.items():
        parsing.fields.update(parse(tree.get(key), parsing))
    grid = Grid(path=path, **parsing.fields)
    _base_config(grid)  # a broken base file is an error of this grid, found now
    return grid


def _base_config(grid: Grid) -> Config:
    try:
        return load_config(grid.base)
    except ConfigError as e:
        raise GridError(f"{_display(grid.path)}: base: {e}") from None
