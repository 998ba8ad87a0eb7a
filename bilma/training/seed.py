"""The training recipe's pure parts: seeding and the MIM mask generator (functions of the seed
and step only). IRRA's parameter groups and learning-rate schedule are in `bilma.training.optim`."""

from __future__ import annotations

import os

import torch


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def mim_generator(
    seed: int, step: int, rank: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """MIM masks are a function of (seed, step, rank), so a resumed run draws the same ones.
    A generator on the training device draws them there (seeding it reads nothing back); on
    the CPU they are the masks of earlier versions."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 97 + rank)
