"""The files that ship inside the package: trainer configs, sweep grids, SLURM profiles and the
published numbers. In a checkout these are links to the folders the user edits (`configs/`,
`sweeps/grids/`, `cluster/profiles/`, `analysis/published.yaml`); a wheel holds copies. Either
way they are found here, so a command works the same from a checkout and from an install.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Resolved: in a checkout, messages name the folder the user edits (sweeps/grids, not this one).
CONFIGS = (ROOT / "configs").resolve()
GRIDS = (ROOT / "grids").resolve()
PROFILES = (ROOT / "profiles").resolve()
PUBLISHED = (ROOT / "published.yaml").resolve()
USAGE = ROOT / "usage.yaml"  # the dry-run estimate's recorded figures (bilma.sweep.estimate)
