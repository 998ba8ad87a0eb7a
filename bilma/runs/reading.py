"""A trial's status.json and result.json as the launcher reads them: a file that cannot be
read stops only its own trial ("unreadable status: <path>: <reason>"), never the launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bilma.config import ConfigError
from bilma.runs.trial_dir import TrialDir

UNREADABLE = "unreadable"  # the state (and the launcher's action) of such a trial


def read_status(d: TrialDir) -> dict[str, Any]:
    """status.json; a file that cannot be read gives {"state": "unreadable", "error": ...}
    so that it stops only its own trial, never the whole launch."""
    try:
        status = d.status()
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        return {
            "state": UNREADABLE,
            "error": f"unreadable status: {_reason(d.status_path, e)}",
        }
    if not isinstance(status, dict):
        reason = f"{d.status_path}: not a JSON object"
        return {"state": UNREADABLE, "error": f"unreadable status: {reason}"}
    return status


def read_result(d: TrialDir) -> tuple[dict[str, Any] | None, str]:
    """(result.json or None, "" or why it cannot be read)."""
    try:
        result = d.read_result()
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        return None, f"unreadable result: {_reason(d.result_path, e)}"
    if result is None:
        return None, ""
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("R1"), (int, float)):
        return None, f"unreadable result: {d.result_path}: no metrics.R1 in it"
    return result, ""


def _reason(path: Path, e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if str(path) in text else f"{path}: {text}"
