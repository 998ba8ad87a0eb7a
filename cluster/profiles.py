"""SLURM profiles (cluster/profiles/<name>.yaml) and their translation to submitit."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"


class ProfileError(ValueError):
    """A bad profile: names the file, the key and the fix."""


@dataclass
class Profile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: int | None = None
    time_min: int = 60
    array_parallelism: int = 16
    signal_delay_s: int = 120
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)
    name: str = "default"

    def submitit_parameters(self) -> dict[str, Any]:
        """Parameters for submitit's SlurmExecutor.update_parameters."""
        params: dict[str, Any] = {
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
            "ntasks_per_node": max(1, self.gpus_per_node),  # one process per GPU (DDP)
        }
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb:
            params["mem"] = f"{self.mem_gb}G"
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str | Path) -> Profile:
    """A profile by name (cluster/profiles/NAME.yaml) or path, every key checked."""
    path = Path(name)
    if not path.exists():
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise ProfileError(
            f"no profile '{name}'; available: {', '.join(available())} (in {PROFILES_DIR})"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of keys")
    valid = [f.name for f in fields(Profile) if f.name != "name"]
    for key in data:
        if key not in valid:
            hint = difflib.get_close_matches(str(key), valid, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"valid keys: {', '.join(valid)}"
            raise ProfileError(f"{path}: unknown key '{key}'; {fix}")
    prof = Profile(**data, name=path.stem)
    for key in (
        "gpus_per_node",
        "cpus_per_task",
        "time_min",
        "array_parallelism",
        "signal_delay_s",
    ):
        value = getattr(prof, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProfileError(f"{path}: {key} = {value!r} must be a non-negative integer")
    return prof
