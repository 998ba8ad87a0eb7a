"""The slurm backend across two nodes: the two-node SLURM of `cluster/dev-slurm.sh start
--nodes 2` (nodes n1 and n2, two slurmd of this machine, reached through SLURM_CONF), and a
trial of two SLURM tasks, one per node, that trains with DDP across them.

Marked `slurm`: the fixture starts the two-node cluster beside the single-node one that
`.ci/run` starts (it shares that cluster's munged) and stops it after. Without it these tests
fail in CI (CI=true) and are skipped, with the reason, when run by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
import yaml
from support import slurm as slurm_support
from support.paths import REPO
from support.tiny import tiny_overrides

from bilma.config import parse_override
from bilma.sweep.backends.profiles import load_profile

pytestmark = pytest.mark.slurm
SCRIPT = REPO / "cluster" / "dev-slurm.sh"
TWO_CONF = {"SLURM_CONF": "/etc/slurm-two/slurm.conf"}  # what takes a client to that cluster
DEADLINE = 300  # seconds for the trial to finish (~20 s on an idle machine; busy CI is slower)


def on_two(*cmd: str) -> subprocess.CompletedProcess:
    """A SLURM client command run against the two-node cluster."""
    return subprocess.run(
        cmd, env=dict(os.environ, **TWO_CONF), capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def two_nodes():
    """The two-node cluster, started for this module and stopped after (left running when it
    ran before)."""

    def unavailable(reason: str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"two-node SLURM tests: {reason}")
        pytest.skip(reason)

    # It needs the single-node cluster's munged, and stopping it must not leave that running.
    if problem := slurm_support.cluster_problem():
        unavailable(f"the single-node cluster is not up: {problem}")
    was_up = subprocess.run(["bash", SCRIPT, "status", "--nodes", "2"], capture_output=True)
    start = subprocess.run(
        ["bash", SCRIPT, "start", "--nodes", "2"], capture_output=True, text=True, timeout=300
    )
    if start.returncode != 0:
        unavailable(f"`dev-slurm.sh start --nodes 2` failed:\n{start.stderr[-3000:]}")
    yield
    if was_up.returncode != 0:
        subprocess.run(["bash", SCRIPT, "stop", "--nodes", "2"], capture_output=True, timeout=120)


@pytest.fixture
def two_jobs():
    """Job ids submitted to the two-node cluster; cancelled THERE at the end (the same id on
    the single-node cluster is another job)."""
    ids: list[str] = []
    yield ids
    if ids:
        on_two("scancel", *ids)


def test_two_idle_nodes_beside_the_single_node_cluster(two_nodes):
    nodes = on_two("sinfo", "-h", "-N", "-o", "%N %T")
    assert nodes.returncode == 0, nodes.stderr
    assert sorted(nodes.stdout.splitlines()) == ["n1 idle", "n2 idle"], nodes.stdout
    assert "ClusterName             = bilmatwo" in on_two("scontrol", "show", "config").stdout
    # the single-node cluster (no SLURM_CONF) is still there and knows neither node
    single = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True)
    assert single.returncode == 0 and single.stdout.split() and "n1" not in single.stdout.split()
    # `start --nodes 2` again: a no-op, the same daemons
    status = subprocess.run(
        ["bash", SCRIPT, "status", "--nodes", "2"], capture_output=True, text=True
    )
    again = subprocess.run(
        ["bash", SCRIPT, "start", "--nodes", "2"], capture_output=True, text=True
    )
    assert again.returncode == 0 and "starting" not in again.stderr, again.stderr
    after = subprocess.run(
        ["bash", SCRIPT, "status", "--nodes", "2"], capture_output=True, text=True
    )
    assert after.stdout == status.stdout and "slurmd n2: running (pid" in after.stdout
    # one task on each node through srun
    tasks = on_two("srun", "-N2", "-n2", "bash", "-c", "echo $SLURM_PROCID $SLURMD_NODENAME")
    assert sorted(tasks.stdout.splitlines()) == ["0 n1", "1 n2"], tasks.stderr


def test_ddp_trial_across_two_nodes(two_nodes, two_jobs, synth_small, tmp_path):
    """Profile local-slurm-2nodes (nodes 2, one task each): the trial trains with world size 2, rank 0
    on n1 and rank 1 on n2, meeting at n1's NodeAddr (n1 resolves nowhere, and the profile
    sets no MASTER_ADDR), and writes its result."""
    study = f"twonode-{os.getpid()}"
    sets = tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "study": study,
                "base": str(REPO / "configs" / "synth_tiny.yaml"),
                "seeds": [1],
                "set": dict(parse_override(o) for o in sets),
                "variants": {"only": {}},
            },
            sort_keys=False,
        )
    )
    profile = load_profile("local-slurm-2nodes")
    assert (profile.nodes, profile.tasks_per_node, profile.setup) == (2, 1, [])  # no MASTER_ADDR
    proc = slurm_support.run_launch(
        "--grid",
        str(grid),
        "--backend",
        "slurm",
        "--profile",
        "local-slurm-2nodes",
        cwd=tmp_path,
        env=TWO_CONF,
    )
    out = proc.stdout + proc.stderr
    two_jobs += re.findall(r"submitted 1 trials as job (\d+)", out)
    assert proc.returncode == 0 and two_jobs, out
    assert "2 task(s) per trial" in out, out
    (trial,) = [p for p in (tmp_path / "runs" / study).glob("*") if (p / "config.yaml").exists()]
    logs = trial.parent / "slurm" / two_jobs[0]

    def log_text() -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*_log.*")))

    deadline = time.time() + DEADLINE
    while not (trial / "result.json").exists():
        state = json.loads((trial / "status.json").read_text()).get("state")
        if state == "failed" and not on_two("squeue", "-h", "-j", two_jobs[0]).stdout.strip():
            pytest.fail(f"the trial failed:\n{log_text()[-4000:]}")
        assert time.time() < deadline, f"no result after {DEADLINE} s:\n{log_text()[-4000:]}"
        time.sleep(1)

    result = json.loads((trial / "result.json").read_text())
    assert result["epochs"] == 1 and {"R1", "mAP"} <= set(result["metrics"]), result
    text = log_text()
    assert re.search(r"batch 8 x 2 process\(es\)", text), text[-3000:]
    # each task's own log: rank 0 on n1, rank 1 on n2, both meeting at n1's NodeAddr (n1
    # resolves nowhere: bilma.device asked `scontrol show node n1`)
    for rank, node in ((0, "n1"), (1, "n2")):
        err = (logs / f"{two_jobs[0]}_{rank}_log.err").read_text()
        assert "node n1 does not resolve: rendezvous at its NodeAddr 127.0.0.1" in err, err
        assert f"SLURM task {rank} of 2 on node {node}: rendezvous at 127.0.0.1:" in err, err
    job = on_two("scontrol", "show", "job", two_jobs[0]).stdout
    assert re.search(r"\bNodeList=n\[1-2\]", job) and "NumNodes=2" in job, job
