"""The local launcher's live view of a sweep, drawn with rich.

On a terminal, redrawn in place twice a second:

    smoke: 1 done, 2 running, 0 failed, 1 pending | best test R1 23.50 (IRRA seed=1)
     trial            epoch   step    loss   samples/s   ETA    log
     IRRA seed=2      4/10    31/50   3.214  152         1m20s  runs/smoke/5b7e.../logs/12_0_log.err
     BiLMa seed=1     eval    50/50   4.002  98          2m05s  runs/smoke/54ed.../logs/13_0_log.err

Not on a terminal (a log file, CI), one line per change: a trial seen running (with its log), a
trial's new epoch or evaluation, the study's counts, a trial's end. Never the same line again.

Everything comes from the trials' files through `Follower` (status.json, result.json, and
progress.json, which the trainer rewrites every few seconds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bilma.sweep.follow import Follower, progress_line
from bilma.sweep.plan import Planned
from bilma.sweep.report import log_path

REDRAW_S = 0.5


def fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def trial_label(p: Planned) -> str:
    return f"{p.trial.variant} seed={p.trial.seed}"


def position(progress: dict[str, Any] | None) -> tuple[str, str, str, str, str]:
    """(epoch, step, loss, samples/s, ETA) of a running trial, "" where not known yet."""
    if not progress:
        return ("starting", "", "", "", "")
    phase = progress.get("phase", "train")
    epoch = f"{progress.get('epoch', '?')}/{progress.get('epochs', '?')}"
    if phase == "eval":
        epoch = f"{epoch} eval"
    elif phase == "test":
        epoch = "test"
    step = f"{progress['step']}/{progress['steps']}" if "step" in progress else ""
    loss = progress.get("loss")
    rate = progress.get("samples_per_s")
    return (
        epoch,
        step,
        "" if loss is None else f"{loss:.3f}",
        "" if rate is None else f"{rate:.0f}",
        fmt_eta(progress.get("eta_s")),
    )


class ProgressView:
    """Show `follower`'s trials: a live table on a terminal, lines on change elsewhere.

    `tick()` from the launcher's loop (polls the files when the follower says so), `close()`
    at the end; `say(text)` prints a line above the live table (or plainly)."""

    def __init__(self, follower: Follower, console: Console | None = None):
        self.follower = follower
        self.console = console or Console(highlight=False, soft_wrap=True)  # sys.stdout
        self.live: Live | None = None
        if self.console.is_terminal:
            self.live = Live(
                self._render(), console=self.console, auto_refresh=False, transient=False
            )
            self.live.start()
        self._last_draw = 0.0
        self._said: dict[Path, str] = {}  # trial -> the epoch it was last said at (plain mode)
        self._counts_line = ""

    def say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.console.file, flush=True)

    def tick(self, force: bool = False) -> None:
        self.follower.refresh()
        if self.live is not None:
            now = time.monotonic()
            if force or now - self._last_draw >= REDRAW_S:
                self._last_draw = now
                self.live.update(self._render(), refresh=True)
            return
        self._plain()

    def close(self) -> None:
        """The last state, then the final counts line (kept on screen / in the log)."""
        self.follower.poll()
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
            self.live.stop()
            self.live = None
        else:
            self._plain(final=True)

    # -- terminal
    def _render(self) -> Group:
        f = self.follower
        header = Text(progress_line(f.study, f.snapshot()), style="bold")
        table = Table(box=None, pad_edge=False, header_style="dim")
        for name, justify in (
            ("trial", "left"),
            ("epoch", "right"),
            ("step", "right"),
            ("loss", "right"),
            ("samples/s", "right"),
            ("ETA", "right"),
            ("log", "left"),
        ):
            table.add_column(name, justify=justify, no_wrap=name != "log")
        for p, status, progress in f.running():
            table.add_row(trial_label(p), *position(progress), log_path(p, status))
        return Group(header, table) if table.row_count else Group(header)

    # -- a log file
    def _plain(self, final: bool = False) -> None:
        f = self.follower
        running = f.running()
        for p, status, progress in running:
            epoch, step, loss, rate, eta = position(progress)
            key = p.dir.path
            if key not in self._said:
                where = log_path(p, status)
                self.say(f"  running {trial_label(p)} ({p.dir.trial_id}), log {where}")
                self._said[key] = ""
            if progress and epoch != self._said[key]:
                self._said[key] = epoch
                what = ", ".join(
                    x
                    for x in (
                        f"epoch {epoch}",
                        f"loss {loss}" if loss else "",
                        f"{rate} samples/s" if rate else "",
                        f"ETA {eta}" if eta else "",
                    )
                    if x
                )
                self.say(f"  {trial_label(p)}: {what}")
        line = progress_line(f.study, f.snapshot())
        if final or line[9:] != self._counts_line[9:]:  # line[9:]: without the time of day
            self._counts_line = line
            self.say(line)
