"""SLURM profiles (cluster/profiles/<name>.yaml) and their translation to submitit.

A profile says where and how each trial runs: partition, account, time, CPUs, memory, GPUs,
nodes and tasks (one process per GPU for DDP), gres/constraint, exclusive nodes, extra
`#SBATCH` lines, how many times a trial may be requeued after hitting its time limit, and how
many times (and after how long) a trial that ended of a transient cause is retried.
Every key is checked on load; a typo gets one line naming the file, the line and the nearest
valid key.

`render_sbatch` is the only caller of submitit's private `_make_sbatch_string` (for previews);
tests/cluster/test_profiles.py compares its output with a golden file, so a submitit upgrade
that changes the script fails loudly there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bilma import resources
from bilma.config.yamlfile import did_you_mean, safe_load_unique, suggest, yaml_error
from bilma.errors import ProfileError, shown  # noqa: F401  (ProfileError importable from here too)

PROFILES_DIR = resources.PROFILES


@dataclass
class Profile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1  # processes per node: one per GPU for DDP
    gpus_per_node: int = 0
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: int | None = None
    time_min: int = 60
    array_parallelism: int = 16
    signal_delay_s: int = 120
    max_requeues: int = 30  # requeues after time limits (or preemptions) before giving up
    trials_per_job: int = 1  # trials run one after another in one job (bilma.sweep.pack)
    # Automatic retries of a trial whose attempt ended of a transient cause (node failure,
    # preemption past max_requeues, a NCCL timeout: bilma.sweep.retry), the n-th after
    # retry_backoff_s * 2**(n-1) seconds; other causes never retry without --retry-failed.
    max_transient_retries: int = 2
    retry_backoff_s: int = 60
    gres: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    sbatch_extra: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    name: str = "default"

    @property
    def tasks(self) -> int:
        """Processes of one trial (its DDP world size)."""
        return self.nodes * self.tasks_per_node

    def submitit_parameters(self) -> dict[str, Any]:
        """Parameters for submitit's SlurmExecutor.update_parameters."""
        params: dict[str, Any] = {
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
        }
        for key in ("partition", "account", "qos", "constraint", "gres"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.gpus_per_task:
            params["gpus_per_task"] = self.gpus_per_task
        if self.mem_gb:
            params["mem"] = f"{self.mem_gb}G"
        if self.exclusive:
            params["exclusive"] = True
        if self.setup:
            params["setup"] = list(self.setup)
        extra = dict(parse_sbatch_line(line) for line in self.sbatch_extra)
        if extra:
            params["additional_parameters"] = extra
        return params


# Which python type each key takes, and whether 0 is allowed for integers.
_INT_MIN = {
    "nodes": 1,
    "tasks_per_node": 1,
    "gpus_per_node": 0,
    "gpus_per_task": 0,
    "cpus_per_task": 1,
    "mem_gb": 1,
    "time_min": 1,
    "array_parallelism": 1,
    "signal_delay_s": 0,
    "max_requeues": 0,
    "trials_per_job": 1,
    "max_transient_retries": 0,
    "retry_backoff_s": 0,
}
_STR = ("partition", "account", "qos", "gres", "constraint")
_LISTS = ("sbatch_extra", "setup")
VALID_KEYS = [f.name for f in fields(Profile) if f.name != "name"]

# `#SBATCH` options the profile already sets through its own keys.
_OWNED_OPTIONS = {
    "partition": "partition",
    "p": "partition",
    "account": "account",
    "A": "account",
    "qos": "qos",
    "nodes": "nodes",
    "N": "nodes",
    "ntasks-per-node": "tasks_per_node",
    "ntasks": "tasks_per_node",
    "n": "tasks_per_node",
    "gpus-per-node": "gpus_per_node",
    "gpus-per-task": "gpus_per_task",
    "cpus-per-task": "cpus_per_task",
    "c": "cpus_per_task",
    "mem": "mem_gb",
    "time": "time_min",
    "t": "time_min",
    "signal": "signal_delay_s",
    "gres": "gres",
    "constraint": "constraint",
    "C": "constraint",
    "exclusive": "exclusive",
    "array": "array_parallelism",
    "output": "(set by the launcher)",
    "error": "(set by the launcher)",
    "job-name": "(set by the launcher)",
}


def parse_sbatch_line(line: str) -> tuple[str, Any]:
    """'--mail-type=END' (or '#SBATCH --mail-type END', '--hold') -> ('mail-type', 'END')."""
    text = re.sub(r"^#SBATCH\s+", "", line.strip())
    m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:[= ]\s*(.+))?", text)
    if not m:
        raise ValueError(f"'{line}' is not an sbatch option; write it as --option=value")
    value = m.group(2).strip() if m.group(2) else True
    return m.group(1), value


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _key_lines(text: str) -> dict[str, int]:
    """Line number (1-based) of each top-level key, for error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def _resolve(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ProfileError(f"profile file {path} does not exist")
        return path
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        fix = did_you_mean(name, available()) + " " if suggest(name, available()) else ""
        raise ProfileError(
            f"no profile '{name}'; {fix}available: {', '.join(available())} (in {PROFILES_DIR}),"
            " or give a path to a .yaml file"
        )
    return path


def load_profile(name: str | Path) -> Profile:
    """A profile by name (cluster/profiles/NAME.yaml) or path, every key checked."""
    path = _resolve(name)
    text = path.read_text()
    try:
        data = safe_load_unique(text)  # a key given twice is refused, as in configs and grids
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}{yaml_error(e)}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of keys (partition:, time_min:, ...)")
    lines = _key_lines(text)
    for key in data:
        where = f"{path}: line {lines[str(key)]}" if str(key) in lines else str(path)
        if key not in VALID_KEYS:
            fix = did_you_mean(key, VALID_KEYS, f"valid keys: {', '.join(VALID_KEYS)}", cutoff=0.5)
            raise ProfileError(f"{where}: unknown key '{key}'; {fix}")
        _check_value(key, data[key], where)
    prof = Profile(**data)
    prof.name = path.stem
    _check_combination(prof, path)
    return prof


def _check_value(key: str, value: Any, where: str) -> None:
    if key in _INT_MIN:
        if value is None and key == "mem_gb":
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < _INT_MIN[key]:
            what = "a positive integer" if _INT_MIN[key] else "a non-negative integer"
            raise ProfileError(f"{where}: {key} = {shown(value)} must be {what}")
    elif key in _STR:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ProfileError(f"{where}: {key} = {shown(value)} must be a string (or null)")
    elif key == "exclusive":
        if not isinstance(value, bool):
            raise ProfileError(f"{where}: exclusive = {shown(value)} must be true or false")
    elif key in _LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f'{where}: {key} must be a list of strings, e.g. ["..."]')
        if key == "sbatch_extra":
            for line in value:
                try:
                    option, _ = parse_sbatch_line(line)
                except ValueError as e:
                    raise ProfileError(f"{where}: sbatch_extra: {e}") from None
                if option in _OWNED_OPTIONS:
                    raise ProfileError(
                        f"{where}: sbatch_extra sets --{option}, which the profile key "
                        f"{_OWNED_OPTIONS[option]} controls; use that key instead"
                    )


def _check_combination(prof: Profile, path: Path) -> None:
    if prof.gpus_per_node and prof.gpus_per_task:
        raise ProfileError(f"{path}: give gpus_per_node or gpus_per_task, not both")
    if prof.gpus_per_node and prof.gpus_per_node != prof.tasks_per_node:
        raise ProfileError(
            f"{path}: gpus_per_node = {prof.gpus_per_node} but tasks_per_node = "
            f"{prof.tasks_per_node}: the trainer runs one process per GPU; set tasks_per_node: "
            f"{prof.gpus_per_node} (or use gpus_per_task)"
        )
    if prof.signal_delay_s >= prof.time_min * 60:
        raise ProfileError(
            f"{path}: signal_delay_s = {prof.signal_delay_s} is not shorter than time_min = "
            f"{prof.time_min} minutes; the trial would be signalled at once"
        )


def render_sbatch(
    params: dict[str, Any], command: str, folder: str | Path, job_name: str, array_size: int | None
) -> str:
    """The sbatch file submitit writes for these parameters (its private renderer, kept here
    behind one function; the golden-file test guards it)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(
        command=command,
        folder=folder,
        job_name=job_name,
        map_count=array_size if array_size and array_size > 1 else None,
        **params,
    )
