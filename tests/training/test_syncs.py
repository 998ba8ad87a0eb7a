"""Counting device-to-host syncs on a CPU (bilma/training/syncs.py)."""

from __future__ import annotations

import torch

from bilma.training.syncs import SyncCounter


def count(fn) -> int:
    with SyncCounter() as c:
        fn()
    return c.count


def test_reads_and_value_dependent_shapes_count():
    x = torch.randn(6, requires_grad=True)
    mask = x > 0
    assert count(lambda: x.sum().item()) == 1
    assert count(lambda: float(x.detach().sum())) == 1
    assert count(lambda: bool(mask.any())) == 1
    assert count(lambda: int(x.argmax())) == 1
    assert count(lambda: x.nonzero()) == 1
    assert count(lambda: x[mask]) == 1
    assert count(lambda: x[mask].sum().backward()) == 2  # its backward indexes with the mask too
    assert count(lambda: torch.equal(x, x)) == 1


def test_device_side_work_does_not_count():
    x = torch.randn(6, 4, requires_grad=True)
    mask = x[:, 0] > 0
    rows = torch.tensor([0, 2])

    def work():
        y = torch.where(mask[:, None], x, 0.0).sum() / mask.sum().clamp(min=1)
        (y + x.index_select(0, rows).sum() + x[rows].mean()).backward()

    assert count(work) == 0


def test_the_optimizers_host_step_counters_are_left_out():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], foreach=False)  # reads its step counter with .item()
    p.sum().backward()
    with SyncCounter() as all_ops:
        opt.step()
    assert all_ops.count >= 1
    with SyncCounter(optimizers=[opt], trace=True) as c:
        opt.step()
        p.sum().item()
    assert c.count == 1 and any("test_syncs.py" in where for where in c.where)


def test_tolist_counts_once_and_numpy_of_a_host_tensor_not_at_all():
    x = torch.randn(4)
    assert count(lambda: x.tolist()) == 1
    assert count(lambda: x.numpy().max()) == 0
    assert torch.Tensor.tolist(x) == x.tolist()  # restored after the counter
