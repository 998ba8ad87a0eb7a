"""The training progress: a line every `log_every` steps (loss parts, samples per second) and,
for the launcher's live view, the trial's progress.json every few seconds. The loss parts
are summed on the device (`LossMeter`) and read only for those lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

WRITE_EVERY_S = 2.0  # progress.json at most this often (and at the end of every epoch)


class Progress:
    """One epoch's progress: one line per `every` steps (rewritten in place on a terminal), and
    `write(snapshot)` (the trial's progress.json) at most every WRITE_EVERY_S seconds."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        every: int,
        enabled: bool,
        write: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.epoch, self.epochs, self.steps, self.every = epoch, epochs, steps, every
        self.enabled = enabled
        self.write = write
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.samples = 0
        self.steps_here = 0  # steps this process ran in this epoch (a resumed epoch: fewer)
        self.sums: dict[str, float] = {}
        self.count = 0
        self._written = float("-inf")  # the first step writes

    def update(self, step: int, parts: dict[str, float] | None, batch: int) -> None:
        """Step `step` done on `batch` samples; `parts`: its loss parts, if known on the host
        (the trainer sets the sums with `set_sums` instead, when it reads them)."""
        self.samples += batch
        self.steps_here += 1
        for k, v in (parts or {}).items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += parts is not None
        if self.enabled and (step % self.every == 0 or step == self.steps):
            end = "\r" if self.tty and step < self.steps else "\n"
            print(self.line(step), end=end, file=sys.stderr, flush=True)
        now = time.perf_counter()
        if self.write is not None and (now - self._written >= WRITE_EVERY_S or step == self.steps):
            self._written = now
            self.write(self.snapshot(step))

    def set_sums(self, sums: dict[str, float], count: int) -> None:
        """The epoch's loss sums over `count` steps, as last read (`LossMeter.read`)."""
        self.sums, self.count = dict(sums), count

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    @property
    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.t0, 1e-9)

    def snapshot(self, step: int, phase: str = "train") -> dict[str, Any]:
        """progress.json's fields (bilma.runs.schema.PROGRESS_FIELDS but `updated`)."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        steps_left = (self.steps - step) + (self.epochs - self.epoch - 1) * self.steps
        per_step = elapsed / self.steps_here if self.steps_here else None
        return {
            "phase": phase,
            "epoch": self.epoch + 1,
            "epochs": self.epochs,
            "step": step,
            "steps": self.steps,
            "loss": self.means().get("loss"),
            "samples_per_s": self.rate if self.steps_here else None,
            "eta_s": None if per_step is None else steps_left * per_step,
        }

    def line(self, step: int) -> str:
        m = self.means()
        parts = " ".join(f"{k} {v:.3f}" for k, v in m.items() if k != "loss")
        bar_len = 20
        done = int(bar_len * step / max(self.steps, 1))
        bar = "#" * done + "." * (bar_len - done)
        return (
            f"epoch {self.epoch + 1}/{self.epochs} [{bar}] {step}/{self.steps} "
            f"loss {m.get('loss', float('nan')):.3f} ({parts}) {self.rate:.0f} samples/s"
        )


class LossMeter:
    """The epoch's running sums of the loss parts, kept on the device: `add` every step
    (no sync), `read` when a line is due (one sync). Sums are float64 and added in step
    order, so they equal the host's `sum(float(part))` of earlier versions bit for bit, and a
    resumed epoch (started from the saved sums) reports the same means."""

    def __init__(self, sums: dict[str, float], count: int, device: torch.device):
        self.keys = list(sums)
        self.count = count
        self.device = device
        self.acc = torch.tensor([sums[k] for k in self.keys], dtype=torch.float64, device=device)

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        if list(parts) != self.keys:  # the first step of the epoch names the parts
            old = dict(zip(self.keys, self.acc.tolist(), strict=True)) if self.keys else {}
            self.keys = list(parts)
            start = [old.get(k, 0.0) for k in self.keys]
            self.acc = torch.tensor(start, dtype=torch.float64, device=self.device)
        self.acc += torch.stack([v.detach().reshape(()) for v in parts.values()]).double()
        self.count += 1

    def read(self) -> tuple[dict[str, float], int]:
        """(sums, steps summed): reads the device."""
        return dict(zip(self.keys, self.acc.tolist(), strict=True)), self.count
