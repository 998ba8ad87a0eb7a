"""`bilma <command>` (= `python -m bilma <command>`): dispatch only.

`bilma sweep`, `bilma tables`, ... are whole tools with their own options (`commands.TOOLS`);
the other commands (train, eval, sync, synth, data-info, config, parse, ...) are
`bilma.commands`. `bilma --help` lists them all.
"""

from __future__ import annotations

import importlib
import os
import sys

# Never reach for the hub: a model id that is not a local folder must fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from bilma.commands import TOOLS

    if argv and argv[0] in TOOLS:
        tool = importlib.import_module(TOOLS[argv[0]][0])
        return tool.main(argv[1:], prog=f"bilma {argv[0]}")
    from bilma import commands

    return commands.main(argv)


if __name__ == "__main__":
    sys.exit(main())
