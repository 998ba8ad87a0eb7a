"""A study's used GPU- and CPU-hours, summed from its trials' results (`--status`, the tables)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def is_positive(x: Any) -> bool:
    """A real number above 0 (not a bool, not None): a usage figure worth counting."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def hours_text(hours: float) -> str:
    """Hours in two significant figures below 10, whole hours above."""
    return f"{hours:.2g}" if hours < 10 else f"{hours:,.0f}"


def totals_line(results: Iterable[dict[str, Any] | None]) -> str | None:
    """ "used: 12 GPU-hours, 40 CPU-hours (9 trials)" over the results that record usage;
    None when none does."""
    gpu = cpu = 0.0
    n = 0
    for r in results:
        if not r or not any(is_positive(r.get(k)) for k in ("gpu_hours", "cpu_hours")):
            continue
        n += 1
        gpu += r["gpu_hours"] if is_positive(r.get("gpu_hours")) else 0.0
        cpu += r["cpu_hours"] if is_positive(r.get("cpu_hours")) else 0.0
    if not n:
        return None
    return f"used: {hours_text(gpu)} GPU-hours, {hours_text(cpu)} CPU-hours ({n} trial{'s' if n != 1 else ''})"
