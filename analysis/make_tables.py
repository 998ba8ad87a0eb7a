"""`python analysis/make_tables.py`: benchmark and ablation tables (the same as `bilma tables`).

Everything is in `bilma.analysis.make_tables`; `--help` lists the options."""

import sys
from pathlib import Path

# From a checkout: this checkout's bilma, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilma.analysis.make_tables import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
