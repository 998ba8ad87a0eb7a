"""Notifications: a JSON POST to a webhook at a study's first failure and at its end.

    python sweeps/launch.py --grid ablation --backend slurm --notify https://hooks.example/T0/B1
    BILMA_NOTIFY_URL=https://... python sweeps/launch.py --grid ablation   # the same

A launch with a URL writes `runs/<study>/notify.json` (mode 0600: the URL may hold a token):
the URL, the study, the grid and the trial ids it runs or follows. Whoever ends a trial asks
`check`: the job right after its trainer returns or raises (every backend that runs
`TrialJob`: local, debug, SLURM; not a job requeued by a time limit or preemption, whose
trial goes on), and the launcher once its trials have ended (waiting backends: it also sees
a job killed before it could say anything, and Ray's trials). Each event is sent at most once
per launch: it is marked in notify.json (under the study's claim) before it is sent.

    {"event": "failure", "study", "grid", "trial": {"trial_id", "variant", "seed", "error"},
     "counts": {...}}
    {"event": "end", "study", "grid", "trials": N, "counts": {"done", "failed",
     "interrupted", "stopped"}, "train_hours", "gpu_hours" (null unless results record it)}

A webhook that is down, slow (`TIMEOUT_S`) or answers an error costs one warning line; it
never stops or slows a sweep by more than the timeout. A launch without a URL removes the
study's notify.json: the latest launch's setting holds, as for its tracking settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bilma.errors import ConfigError, first_line
from bilma.fileio import atomic_write_json
from bilma.runs.lock import claim
from bilma.runs.reading import read_result, read_status
from bilma.runs.schema import NOTIFY_FILE, TrialState
from bilma.runs.trial_dir import TrialDir

log = logging.getLogger(__name__)

ENV_URL = "BILMA_NOTIFY_URL"  # the URL when --notify is not given
TIMEOUT_S = 5.0  # per POST: connect and each read
FAILURE, END = "failure", "end"
ENDED = (TrialState.DONE, TrialState.FAILED, TrialState.INTERRUPTED, TrialState.STOPPED)


def check_url(url: str) -> str:
    """The URL if it is http(s) with a host; a ConfigError naming it otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--notify / ${ENV_URL}: {shown(url)!r} is not an http(s) URL with a host; give "
            "the webhook's full URL, e.g. https://hooks.example.com/services/T0/B1"
        )
    return url


def shown(url: str) -> str:
    """The URL as warnings show it: scheme and host only (the path may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else url


def arm(url: str | None, study_dir: Path, grid: str, trial_ids: list[str]) -> None:
    """Write (a URL) or remove (none) the study's notify.json for this launch."""
    path = study_dir / NOTIFY_FILE
    if not url:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    record = {
        "url": check_url(url),
        "study": study_dir.name,
        "grid": grid,
        "trials": sorted(trial_ids),
        "sent": [],
    }
    study_dir.mkdir(parents=True, exist_ok=True)
    with claim(study_dir):
        atomic_write_json(path, record)
        os.chmod(path, 0o600)


def check(study_dir: Path, ended: str | None = None, timeout_s: float = TIMEOUT_S) -> list[str]:
    """Send what is due for the study (its first failure, its end) and not sent yet; the
    events sent. `ended`: the trial id whose job calls this (its own job counts as ended).
    Never raises."""
    try:
        due = _due(study_dir, ended)
    except Exception as e:  # noqa: BLE001 (a notification never breaks a trial or a launch)
        log.warning("notify: %s not read (%s); no notification", study_dir / NOTIFY_FILE, e)
        return []
    for url, payload in due:
        post(url, payload, timeout_s)
    return [payload["event"] for _, payload in due]


def _due(study_dir: Path, ended: str | None) -> list[tuple[str, dict[str, Any]]]:
    """Under the study's claim: the events due, marked sent in notify.json."""
    path = study_dir / NOTIFY_FILE
    if not path.is_file():
        return []
    with claim(study_dir):
        record = json.loads(path.read_text())
        trials = [TrialDir(study_dir / tid) for tid in record.get("trials", [])]
        states = {d.trial_id: _state(d, d.trial_id == ended) for d in trials}
        counts = {s.value: sum(st is s for st, _ in states.values()) for s in ENDED}
        base = {"study": record.get("study"), "grid": record.get("grid"), "counts": counts}
        sent, due = list(record.get("sent", [])), []
        failed = [d for d in trials if states[d.trial_id][0] is TrialState.FAILED]
        if failed and FAILURE not in sent:
            due.append({"event": FAILURE, **base, "trial": _describe(failed[0])})
        if all(st in ENDED and not alive for st, alive in states.values()) and END not in sent:
            due.append({"event": END, **base, "trials": len(trials), **_hours(trials)})
        if due:
            record["sent"] = sent + [p["event"] for p in due]
            atomic_write_json(path, record)
    return [(record["url"], p) for p in due]


def _state(d: TrialDir, own: bool) -> tuple[TrialState | None, bool]:
    """(the trial's state, whether it goes on): an interrupted trial whose job still runs is
    being requeued, unless that job is the caller's own, which calls this at its end. Done,
    failed and stopped are ended whatever job recorded them (trials packed in one job share
    it: `trials_per_job`)."""
    from bilma.sweep.plan import is_running

    result, _ = read_result(d)
    status = read_status(d)
    state = TrialState.DONE if result is not None else TrialState.parse(status.get("state"))
    goes_on = state is TrialState.INTERRUPTED and not own and is_running(d, status)
    return state, goes_on


def _describe(d: TrialDir) -> dict[str, Any]:
    launch, status = d.read_launch(), read_status(d)
    error = str(status.get("error") or "")
    return {
        "trial_id": d.trial_id,
        "variant": launch.variant,
        "seed": launch.seed,
        "error": error.splitlines()[0] if error else "",
    }


def _hours(trials: list[TrialDir]) -> dict[str, float | None]:
    """Training hours of the finished trials, and their GPU-hours when results record them."""
    results = [r for d in trials if (r := read_result(d)[0]) is not None]
    seconds = sum(float(r.get("train_seconds") or 0.0) for r in results)
    gpu = [float(r["gpu_hours"]) for r in results if isinstance(r.get("gpu_hours"), (int, float))]
    return {
        "train_hours": round(seconds / 3600, 4),
        "gpu_hours": round(sum(gpu), 4) if gpu else None,
    }


def post(url: str, payload: dict[str, Any], timeout_s: float = TIMEOUT_S) -> bool:
    """POST `payload` as JSON; True when the webhook answered 2xx. Anything else (refused,
    timed out, an HTTP error, a bad URL) is one warning line, never an exception."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "bilma-sweep"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
        return True
    except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError, timeouts: OSErrors
        reason = getattr(e, "reason", None) or e
        log.warning(
            "notify: webhook %s not reached for the %s event (%s); the sweep goes on",
            shown(url),
            payload.get("event"),
            first_line(reason) if isinstance(reason, BaseException) else reason,
        )
        return False
