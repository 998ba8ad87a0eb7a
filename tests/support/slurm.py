"""The real local SLURM for tests (`cluster/dev-slurm.sh start`): whether it answers, the
`cluster` and `jobs` fixtures (import them into a test module to use them), and the launcher
run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO


def cluster_problem() -> str | None:
    """Why the local SLURM cannot run a test's jobs; None when it can."""
    if shutil.which("sinfo") is None:
        return "no SLURM client here (start one with `cluster/dev-slurm.sh start`)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    states = set(out.stdout.split())
    if out.returncode != 0 or not states & {"idle", "mixed", "allocated", "completing"}:
        return f"SLURM is not up (sinfo: {out.stdout.strip() or out.stderr.strip()}); run `cluster/dev-slurm.sh start`"
    if subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True).returncode != 0:
        return "SLURM accounting (sacct) does not answer; submitit needs it"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM tests need the local cluster: {problem}")
        pytest.skip(problem)


@pytest.fixture
def jobs():
    """Job ids a test submitted; cancelled at the end, whatever happened."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def run_launch(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python sweeps/launch.py ARGS` in `cwd`, to its end (a SLURM launch submits and exits);
    `env`: variables added to this process's (SLURM_CONF: another cluster)."""
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
