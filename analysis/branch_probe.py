"""`python analysis/branch_probe.py --study S`: what the MLM and MIM branches learned.

Everything is in `bilma.analysis.branch_probe`; `--help` lists the options."""

import sys
from pathlib import Path

# From a checkout: this checkout's bilma, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilma.analysis.branch_probe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
