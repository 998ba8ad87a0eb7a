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


def canonical(cfg: Config) -> str:
    """Canonical JSON of the parts that define the experiment (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, (f, _tp) in LEAF_FIELDS.items():
        mode = f.metadata.get(_HASH, True)
        if mode is False:
            continue
        sec, name = key.split(".", 1)
        value = getattr(getattr(cfg, sec), name)
        if mode == "basename" and isinstance(value, str):
            value = os.path.basename(os.path.normpath(value))
        out[key] = value
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def trial_id(cfg: Config, length: int = 10) -> str:
    """A short stable hash of `canonical(cfg)`: the trial directory's name."""
    return hashlib.sha256(canonical(cfg).encode()).hexdigest()[:length]
