"""`python sweeps/launch.py --grid ablation.yaml`: run a sweep (the same as `bilma sweep`).

Everything is in `bilma.sweep.cli`; `--help` lists the options."""

import sys
from pathlib import Path

# From a checkout: this checkout's bilma, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilma.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
