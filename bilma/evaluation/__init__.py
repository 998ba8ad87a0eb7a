"""Evaluation: text-to-image retrieval of a model on a split, its metrics, look-alike metrics."""
