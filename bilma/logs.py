"""The one log format of the command lines and of sweep jobs."""

from __future__ import annotations

import logging


def configure(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr; a no-op if the root logger already has handlers."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
