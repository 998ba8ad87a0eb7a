"""Where a run computes: its processes (torchrun or SLURM tasks), its device, its autocast.

Below both the trainer and the evaluation, so neither imports the other for these.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bilma.config import Config

log = logging.getLogger(__name__)


@dataclass
class Dist:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _slurm_master(nodelist: str) -> str:
    """The address of the first host of a SLURM node list ('gpu[01-04],cpu7' -> 'gpu01'):
    the rendezvous of the job's processes (MASTER_ADDR)."""
    return _node_address(_first_host(nodelist))


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:  # expand the first range by hand when scontrol is not there
        prefix, rng = head.split("[", 1)
        return prefix + rng.rstrip("]").split(",")[0].split("-")[0]
    return head


def _node_address(node: str) -> str:
    """`node` when its name resolves; else its NodeAddr in SLURM (`scontrol show node`).

    A node's name need not be a DNS name: slurm.conf may map it to an address (NodeAddr=),
    as the local two-node cluster does (n1 and n2 at 127.0.0.1). Every rank would otherwise
    fail in init_process_group on a name that nothing resolves.
    """
    try:
        socket.gethostbyname(node)
        return node
    except OSError:  # socket.gaierror: the name does not resolve
        pass
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", node], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return node
    m = re.search(r"\bNodeAddr=(\S+)", out.stdout) if out.returncode == 0 else None
    if not m or m.group(1) in ("(null)", node):
        return node
    log.info("node %s does not resolve: rendezvous at its NodeAddr %s", node, m.group(1))
    return m.group(1)


def init_distributed() -> Dist:
    """From torchrun's variables, or SLURM's when srun started one process per task."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        d = Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        d = Dist(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        )
        env.setdefault("MASTER_ADDR", _slurm_master(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        # one line in each task's log: where a multi-node job's processes ran and met
        log.info(
            "SLURM task %d of %d on node %s: rendezvous at %s:%s",
            d.rank,
            d.world,
            env.get("SLURMD_NODENAME", "?"),
            env["MASTER_ADDR"],
            env["MASTER_PORT"],
        )
    else:
        return Dist()
    if d.world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=d.rank, world_size=d.world)
    return d


def close_distributed(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def max_over_processes(value: int, d: Dist) -> int:
    """The largest `value` of all processes (every process gets it): shared decisions."""
    if d.world == 1:
        return value
    flag = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def pick_device(d: Dist) -> torch.device:
    """This process's GPU if there is one, else the CPU. Its GPU is the one of its local rank
    among those it sees: cuda:0 where each task sees only its own (SLURM's per-task
    CUDA_VISIBLE_DEVICES: local rank 3 with a single visible device), cuda:LOCAL_RANK where
    it sees the node's."""
    if torch.cuda.is_available():
        index = d.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def autocast_for(cfg: Config, device: torch.device):
    """The autocast context of `train.amp` on `device` (disabled when amp is off)."""
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 on GPU for `auto`; off on CPU, where autocast only slows a small model down."""
    mode = cfg.train.amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16
