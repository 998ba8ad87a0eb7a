"""The `search:` and `scheduler:` sections of a grid file (used by `--backend ray`).

    search:                      # how Tune picks trials; default: every trial of the grid once
      method: random             # grid | random | optuna (TPE through Ray's OptunaSearch)
      num_samples: 8             # random: samples per grid trial; optuna: samples in all
      seed: 0                    # the searcher's own seed (optional)
      space:                     # config key -> distribution (random and optuna only)
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        loss.mim_weight: {uniform: [0.0, 1.0]}
        mim.mask_ratio: {choice: [0.3, 0.5, 0.7]}
        train.batch_size: {randint: [16, 64]}      # low inclusive, high exclusive
    scheduler:                   # when Tune stops trials early; default fifo (never)
      name: asha                 # on the trials' selection metric (eval.select_split/metric)
      grace_period: 1            # evaluations (epochs) before a trial can be stopped
      reduction_factor: 2
      max_t: 10                  # epochs; default: train.epochs

Both are parsed by `load_grid` (errors name the grid file and the key); the local and
SLURM backends ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bilma.config.yamlfile import did_you_mean
from bilma.errors import SearchError, shown  # noqa: F401  (SearchError importable from here too)

METHODS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
_SEARCH_KEYS = ("method", "num_samples", "seed", "space")
_SCHEDULER_KEYS = ("name", "grace_period", "reduction_factor", "max_t")


@dataclass(frozen=True)
class Search:
    method: str = "grid"
    num_samples: int = 1
    seed: int | None = None
    space: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)  # key -> (dist, args)


@dataclass(frozen=True)
class Scheduler:
    name: str = "fifo"
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: int | None = None  # None: train.epochs of the trials


def _hint(value: Any, choices: tuple[str, ...]) -> str:
    return did_you_mean(value, choices, f"valid: {', '.join(choices)}", cutoff=0.5)


def _mapping(raw: Any, where: str, allowed: tuple[str, ...], example: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SearchError(f"{where}: expected a mapping, e.g. {example}")
    for key in raw:
        if key not in allowed:
            raise SearchError(f"{where}: unknown key '{key}'; {_hint(key, allowed)}")
    return raw


def _int(raw: dict[str, Any], key: str, where: str, default: int | None, low: int) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SearchError(f"{where}.{key} = {shown(value)} must be an integer >= {low}")
    return value


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _distribution(key: str, raw: Any, where: str) -> tuple[str, list[Any]]:
    example = "{loguniform: [1.0e-4, 1.0e-2]}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SearchError(f"{where}: {key} must be one distribution, e.g. {example}")
    ((dist, args),) = raw.items()
    if dist not in DISTRIBUTIONS:
        raise SearchError(
            f"{where}: {key}: unknown distribution '{dist}'; {_hint(dist, DISTRIBUTIONS)}"
        )
    if dist == "choice":
        if not isinstance(args, list) or not args:
            raise SearchError(f"{where}: {key}: choice needs a non-empty list, e.g. [0.3, 0.5]")
        return dist, list(args)
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise SearchError(f"{where}: {key}: {dist} needs [low, high], e.g. {example}")
    low, high = args
    if not low < high:
        raise SearchError(f"{where}: {key}: {dist} needs low < high, got [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        raise SearchError(f"{where}: {key}: loguniform needs low > 0, got {low}")
    if dist == "randint" and not all(isinstance(a, int) for a in args):
        raise SearchError(f"{where}: {key}: randint needs integers, got [{low}, {high}]")
    return dist, [low, high]


def _flat_space(raw: Any, where: str) -> dict[str, Any]:
    """`space:` with nested sections flattened to dotted keys (a distribution is a leaf)."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            # A distribution is a one-key mapping to its arguments (a list).
            if isinstance(v, dict) and len(v) == 1 and isinstance(next(iter(v.values())), list):
                out[key] = v
            elif isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                out[key] = v

    if not isinstance(raw, dict):
        raise SearchError(f"{where}: expected config key -> distribution, e.g. {{optim.lr: ...}}")
    walk(raw, "")
    return out


def parse_search(raw: Any, where: str, valid_keys: Any = None, owned: Any = ()) -> Search:
    """The `search:` section; `valid_keys` are the trainer's config keys, `owned` the keys
    the grid sets itself (study, variant label, seed) and its axes."""
    where = f"{where}: search"
    raw = _mapping(raw, where, _SEARCH_KEYS, "{method: random, num_samples: 8, space: {...}}")
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise SearchError(f"{where}.method: unknown method '{method}'; {_hint(method, METHODS)}")
    num_samples = _int(raw, "num_samples", where, 1, 1)
    seed = _int(raw, "seed", where, None, 0)
    space = {}
    if raw.get("space") is not None:
        for key, dist in _flat_space(raw["space"], f"{where}.space").items():
            if valid_keys is not None and key not in valid_keys:
                fix = did_you_mean(key, valid_keys, "see `python -m bilma config --keys`")
                raise SearchError(f"{where}.space: unknown key '{key}'; {fix}")
            if key in owned:
                raise SearchError(
                    f"{where}.space: {key} is set by the grid itself (study, variant, seeds or an "
                    "axis); remove it from one of them"
                )
            space[key] = _distribution(key, dist, f"{where}.space")
    if method == "grid":
        if space:
            raise SearchError(
                f"{where}: space needs method random or optuna (grid runs each trial once)"
            )
        if num_samples != 1:
            raise SearchError(f"{where}: num_samples needs method random or optuna")
    elif not space:
        raise SearchError(
            f"{where}: method {method} needs a space, e.g. space: {{optim.lr: {{loguniform: "
            "[1.0e-4, 1.0e-2]}}"
        )
    return Search(method, num_samples or 1, seed, space)


def parse_scheduler(raw: Any, where: str) -> Scheduler:
    """The `scheduler:` section."""
    where = f"{where}: scheduler"
    raw = _mapping(
        raw, where, _SCHEDULER_KEYS, "{name: asha, grace_period: 1, reduction_factor: 2}"
    )
    name = raw.get("name", "fifo")
    if name not in SCHEDULERS:
        raise SearchError(f"{where}.name: unknown scheduler '{name}'; {_hint(name, SCHEDULERS)}")
    if name == "fifo" and set(raw) - {"name"}:
        extra = ", ".join(sorted(set(raw) - {"name"}))
        raise SearchError(f"{where}: {extra} only apply to name: asha")
    grace = _int(raw, "grace_period", where, 1, 1)
    factor = _int(raw, "reduction_factor", where, 2, 2)
    max_t = _int(raw, "max_t", where, None, 1)
    if max_t is not None and max_t < grace:
        raise SearchError(f"{where}: max_t = {max_t} is below grace_period = {grace}")
    return Scheduler(name, grace or 1, factor or 2, max_t)


def check_optuna() -> None:
    """Raise SearchError with the fix when optuna is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SearchError(
            "search.method optuna needs the optuna package: pip install optuna "
            "(or use method: random)"
        ) from None
