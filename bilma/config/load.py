"""The trainer's configuration: a typed tree of dataclasses, YAML files, overrides, the trial id.

A config file is YAML whose top-level keys are the sections below; it may name a `base:` file
(relative to itself) whose values it overrides. Command-line overrides are `key.sub=value`,
with the value parsed as YAML (`mim.mask_ratio=0.3`, `data.image_size=[384,128]`).

Every key is validated: an unknown key names the file and the nearest valid key, a bad value
names the expected type or range. `trial_id(cfg)` is a short hash of the canonical form of the
resolved config, leaving out where things live and how they are tracked (`paths`, `tracking`,
data and weight locations, worker counts): the same experiment gets the same id on any machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from bilma.config.identity import canonical, trial_id  # noqa: F401  (importable from here too)
from bilma.config.schema import (
    _HELP,
    _RANGE,
    LEAF_FIELDS,
    VALID_KEYS,
    Config,
    _sections,  # noqa: F401  (re-exported: `from bilma.config import Config`)
)
from bilma.config.yamlfile import did_you_mean, safe_load_unique, yaml_error
from bilma.config.yamlfile import suggest as _suggest
from bilma.errors import ConfigError, shown  # noqa: F401  (ConfigError importable from here too)
from bilma.fileio import name_problem

# ----------------------------------------------------------------------------- key tables

# Keys that config.yaml files of trials launched before launch.json still carry: read and
# ignored (the sweep's identity moved to launch.json, which reads them from there).
RETIRED_KEYS = ("tracking.variant_base", "tracking.variant_index", "tracking.grid_point")


def suggest(key: str, candidates: typing.Iterable[str] = VALID_KEYS) -> str | None:
    """The nearest valid config key for a typo, or None (`yamlfile.suggest` over the keys)."""
    return _suggest(key, candidates)


def _unknown_key(key: str, where: str) -> ConfigError:
    fix = did_you_mean(key, VALID_KEYS, "see `python -m bilma config --keys`")
    return ConfigError(f"{where}: unknown key '{key}'; {fix}")


# ----------------------------------------------------------------------------- value checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


# YAML 1.1 (PyYAML) reads these bare words as booleans: `amp: off` arrives as False.
_YAML_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value converted to tp). Ints are accepted where floats are expected; a boolean
    where the choices hold one YAML boolean word (`off`, `on`, ...) is that word."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):
            words = [c for c in choices if isinstance(c, str) and c in _YAML_BOOL_WORDS[value]]
            if len(words) == 1:
                return True, words[0]
        return (value in choices), value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return True, None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for item in value:
            ok, v = _coerce(item, inner)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-5` (no dot) as a string: accept what Python reads as a number.
            try:
                return True, float(value)
            except ValueError:
                return False, value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    return False, value


def _check_value(key: str, value: Any, where: str) -> Any:
    f, tp = LEAF_FIELDS[key]
    ok, v = _coerce(value, tp)
    if not ok:
        raise ConfigError(f"{where}: {key} = {shown(value)} is not {_type_name(tp)}")
    rng = f.metadata.get(_RANGE)
    if rng is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v):  # nan passes every comparison below, inf an open end
            raise ConfigError(f"{where}: {key} = {shown(value)} is not a finite number")
        lo, hi = rng
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ConfigError(f"{where}: {key} = {shown(v)} is out of range [{lo_s}, {hi_s}]")
    return v


def _check_cross(cfg: Config, where: str) -> None:
    """Constraints between keys."""
    h, w = cfg.data.image_size if len(cfg.data.image_size) == 2 else (0, 0)
    if len(cfg.data.image_size) != 2 or h <= 0 or w <= 0:
        raise ConfigError(f"{where}: data.image_size must be [height, width], e.g. [384, 128]")
    if h % 16 or w % 16:
        raise ConfigError(
            f"{where}: data.image_size = {cfg.data.image_size} must be multiples of the patch "
            "size 16 (e.g. [384, 128])"
        )
    if cfg.loss.attribute_weight > 0 and cfg.data.dataset != "synth":
        raise ConfigError(
            f"{where}: loss.attribute_weight needs the synthetic dataset's attribute labels "
            f"(data.dataset = synth); set it to 0 for {cfg.data.dataset}"
        )
    eval_ids = cfg.data.synth_eval_ids
    if eval_ids is not None and 2 * eval_ids >= cfg.data.synth_ids:
        raise ConfigError(
            f"{where}: data.synth_eval_ids = {eval_ids} leaves no training identity of "
            f"data.synth_ids = {cfg.data.synth_ids}; use fewer than {cfg.data.synth_ids / 2:g}"
        )
    if cfg.data.synth_lookalike == 1:
        raise ConfigError(f"{where}: data.synth_lookalike = 1: use 0 (no groups) or 2 to 4")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"{where}: optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    if (problem := name_problem(cfg.tracking.study)) is not None:
        # It names the folder runs/<study>/: '../x' or '/abs' would write outside paths.runs.
        raise ConfigError(f"{where}: tracking.study = {shown(cfg.tracking.study)} {problem}")
    from bilma.config.keep import problem as retention_problem

    if (problem := retention_problem(cfg.train.keep_checkpoints)) is not None:
        raise ConfigError(f"{where}: {problem}")
    if cfg.model.embed_dim % cfg.model.cross_heads:
        raise ConfigError(
            f"{where}: model.embed_dim = {cfg.model.embed_dim} must be divisible by "
            f"model.cross_heads = {cfg.model.cross_heads}"
        )


# ----------------------------------------------------------------------------- building


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _flat_user_dict(tree: Any, where: str) -> dict[str, Any]:
    """Flatten a YAML mapping and reject unknown keys, naming the file."""
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (data:, model:, ...)")
    flat: dict[str, Any] = {}
    for sec, body in tree.items():
        if sec == "base":
            continue
        if not isinstance(sec, str):
            raise ConfigError(f"{where}: key {sec!r} is not a string")
        if sec in _sections() and not isinstance(body, dict):
            raise ConfigError(f"{where}: section '{sec}' must be a mapping of keys")
        for k, v in flatten(body, sec + ".").items() if isinstance(body, dict) else [(sec, body)]:
            if k in flat:  # `optim: {lr: ..}` and `optim.lr: ..` in one file
                raise ConfigError(f"{where}: key '{k}' is given twice (dotted and nested)")
            flat[k] = v
    for k in [k for k in flat if k in RETIRED_KEYS]:
        del flat[k]  # an old trial's config.yaml: bilma.runs.launch reads these
    for k in flat:
        if k not in LEAF_FIELDS:
            raise _unknown_key(k, where)
    return flat


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        return safe_load_unique(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}{yaml_error(e)}") from None


def load_yaml_chain(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """[(file, flat values)] from the root `base:` down to `path`, each validated for keys."""
    path = Path(path)
    real = path.resolve()
    if real in _seen:
        raise ConfigError(f"{path}: `base:` files form a cycle")
    tree = _read_yaml(path)
    chain: list[tuple[str, dict]] = []
    if isinstance(tree, dict) and tree.get("base"):
        base = tree["base"]
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be a path to a YAML file")
        base_path = Path(base)
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.exists():
            raise ConfigError(f"{path}: base file '{base}' not found (looked at {base_path})")
        chain = load_yaml_chain(base_path, (*_seen, real))
    chain.append((str(path), _flat_user_dict(tree, str(path))))
    return chain


def parse_override(text: str) -> tuple[str, Any]:
    """'mim.mask_ratio=0.3' -> ('mim.mask_ratio', 0.3); values are YAML ('null', '[1,2]')."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.epochs=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = safe_load_unique(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_values(cfg: Config, flat: dict[str, Any], where: str) -> Config:
    """Return a copy of cfg with dotted keys set, each checked for name, type and range."""
    data = to_dict(cfg)
    for key, value in flat.items():
        if key not in LEAF_FIELDS:
            raise _unknown_key(key, where)
        sec, name = key.split(".", 1)
        data[sec][name] = _check_value(key, value, where)
    out = from_dict(data)
    _check_cross(out, where)
    return out


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] | dict[str, Any] = ()
) -> Config:
    """Defaults <- base files <- `path` <- overrides, validated at each step."""
    cfg = Config()
    if path is not None:
        for where, flat in load_yaml_chain(path):
            cfg = apply_values(cfg, flat, where)
    if isinstance(overrides, dict):
        flat = dict(overrides)
        where = "overrides"
    else:
        flat = dict(parse_override(o) for o in overrides)
        where = "command line"
    if flat:
        cfg = apply_values(cfg, flat, where)
    return cfg


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from a nested dict (e.g. a saved config.yaml), checking every key."""
    flat = _flat_user_dict(data, where)
    sections = {}
    for sec, cls in _sections().items():
        values = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(sec + ".")}
        sections[sec] = cls(**values)
    return Config(**sections)


def validate(cfg: Config, where: str = "config") -> Config:
    """Re-check every value (for configs built in code)."""
    return apply_values(Config(), flatten(to_dict(cfg)), where)


# libyaml's emitter when PyYAML has it: the same text, 5x faster (a 1,000-trial launch writes
# 1,000 config.yaml).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_DUMPER, sort_keys=False)


def describe_keys() -> str:
    """Every key with its type, default and help, for `python -m bilma config --keys`."""
    default = flatten(to_dict(Config()))
    lines = []
    for key, (f, tp) in LEAF_FIELDS.items():
        rng = f.metadata.get(_RANGE)
        extra = f" in [{rng[0]}, {rng[1]}]" if rng else ""
        help_ = f.metadata.get(_HELP) or ""
        lines.append(f"{key:34s} {default[key]!r:24} {_type_name(tp)}{extra}. {help_}".rstrip())
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command lines


def add_override_args(p: argparse.ArgumentParser) -> None:
    """Overrides the way every command takes them: `key=value ...` and `--set key=value`
    (repeatable), either spelling or both; `merge_overrides` joins them after parsing."""
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=5")
    p.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the same as a plain KEY=VALUE (repeatable)",
    )


def merge_overrides(args: argparse.Namespace) -> list[str]:
    """The plain overrides, then the --set ones; stored back as `args.overrides`."""
    merged = [*getattr(args, "overrides", []), *getattr(args, "set_overrides", [])]
    args.overrides = merged
    return merged
