"""The fixtures every tracking test uses: MLflow isolated from the repository and from any
outside server (autouse), and one SQLite store per test module."""

from support.tracking import _isolated, store  # noqa: F401 (pytest finds fixtures by name)
