"""Shared fixtures: one small synthetic dataset per session and tiny training configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support.tiny import SYNTH_OVERRIDES, tiny_overrides  # noqa: F401  (re-exported)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """30 identities x 2 images at 128x64 (24 train ids), with its tokenizer."""
    from bilma.config import load_config
    from bilma.data import datasets

    root = tmp_path_factory.mktemp("synth_small")
    datasets.ensure_synthetic(load_config(None, [f"data.root={root}", *SYNTH_OVERRIDES]).data)
    return root
