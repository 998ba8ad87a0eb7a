"""`python analysis/show_retrievals.py --trial runs/<study>`: top-10 retrievals per caption.

Everything is in `bilma.analysis.show_retrievals`; `--help` lists the options."""

import sys
from pathlib import Path

# From a checkout: this checkout's bilma, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilma.analysis.show_retrievals import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
