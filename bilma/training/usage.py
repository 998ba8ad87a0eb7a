"""What a trial used: GPU-hours, CPU-hours, peak memory and throughput (result.json, MLflow).

Rank 0 measures each attempt from the trainer's start (data loading and model building
count: the allocation is held) to each commit of ckpt/last.pt and to the end of the test.
The sums travel in last.pt's training state (`State.usage`), so a resumed trial adds its
attempts up. The time after an attempt's last commit when it was killed without a signal
(SIGKILL, a node failure) is not counted; the work it lost is redone, and counted, later.

    gpu_hours         GPUs held x wall hours (0 GPUs on a CPU: 0.0)
    cpu_hours         cores held x wall hours (`cores_held`)
    peak_gpu_mem_gb   torch.cuda.max_memory_allocated of rank 0's device (None on a CPU)
    peak_host_mem_gb  the trainer process's peak resident memory (getrusage's maxrss)
    samples_per_s     training samples over training seconds (evaluation left out)
    train_samples     samples trained (optimizer steps x batch x processes)

Sizes are decimal GB (10^9 bytes); the largest value over the attempts is kept.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any

import torch

GB = 1e9


def cores_held(world: int) -> int:
    """CPU cores the trial holds: SLURM's cpus-per-task x processes when SLURM says, else the
    cores this process may run on (the processes of one node share them)."""
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return int(per_task) * world
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def peak_host_gb() -> float:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / GB if sys.platform == "darwin" else rss * 1024 / GB


def _max(a: float | None, b: float | None) -> float | None:
    known = [x for x in (a, b) if x is not None]
    return max(known) if known else None


class UsageMeter:
    """The running attempt's use of the machine, added to what earlier attempts saved."""

    def __init__(self, device: torch.device, world: int):
        self.device = device
        self.gpus = world if device.type == "cuda" else 0
        self.cores = cores_held(world)
        self.t0 = time.monotonic()
        self.before: dict[str, Any] = {}

    def carry(self, saved: dict[str, Any] | None) -> None:
        """Add to the sums of the attempts before (`State.usage` of the resumed last.pt)."""
        self.before = dict(saved or {})

    def total(self) -> dict[str, Any]:
        """The sums over every attempt up to now: what last.pt's state keeps."""
        wall = time.monotonic() - self.t0
        gpu_peak = None
        if self.device.type == "cuda":
            gpu_peak = torch.cuda.max_memory_allocated(self.device) / GB
        b = self.before
        return {
            "wall_seconds": b.get("wall_seconds", 0.0) + wall,
            "gpu_seconds": b.get("gpu_seconds", 0.0) + self.gpus * wall,
            "cpu_seconds": b.get("cpu_seconds", 0.0) + self.cores * wall,
            "peak_gpu_mem_gb": _max(b.get("peak_gpu_mem_gb"), gpu_peak),
            "peak_host_mem_gb": _max(b.get("peak_host_mem_gb"), peak_host_gb()),
        }


def result_fields(
    usage: dict[str, Any], train_seconds: float, train_samples: int
) -> dict[str, Any]:
    """The usage fields of a result (bilma.runs.schema.USAGE_FIELDS) from `UsageMeter.total()`."""
    return {
        "gpu_hours": usage["gpu_seconds"] / 3600,
        "cpu_hours": usage["cpu_seconds"] / 3600,
        "peak_gpu_mem_gb": usage["peak_gpu_mem_gb"],
        "peak_host_mem_gb": usage["peak_host_mem_gb"],
        "samples_per_s": train_samples / train_seconds if train_seconds > 0 else None,
        "train_samples": int(train_samples),
    }
