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


@pytest.fixture
def read_only(tmp_path):
    """(src, view): `view` shows `src` through a read-only bind mount, so writes fail with
    EROFS even as root (tests run as root here, where permission bits do not stop writes)."""
    import subprocess

    src, view = tmp_path / "src", tmp_path / "view"
    src.mkdir()
    view.mkdir()
    mount = subprocess.run(["mount", "--bind", str(src), str(view)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        yield src, view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
