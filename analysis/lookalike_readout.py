"""`python analysis/lookalike_readout.py --study S --baseline V`: the local-matching study's
fixed readout (within-group Rank-1, look-alike Rank-1, twin errors; val + test pooled; last and
selected checkpoints; paired tests and the decision rule).

Everything is in `bilma.analysis.readout`; `--help` lists the options."""

import sys
from pathlib import Path

# From a checkout: this checkout's bilma, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilma.analysis.readout import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
