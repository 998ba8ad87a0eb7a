"""cluster/dev-slurm.sh on the running local cluster (marked slurm: .ci/run starts it)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from support.paths import REPO

SCRIPT = REPO / "cluster" / "dev-slurm.sh"


@pytest.mark.slurm
def test_status_and_idempotent_start():
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        reason = f"the local SLURM is not running:\n{status.stdout}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon}: running (pid " in status.stdout
    assert "partition debug*" in status.stdout and "MaxArraySize: 64" in status.stdout
    pids = {line.split()[0]: line for line in status.stdout.splitlines() if "pid" in line}
    t0 = time.time()
    again = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stderr and "cluster up" in again.stderr
    assert time.time() - t0 < 60
    after = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    assert {line.split()[0]: line for line in after.stdout.splitlines() if "pid" in line} == pids


@pytest.mark.parametrize(
    "args", [["restart"], ["status", "--nodes", "3"], ["start", "--nodes"], ["start", "--purge"]]
)
def test_usage(args):
    out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    assert out.returncode == 2 and "usage:" in out.stderr and "--nodes 1|2" in out.stderr
