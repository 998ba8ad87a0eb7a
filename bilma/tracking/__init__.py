"""The MLflow mirror of the run record: the store, the mirror, sync, and reading runs back."""
