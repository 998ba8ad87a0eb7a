"""A trial's identity: the canonical form of the parts of a resolved config that define the
experiment, and its short hash, the trial directory's name.

Left out (schema fields with `hash=False`): where things live and how they are tracked
(`paths`, `tracking`, data and weight locations as their basenames only, worker counts),
so the same experiment gets the same id on any machine. `tests/sweep/test_trial_ids.py`
pins the ids of every shipped grid: a change here would strand every running study.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from bilma.config.schema import _HASH, LEAF_FIELDS, Config


def _as_hashed(key: str, value: Any) -> Any:
    """A value as the identity sees it: a location by its basename (`hash="basename"`)."""
    if LEAF_FIELDS[key][0].metadata.get(_HASH, True) == "basename" and isinstance(value, str):
        return os.path.basename(os.path.normpath(value))
    return value


HASHED_KEYS = tuple(k for k, (f, _) in LEAF_FIELDS.items() if f.metadata.get(_HASH, True))


def _values(cfg: Config) -> dict[str, Any]:
    """Every key of the experiment with its value as the identity sees it."""
    out: dict[str, Any] = {}
    for key in HASHED_KEYS:
        sec, name = key.split(".", 1)
        out[key] = _as_hashed(key, getattr(getattr(cfg, sec), name))
    return out


_DEFAULTS = _values(Config())


def canonical(cfg: Config) -> str:
    """Canonical JSON of the parts that define the experiment (see the module docstring).

    A key added after studies exist is declared `hash="nondefault"`: it enters the identity
    only at a value other than its default, so every existing trial keeps its id."""
    out = {
        key: value
        for key, value in _values(cfg).items()
        if not (LEAF_FIELDS[key][0].metadata.get(_HASH) == "nondefault" and value == _DEFAULTS[key])
    }
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def differences(saved: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, saved value, cfg's value) for each key of the experiment on which they differ.

    `saved`: flat dotted keys (a trial's config.yaml flattened, or a saved canonical form). A
    key it lacks counts at its default, so a key added to the project later differs from
    nothing; keys this code no longer knows are ignored."""
    now = json.loads(json.dumps(_values(cfg)))
    default = json.loads(json.dumps(_DEFAULTS))
    out = []
    for key in HASHED_KEYS:
        then = json.loads(json.dumps(_as_hashed(key, saved.get(key, default[key]))))
        if then != now[key]:
            out.append((key, then, now[key]))
    return out


def trial_id(cfg: Config, length: int = 10) -> str:
    """A short stable hash of `canonical(cfg)`: the trial directory's name."""
    return hashlib.sha256(canonical(cfg).encode()).hexdigest()[:length]
