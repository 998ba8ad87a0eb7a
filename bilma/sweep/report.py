"""Tables of a sweep's trials, read from their directories."""

from __future__ import annotations

from pathlib import Path

from bilma.runs.causes import cause_of_slurm_state, settled_cause
from bilma.runs.launch import read_launch
from bilma.runs.reading import UNREADABLE, read_result, read_status
from bilma.runs.schema import REUSED_FROM, TrialState
from bilma.runs.totals import totals_line
from bilma.sweep.plan import Action, Planned
from bilma.sweep.snapshot import short

NEW = "new"  # the state column of a trial with no status.json yet


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def log_path(p: Planned, status: dict | None = None) -> str:
    """Where the trial's job writes its log (its directory if no job is recorded)."""
    status = read_status(p.dir) if status is None else status
    job = status.get("job_id")
    if status.get("backend") == "local" and job:
        return str(p.dir.path / "logs" / f"{job}_0_log.err")
    if status.get("backend") == "slurm" and job:
        # submitit's folder of the SLURM backend: runs/<study>/slurm/<job id>/
        return str(p.dir.path.parent / "slurm" / str(job) / f"{job}_0_log.err")
    return str(p.dir.path)


def shown_cause(status: dict, job: str = "") -> str:
    """The cause of a trial's last attempt: status.json's, or what SLURM's state of its ended
    job says (`job`: the backend's view, '12_3 NODE_FAIL') while status.json has not been
    told (a --status before the launch that records it)."""
    state = TrialState.parse(status.get("state"))
    _, _, slurm = job.partition(" ")
    if state in (TrialState.RUNNING, TrialState.PENDING):  # a job that died without a word
        return settled_cause(None, slurm) or ""
    if state is TrialState.FAILED:
        return settled_cause(status.get("cause"), slurm) or ""
    if state is TrialState.INTERRUPTED:
        return cause_of_slurm_state(slurm) or status.get("cause") or ""
    return ""


def status_table(
    planned: list[Planned], jobs: dict[Path, str] | None = None, job_column: str = "job"
) -> str:
    """Variant, seed, trial id, state, why its last attempt ended (`shown_cause`), attempts,
    test R1 and where the log is; with `jobs`
    (trial directory -> the backend's view of its job: `Backend.status`), that view next to
    the directory's, in a column `job_column`."""
    rows = []
    results = []  # for the study's totals of GPU- and CPU-hours
    for p in planned:
        status = read_status(p.dir)
        result, problem = read_result(p.dir)
        results.append(result)
        state = TrialState.DONE if result else status.get("state", NEW)
        if p.action is Action.SKIP_RUNNING and state != TrialState.PENDING:
            state = TrialState.RUNNING
        if problem or state == UNREADABLE:  # the reason instead of a state
            state = problem or status["error"]
        elif status.get(REUSED_FROM):  # bilma.sweep.reuse: trained in that study
            state = f"{state} (reused from {status[REUSED_FROM]})"
        r1 = f"{result['metrics']['R1']:.2f}" if result else ""
        cause = "" if result else shown_cause(status, (jobs or {}).get(p.dir.path, ""))
        rows.append(
            [
                p.trial.variant,
                str(p.trial.seed),
                p.dir.trial_id,
                str(state),
                cause,
                str(status.get("attempts", 0)),
                r1,
                log_path(p, status),
            ]
        )
        if jobs:
            rows[-1].insert(4, jobs.get(p.dir.path, ""))
    header = ["variant", "seed", "trial", "state", "cause", "attempts", "R1", "log"]
    if jobs:
        header.insert(4, job_column)
    codes = [short(read_launch(p.dir.path).code) for p in planned]
    if any(codes):  # the code snapshot each trial's jobs import (bilma.sweep.snapshot)
        header.insert(-1, "code")
        for row, code in zip(rows, codes, strict=True):
            row.insert(-1, code)
    used = totals_line(results)  # bilma/runs/totals.py
    return _table(header, rows) + (f"\n{used}" if used else "")


def plan_table(planned: list[Planned]) -> str:
    """What a launch would do with each trial."""
    rows = [
        [p.trial.variant, str(p.trial.seed), p.dir.trial_id, str(p.action), p.note] for p in planned
    ]
    return _table(["variant", "seed", "trial", "action", "note"], rows)
