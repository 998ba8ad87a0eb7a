"""Where a process computes (bilma/device.py)."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import torch

from bilma import device
from bilma.device import Dist, pick_device


@pytest.mark.parametrize(
    ("visible", "local_rank", "expected"),
    [
        (1, 3, 0),  # SLURM: each task sees only its own GPU (CUDA_VISIBLE_DEVICES per task)
        (4, 3, 3),  # torchrun: every process sees the node's GPUs
        (8, 0, 0),
    ],
)
def test_each_process_takes_its_gpu_among_those_it_sees(monkeypatch, visible, local_rank, expected):
    chosen = []
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device.torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(device.torch.cuda, "set_device", chosen.append)
    got = pick_device(Dist(rank=local_rank, world=8, local_rank=local_rank))
    assert got == torch.device("cuda", expected) and chosen == [expected]


def test_without_a_gpu_the_cpu(monkeypatch):
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    assert pick_device(Dist(local_rank=3)) == torch.device("cpu")


# ----------------------------------------------------------------------------- MASTER_ADDR

SHOW_NODE = (
    "NodeName=n1 Arch=x86_64 CoresPerSocket=1\n"
    "   CPUAlloc=1 CPUTot=2 CPULoad=0.50\n"
    "   NodeAddr=127.0.0.1 NodeHostName=n1 Version=22.05.8\n"
)


def fake_slurm(monkeypatch, resolves: set[str], show_node: str | None = SHOW_NODE) -> list:
    """`scontrol` answering `show hostnames` and `show node` (None: not installed), and a
    resolver knowing only `resolves`; the scontrol calls made."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if show_node is None:
            raise FileNotFoundError(cmd[0])
        if cmd[:3] == ["scontrol", "show", "hostnames"]:
            return subprocess.CompletedProcess(cmd, 0, "n1\nn2\n", "")
        return subprocess.CompletedProcess(cmd, 0, show_node, "")

    def gethostbyname(name):
        if name not in resolves:
            raise socket.gaierror(-2, "Name or service not known")
        return "10.0.0.9"

    monkeypatch.setattr(device.subprocess, "run", run)
    monkeypatch.setattr(device.socket, "gethostbyname", gethostbyname)
    return calls


def test_master_is_the_first_node_when_its_name_resolves(monkeypatch):
    calls = fake_slurm(monkeypatch, resolves={"n1"})
    assert device._slurm_master("n[1-2]") == "n1"
    assert calls == [["scontrol", "show", "hostnames", "n[1-2]"]]  # no `show node`


def test_master_is_the_first_nodes_nodeaddr_when_its_name_does_not_resolve(monkeypatch):
    calls = fake_slurm(monkeypatch, resolves=set())
    assert device._slurm_master("n[1-2]") == "127.0.0.1"
    assert calls[-1] == ["scontrol", "show", "node", "n1"]


@pytest.mark.parametrize(
    "show_node",
    [
        None,  # no scontrol: the name, expanded by hand
        "",  # scontrol knows no such node
        "NodeName=n1 NodeAddr=n1 NodeHostName=n1\n",
    ],
)
def test_master_keeps_the_name_without_another_address(monkeypatch, show_node):
    fake_slurm(monkeypatch, resolves=set(), show_node=show_node)
    assert device._slurm_master("n[1-2],cpu7") == "n1"


def test_srun_tasks_rendezvous_at_the_first_nodes_address(monkeypatch, caplog):
    """Two SLURM tasks on nodes n1, n2 whose names resolve nowhere (the local two-node
    cluster): MASTER_ADDR is n1's NodeAddr, the port follows from the job id."""
    fake_slurm(monkeypatch, resolves=set())
    inits = []
    monkeypatch.setattr(device.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(device.dist, "init_process_group", lambda *a, **k: inits.append((a, k)))
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURMD_NODENAME": "n2",
    }
    for var, value in {**slurm, "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "41"}.items():
        monkeypatch.setenv(var, value)
    with caplog.at_level("INFO", logger="bilma.device"):
        d = device.init_distributed()
    assert (d.rank, d.world, d.local_rank) == (1, 2, 0)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and os.environ["MASTER_PORT"] == "20041"
    assert inits == [(("gloo",), {"rank": 1, "world_size": 2})]
    assert "SLURM task 1 of 2 on node n2: rendezvous at 127.0.0.1:20041" in caplog.messages
