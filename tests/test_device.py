"""Where a process computes (bilma/device.py)."""

from __future__ import annotations

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
