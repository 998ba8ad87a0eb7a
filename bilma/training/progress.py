"""The training progress: a line every `log_every` steps (loss parts, samples per second) and,
for the launcher's live view, the trial's progress.json every few seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

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

    def update(self, step: int, parts: dict[str, float], batch: int) -> None:
        self.samples += batch
        self.steps_here += 1
        self.count += 1
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        if self.enabled and (step % self.every == 0 or step == self.steps):
            end = "\r" if self.tty and step < self.steps else "\n"
            print(self.line(step), end=end, file=sys.stderr, flush=True)
        now = time.perf_counter()
        if self.write is not None and (now - self._written >= WRITE_EVERY_S or step == self.steps):
            self._written = now
            self.write(self.snapshot(step))

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
