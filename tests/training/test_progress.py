"""The trainer's progress: what it writes for the launcher's live view."""

from __future__ import annotations

import pytest

from bilma.training import progress as progress_mod
from bilma.training.progress import Progress


def test_snapshot_counts_the_steps_left_in_this_and_later_epochs(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: now[0])
    written = []
    bar = Progress(epoch=1, epochs=4, steps=10, every=100, enabled=False, write=written.append)
    for step in (1, 2, 3):  # 1.5 seconds per step
        now[0] += 1.5
        bar.update(step, {"loss": float(step)}, batch=8)
    snap = bar.snapshot(3)
    assert (snap["epoch"], snap["epochs"], snap["step"], snap["steps"]) == (2, 4, 3, 10)
    assert snap["loss"] == pytest.approx(2.0)
    assert snap["samples_per_s"] == pytest.approx(24 / 4.5)
    # 7 steps left in this epoch and 2 x 10 after it, 1.5 s each
    assert snap["eta_s"] == pytest.approx((7 + 20) * 1.5)
    # written at the first step, then once WRITE_EVERY_S (2 s) had passed
    assert [w["step"] for w in written] == [1, 3]


def test_nothing_is_written_without_a_writer():
    bar = Progress(epoch=0, epochs=1, steps=2, every=1, enabled=False)
    bar.update(1, {"loss": 1.0}, batch=2)
    assert bar.snapshot(1)["eta_s"] >= 0
