"""The training progress line: loss parts and samples per second, every `log_every` steps."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line per `every` steps (rewritten in place on a terminal): loss parts, samples/s."""

    def __init__(self, epoch: int, epochs: int, steps: int, every: int, enabled: bool):
        self.epoch, self.epochs, self.steps, self.every = epoch, epochs, steps, every
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.samples = 0
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, step: int, parts: dict[str, float], batch: int) -> None:
        self.samples += batch
        self.count += 1
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        if self.enabled and (step % self.every == 0 or step == self.steps):
            end = "\r" if self.tty and step < self.steps else "\n"
            print(self.line(step), end=end, file=sys.stderr, flush=True)

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    @property
    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.t0, 1e-9)

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
