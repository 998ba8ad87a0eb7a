"""Where and with what a run runs: git commit, package versions, host, SLURM job id.

Nothing here fails: a field that cannot be learned (no git checkout, no SLURM) is None.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bilma.runs.schema import CODE_MANIFEST


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_info(folder: str | Path | None = None) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the checkout holding the code; None if not a checkout."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return {"git_commit": None, "git_dirty": None}
    status = _git(folder, "status", "--porcelain")
    return {"git_commit": commit.strip(), "git_dirty": None if status is None else bool(status)}


def code_info(package: str | Path | None = None) -> dict[str, Any]:
    """The code snapshot this process imported (`bilma.sweep.snapshot`): its id, where it is,
    and the commit, dirty flag and diff hash its manifest recorded when it was made (a
    snapshot holds no git checkout). {} when the package is not a snapshot's."""
    package = Path(package) if package is not None else Path(__file__).resolve().parents[1]
    try:
        manifest = json.loads((package.parent / CODE_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    return {
        "code_snapshot": manifest.get("id"),
        "code_path": str(package),
        "git_commit": manifest.get("commit"),
        "git_dirty": manifest.get("dirty"),
        "git_diff_sha256": manifest.get("diff_sha256"),
    }


def slurm_job_id() -> str | None:
    """The id `squeue`/`sacct` show: "<array job>_<task>" inside an array, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_env() -> dict[str, str | None]:
    """The SLURM variables a trial's status.json records (None outside SLURM)."""
    env = os.environ.get
    return {
        "slurm_job_id": env("SLURM_JOB_ID"),
        "slurm_array_job_id": env("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env("SLURM_ARRAY_TASK_ID"),
    }


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def now_iso() -> str:
    """The local time with its UTC offset, to the second (result.json's "finished")."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def collect_provenance() -> dict[str, Any]:
    """Where and with what this process runs: never fails, fields it cannot learn are None."""
    return {
        **git_info(),
        **code_info(),  # a snapshot's commit and diff instead of none (it has no .git)
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "mlflow": package_version("mlflow"),
        "slurm_job_id": slurm_job_id(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "start_time": now_iso(),
    }
