"""Counting the device-to-host synchronisations of a training step, on any device.

A sync is where the host must wait for the device before it can go on: reading a value
(`.item()`, `bool()`, `int()`, `float()` of a tensor, `torch.equal`), an op whose output size
depends on the values (`nonzero`, boolean indexing, `masked_select`, `unique`,
`repeat_interleave` without `output_size`), `tolist()`, and a copy from the device to the
host. Not counted: `.numpy()`, which exists only for host tensors (the trainer reads the
host's copy of a batch with it). On a CPU
nothing waits, but the very same aten ops run, so `SyncCounter` (a `TorchDispatchMode` that
sees every aten call) counts on a CPU what a GPU would wait for: the count is a property of
the code, not of the device. On CUDA, `torch.cuda.set_sync_debug_mode("warn")` is the
device's own check (it warns at each sync the CUDA runtime sees); the counter agrees with it
and also runs where there is no GPU (tests, the CPU benchmark).

The optimizer's step is left out (`SyncCounter(optimizers=...)` pauses inside it): a
non-capturable Adam keeps its step counters on the host, so reading them is no device sync,
and a fused Adam reads nothing.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that read a device value on the host, or whose output size depends on the values.
_READS = {
    aten._local_scalar_dense.default,  # item(), bool(), int(), float()
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
# Ops that sync when one of their index tensors is boolean (they call nonzero).
_BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


def _is_sync(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in _READS:
        return func is not aten.repeat_interleave.Tensor or kwargs.get("output_size") is None
    if func in _BOOL_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
        )
    if func in (aten._to_copy.default, aten.copy_.default):
        src = args[1] if func is aten.copy_.default else args[0]
        dst = args[0].device if func is aten.copy_.default else kwargs.get("device")
        return (
            isinstance(src, torch.Tensor)
            and src.device.type != "cpu"
            and dst is not None
            and torch.device(dst).type == "cpu"
        )
    return False


class SyncCounter(TorchDispatchMode):
    """Counts syncs while active: `with SyncCounter(optimizers=[opt]) as c: step()`; then
    `c.count`, and with `trace=True` `c.where` (a Counter of the Python lines that synced)."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer] = (), trace: bool = False):
        super().__init__()
        self.count = 0
        self.trace = trace
        self.where: Counter[str] = Counter()
        self._paused = 0
        self._hooks = [
            h
            for opt in optimizers
            for h in (
                opt.register_step_pre_hook(lambda *_: self._pause(1)),
                opt.register_step_post_hook(lambda *_: self._pause(-1)),
            )
        ]

    def _pause(self, delta: int) -> None:
        self._paused += delta

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._paused and _is_sync(func, args, kwargs):
            self.count += 1
            if self.trace:
                self.where[_caller()] += 1
        return func(*args, **kwargs)

    def __enter__(self) -> SyncCounter:
        # `tolist()` reads a tensor's values without an aten op on a CPU (on a GPU it copies
        # to the host): counted here, as one sync.
        self._tolist = torch.Tensor.tolist
        counter, tolist = self, self._tolist

        def counted_tolist(t: torch.Tensor) -> Any:
            if not counter._paused:
                counter.count += 1
                if counter.trace:
                    counter.where[_caller()] += 1
            counter._pause(1)
            try:
                return tolist(t)
            finally:
                counter._pause(-1)

        torch.Tensor.tolist = counted_tolist
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.Tensor.tolist = self._tolist
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return super().__exit__(*exc)


def _caller() -> str:
    """The innermost frame outside torch: the line of our code (or a library's) that synced."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} {frame.line}"
    return "?"
