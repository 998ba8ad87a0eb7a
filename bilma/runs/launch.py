"""launch.json: the sweep's part of a trial's identity, written by one function for every
backend (`write_launch`) and read by the job, the result, the mirror and the tables.

The trainer's config knows nothing of sweeps; what a sweep knows about a trial (which grid,
which row of the table, which grid point, which MLflow parent run, the launching command's
tracking settings) lives here. Trial folders from before launch.json carried these fields
(`tracking.variant_base`, `tracking.variant_index`, `tracking.grid_point`) in config.yaml:
`read_launch` still finds them there.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilma.config.yamlfile import safe_load_unique
from bilma.fileio import atomic_write_json
from bilma.runs.schema import CONFIG_FILE, LAUNCH_FIELDS, LAUNCH_FILE

# The fields that name a trial in its sweep: a relaunch under a renamed variant updates them
# in a finished trial's launch.json (`rename_launch`); the latest launch's name is the truth.
NAME_FIELDS = ("variant", "variant_base", "variant_index", "grid_point")
# Keys of config.yaml that held the sweep's identity before launch.json did.
LEGACY_CONFIG_KEYS = ("variant_base", "variant_index", "grid_point")


@dataclass
class Launch:
    """The fields of launch.json (`bilma.runs.schema.LAUNCH_FIELDS`)."""

    study: str = ""
    grid: str = ""
    variant: str = ""
    variant_base: str = ""
    variant_index: int = -1
    grid_point: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    parent_run_id: str | None = None
    tracking: dict[str, Any] = field(default_factory=dict)
    launched: float = 0.0
    code: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LAUNCH_FIELDS}


assert tuple(f.name for f in dataclasses.fields(Launch)) == LAUNCH_FIELDS
# The JSON types of each field.
_TYPES: dict[str, tuple[type, ...]] = {
    "study": (str,),
    "grid": (str,),
    "variant": (str,),
    "variant_base": (str,),
    "variant_index": (int,),
    "grid_point": (dict,),
    "seed": (int, type(None)),
    "parent_run_id": (str, type(None)),
    "tracking": (dict,),
    "launched": (int, float),
    "code": (str, type(None)),
}
assert tuple(_TYPES) == LAUNCH_FIELDS


def write_launch(trial_dir: str | Path, launch: Launch) -> Launch:
    """Write `<trial_dir>/launch.json` atomically (stamped with the time of this launch)."""
    launch = dataclasses.replace(launch, launched=time.time())
    atomic_write_json(Path(trial_dir) / LAUNCH_FILE, launch.to_json())
    return launch


def rename_launch(trial_dir: str | Path, launch: Launch) -> Launch | None:
    """Give an existing launch.json the name `launch` has (`NAME_FIELDS`), the rest kept (its
    grid, parent run, tracking): the old Launch when the name changed, else None. A trial
    with no launch.json was never a sweep's: None, nothing written. Raises OSError."""
    path = Path(trial_dir)
    if not (path / LAUNCH_FILE).is_file():
        return None
    old = read_launch(path)
    new = dataclasses.replace(old, **{k: getattr(launch, k) for k in NAME_FIELDS})
    if new == old:
        return None
    atomic_write_json(path / LAUNCH_FILE, new.to_json())
    return old


def read_launch(trial_dir: str | Path) -> Launch:
    """The trial's launch.json; a trial never launched by a sweep (or a file that cannot be
    read) gives the fields its config.yaml holds from before launch.json, else defaults."""
    path = Path(trial_dir)
    try:
        raw = json.loads((path / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict):
        raw = {}
    known = {k: raw[k] for k in LAUNCH_FIELDS if k in raw}
    if any(k not in known for k in LEGACY_CONFIG_KEYS):  # launched before launch.json had them
        for key, value in legacy_fields(path).items():
            known.setdefault(key, value)
    # A hand-edited field of the wrong type is as good as absent (the default).
    known = {
        k: v
        for k, v in known.items()
        if isinstance(v, _TYPES[k]) and not (isinstance(v, bool) and bool not in _TYPES[k])
    }
    return Launch(**known)


def legacy_fields(trial_dir: Path) -> dict[str, Any]:
    """`tracking.variant_base/variant_index/grid_point` of an old trial's config.yaml."""
    try:
        cfg = safe_load_unique((trial_dir / CONFIG_FILE).read_text())
    except Exception:  # no config, or not one this reader can use: no legacy fields
        return {}
    tracking = cfg.get("tracking") if isinstance(cfg, dict) else None
    if not isinstance(tracking, dict):
        return {}
    out: dict[str, Any] = {k: tracking[k] for k in LEGACY_CONFIG_KEYS if k in tracking}
    if isinstance(out.get("grid_point"), str):  # a JSON string in the config
        try:
            out["grid_point"] = json.loads(out["grid_point"] or "{}")
        except ValueError:
            out["grid_point"] = {}
    return out
