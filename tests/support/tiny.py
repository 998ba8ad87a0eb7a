"""The tiny training setup every test shares: `from support.tiny import tiny_overrides`."""

from __future__ import annotations

# 30 identities x 2 images at 128x64: 24 train, 3 val, 3 test identities.
SYNTH_OVERRIDES = [
    "data.synth_ids=30",
    "data.synth_images_per_id=2",
    "data.synth_seed=5",
    "data.image_size=[128,64]",
]


def tiny_overrides(root, runs, *extra: str) -> list[str]:
    """A tiny model on `synth_small` that trains in seconds on the CPU."""
    return [
        f"data.root={root}",
        *SYNTH_OVERRIDES,
        "data.text_length=48",
        "data.num_workers=0",
        "model.name=tiny",
        "model.embed_dim=64",
        "model.cross_depth=1",
        "model.cross_heads=4",
        "mim.depth=1",
        "optim.lr=0.001",
        "optim.warmup_epochs=1",
        "train.epochs=2",
        "train.batch_size=8",
        "train.max_steps_per_epoch=6",
        "train.deterministic=true",
        "eval.batch_size=64",
        f"paths.runs={runs}",
        "tracking.enabled=false",
        *extra,
    ]


# IRRA against BiLMa: the two variants of the launcher's tests.
TWO_VARIANTS = {
    "IRRA": {"loss.mlm_weight": 1.0, "loss.mim_weight": 0},
    "BiLMa": {"loss.mlm_weight": 1.0, "loss.mim_weight": 1.0},
}


def tracked_settings(root, folder, *extra: str) -> dict:
    """A grid's `set:` of tiny trials on `root` under folder/runs, mirrored to the SQLite
    store folder/mlflow.db, with `extra` overrides."""
    from bilma.config import parse_override

    overrides = tiny_overrides(
        root,
        folder / "runs",
        *extra,
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
    )
    settings = dict(parse_override(o) for o in overrides)
    settings["data.root"] = str(root)
    settings["paths.runs"] = str(folder / "runs")
    return settings


def tiny_grid(
    tmp_path, root, seeds: list[int], variants: dict | None = None, study: str = "launch-test",
    name: str = "g.yaml",
):  # fmt: skip
    """A grid file of tiny 1-epoch trials (2 steps) under tmp_path/runs, mirrored to the
    SQLite store tmp_path/mlflow.db; its path."""
    import yaml

    from support.paths import REPO

    settings = tracked_settings(root, tmp_path, "train.epochs=1", "train.max_steps_per_epoch=2")
    grid = {
        "study": study,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": seeds,
        "set": settings,
        "variants": variants or TWO_VARIANTS,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def random_batch(
    n: int = 4,
    size: tuple[int, int] = (128, 64),
    vocab: int = 50,
    length: int = 16,
    classes: int = 20,
    seed: int = 0,
) -> dict:
    """A training batch of random tensors for a model built with `vocab` tokens (EOT the
    largest id, SOT and the MLM mask below it): captions of different lengths, a few MLM
    positions each, per-patch parser classes, two images per identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    eot, sot, mask = vocab - 1, vocab - 2, vocab - 3
    ids = torch.zeros(n, length, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i in range(n):
        k = 4 + (3 * i) % (length - 4)  # caption length, SOT and EOT included
        ids[i, 0], ids[i, k - 1] = sot, eot
        ids[i, 1 : k - 1] = torch.randint(1, mask, (k - 2,), generator=g)
        labels[i, 1 : k - 1 : 2] = ids[i, 1 : k - 1 : 2]
    mlm_ids = torch.where(labels != -100, torch.full_like(ids, mask), ids)
    h, w = size
    return {
        "images": torch.randn(n, 3, h, w, generator=g),
        "caption_ids": ids,
        "mlm_ids": mlm_ids,
        "mlm_labels": labels,
        "patch_labels": torch.randint(0, classes, (n, (h // 16) * (w // 16)), generator=g),
        "pids": torch.arange(n) // 2,
    }
