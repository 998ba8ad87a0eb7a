"""`python sweeps/parse.py`: `bilma parse` over N shards, on local GPUs or SLURM.

Everything is in `bilma.sweep.parse_shards`; `--help` lists the options. Parse jobs queued
before the package was layered unpickle `sweeps.parse.ParseShardJob`: it is re-exported here."""

import sys
from pathlib import Path

# From a checkout: this checkout's bilma, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilma.sweep.parse_shards import ParseShardJob, main  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
