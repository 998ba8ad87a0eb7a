"""The synthetic dataset on disk: generated once (with its tokenizer) where `data.root` points,
reused when its marker matches the config, refused when made with other parameters.

Free of torch on purpose: launchers call it before any trial starts, and importing torch
there cost half of a 100-trial SLURM submission's time.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bilma.config import DataConfig
from bilma.data import formats, synth
from bilma.data.records import DataError
from bilma.data.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


def ensure_synthetic(cfg: DataConfig) -> None:
    """Generate the synthetic dataset (and its tokenizer) if `data.root` does not hold one.

    Images are drawn at `data.image_size`, so the loader never resizes them. A dataset made
    with other parameters is refused rather than silently reused.
    """
    root = Path(cfg.root)
    h, w = cfg.image_size
    if synth.is_complete(root):
        problem = synth_mismatch(cfg)
        if problem:
            raise DataError(problem)
    else:
        log.info(
            "generating the synthetic pedestrian dataset in %s (%d identities x %d images, %dx%d)",
            root,
            cfg.synth_ids,
            cfg.synth_images_per_id,
            h,
            w,
        )
        synth.generate(
            root,
            ids=cfg.synth_ids,
            val_ids=cfg.synth_eval_ids,
            test_ids=cfg.synth_eval_ids,
            images_per_id=cfg.synth_images_per_id,
            seed=cfg.synth_seed,
            height=h,
            width=w,
            workers=min(2, os.cpu_count() or 1),
            lookalike=cfg.synth_lookalike,
            lookalike_share=cfg.synth_lookalike_share,
            pool=cfg.synth_pool,
            local_scale=cfg.synth_local_scale,
            chroma=_chroma(cfg),
        )
    tok_dir = root / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        records = formats.read_annotations("synth", root)
        captions = [c for r in records if r.split == "train" for c in r.captions]
        train_tokenizer(captions, tok_dir)


def _chroma(cfg: DataConfig) -> str:
    return "4:4:4" if cfg.synth_full_chroma else "4:2:0"


def _eval_sizes(cfg: DataConfig) -> dict[str, int]:
    """val_ids and test_ids as the marker records them."""
    sizes = synth.split_sizes(cfg.synth_ids, cfg.synth_eval_ids, cfg.synth_eval_ids)
    return {"val_ids": sizes["val"], "test_ids": sizes["test"]}


def synth_mismatch(cfg: DataConfig) -> str | None:
    """The refusal of a complete synthetic dataset at `data.root` made with other parameters
    than `cfg`'s (one line with the fix); None when it matches or is not there yet."""
    root = Path(cfg.root)
    if not synth.is_complete(root):
        return None
    h, w = cfg.image_size
    wanted = {
        "ids": cfg.synth_ids,
        **_eval_sizes(cfg),
        "images_per_id": cfg.synth_images_per_id,
        "seed": cfg.synth_seed,
        "height": h,
        "width": w,
        "pool": cfg.synth_pool,
        "lookalike": cfg.synth_lookalike,
        "lookalike_share": cfg.synth_lookalike_share if cfg.synth_lookalike else None,
        "local_scale": cfg.synth_local_scale,
        "chroma": _chroma(cfg),
    }
    made = json.loads((root / synth.SYNTH_MARKER).read_text())
    # Written only when not the default (datasets made before an option keep their bytes).
    made.setdefault("pool", "all")
    made.setdefault("lookalike", 0)
    made.setdefault("local_scale", 1.0)
    made.setdefault("chroma", "4:2:0")
    diff = {k: (made.get(k), v) for k, v in wanted.items() if made.get(k) != v}
    if "ids" in diff and cfg.synth_eval_ids is None:  # derived from ids: not news
        diff = {k: v for k, v in diff.items() if k not in ("val_ids", "test_ids")}
    if not diff:
        return None
    what = ", ".join(f"{k} {a} (config: {b})" for k, (a, b) in diff.items())
    return (
        f"{root} holds a synthetic dataset made with {what}; point data.root to another "
        "folder (it is generated there), or delete this one"
    )
