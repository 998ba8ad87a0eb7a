"""A trained model's encoders as a transformers CLIP folder, and the build-once pretrained CLIP.

`python -m bilma export-clip --checkpoint CKPT --out DIR` writes what
`CLIPModel.from_pretrained(DIR)` and `CLIPTokenizer.from_pretrained(DIR)` read (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.json,
merges.txt) plus `bilma_export.json` (where it came from). `model.pretrained: DIR` then loads
it through exactly the code that loads OpenAI's ViT-B/16 (`bilma.model.clip.load_pretrained`).
The folder is written under a temporary name and renamed into place (`fileio.atomic_dir`).

Position table. CLIP's format has one square table of (S*S + 1) rows (`image_size / patch`
squared); a pedestrian model has a non-square grid (h, w), e.g. 8x4 for 128x64. The export
uses S = lcm(h, w) and repeats each patch row S/h times and each column S/w times
(nearest-neighbour blocks). Loading resizes the table bilinearly, align_corners=False, as IRRA
does: with an integer factor k every output sample falls inside one block of equal rows
(weight 0 for odd k, 1/2 and 1/2 for even k), so the trained table comes back bit-exact and
`model.pretrained: DIR` at the trained image size reproduces the trained encoders exactly.
transformers' own `interpolate_pos_encoding=True` resamples bicubically at each forward: it
lands on block centres (exact) only when S/h and S/w are both odd, as for a square grid and
for the 3:1 grids of 384x128 (24x8, S=24) and 192x64 (12x4, S=12); for 2:1 grids (8x4) it
mixes neighbouring blocks and the features differ slightly (`exact_in_transformers`).
Interpolating to another shape in the exported config (S = max(h, w)) would instead lose the
trained table on the way back.

Not exported: the MIM mask token and every head (classifier, MLM, MIM), which are not part of
CLIP; a fine-tuning run initialises them as it does for OpenAI's weights. The logit scale is
the learned ITC temperature when the model has one, else 1 / model.temperature.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bilma.config import Config, canonical, differences, from_dict, to_dict, trial_id
from bilma.data.records import DataError
from bilma.fileio import atomic_dir, atomic_write_json, atomic_write_text, files_like_umask

log = logging.getLogger(__name__)

EXPORT_MARKER = "bilma_export.json"
"""Written into every exported folder: source checkpoint, grid, pretraining config hash."""

# Our encoder module names -> CLIPModel's.
_PREFIXES = {
    "vision.": "vision_model.",
    "text.": "text_model.",
    "visual_projection.": "visual_projection.",
    "text_projection.": "text_projection.",
}
_NOT_CLIP = ("mask_token",)  # BiLMa's MIM mask token lives in the encoders but is not CLIP's
_POS_KEY = "vision_model.embeddings.position_embedding.weight"


def square_side(grid: tuple[int, int] | list[int]) -> int:
    """S of the exported S x S table: the least common multiple of the grid's sides."""
    return math.lcm(int(grid[0]), int(grid[1]))


def square_table(table: torch.Tensor, grid: tuple[int, int] | list[int]) -> torch.Tensor:
    """[1 + h*w, D] -> [1 + S*S, D]: CLS row kept, each patch row/column repeated in blocks."""
    h, w = int(grid[0]), int(grid[1])
    s = square_side(grid)
    cls, patches = table[:1], table[1:].reshape(h, w, -1)
    patches = patches.repeat_interleave(s // h, dim=0).repeat_interleave(s // w, dim=1)
    return torch.cat([cls, patches.reshape(s * s, -1)], 0)


def exact_in_transformers(grid: tuple[int, int] | list[int]) -> bool:
    """Whether transformers' bicubic `interpolate_pos_encoding` gives back the grid's table."""
    s = square_side(grid)
    return all((s // int(g)) % 2 == 1 for g in grid)


def hf_clip_model(encoders: Any, logit_scale: float) -> Any:
    """A transformers `CLIPModel` holding the weights of bilma's `CLIPEncoders`."""
    from transformers import CLIPModel

    from bilma.model.clip import _hf_config

    spec = encoders.spec
    s = square_side(spec.grid)
    hf = CLIPModel(_hf_config(replace(spec, grid=(s, s))))
    state: dict[str, torch.Tensor] = {}
    for key, value in encoders.state_dict().items():
        if key in _NOT_CLIP:
            continue
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise DataError(f"encoder weight {key!r} has no place in a CLIP model")
        state[_PREFIXES[prefix] + key[len(prefix) :]] = value.detach().float()
    state[_POS_KEY] = square_table(state[_POS_KEY], spec.grid)
    state["logit_scale"] = torch.tensor(float(logit_scale))
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def model_logit_scale(model: Any) -> float:
    """log(1 / temperature): the learned ITC scale if the model has one, else the SDM one."""
    learned = getattr(model, "itc_logit_scale", None)
    if isinstance(learned, torch.Tensor):
        return float(learned.detach())
    return math.log(1.0 / model.cfg.model.temperature)


def write_tokenizer(source: Path, out: Path, context: int) -> None:
    """vocab.json and merges.txt as they are, plus the files `CLIPTokenizer.from_pretrained`
    reads (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from transformers import CLIPTokenizer

    from bilma.data.tokenizer import MASK, _read_folder, load_tokenizer

    load_tokenizer(source)  # one clear error for a bad folder before anything is written
    vocab, merges = _read_folder(source)
    for name in ("vocab.json", "merges.txt"):
        atomic_write_text(out / name, (source / name).read_text(encoding="utf-8"))
    extra = {"mask_token": MASK} if MASK in vocab else {}
    hf = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context, **extra)
    hf.save_pretrained(out)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        **extra,
    }
    atomic_write_json(out / "special_tokens_map.json", special)


def export_clip(
    checkpoint: str | Path, out: str | Path, pretrain: Config | None = None
) -> dict[str, Any]:
    """Write the checkpoint's encoders and tokenizer as a CLIP folder at `out`; return its
    `bilma_export.json` content."""
    from bilma.data.tokenizer import tokenizer_folder
    from bilma.model.bilma import build_from_signature
    from bilma.training import checkpoint as ckpt_io

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; export-clip writes a folder: give --out a folder path")
    if out.exists() and any(out.iterdir()) and read_export_info(out) is None:
        raise DataError(
            f"{out} exists and is not an exported CLIP folder (no {EXPORT_MARKER}); it is left "
            "as it is: choose another --out, or delete it first"
        )
    ckpt = ckpt_io.load(checkpoint)
    cfg = from_dict(ckpt["config"], where=str(checkpoint))
    model = build_from_signature(ckpt["signature"], cfg)
    ckpt_io.load_model_state(model, ckpt, checkpoint)
    spec = model.encoders.spec
    tok_dir = tokenizer_folder(cfg)
    hf = hf_clip_model(model.encoders, model_logit_scale(model))
    info = {
        "format": 1,
        "source_checkpoint": str(checkpoint.resolve()),
        "epoch": ckpt.get("epoch"),
        "trial_id": trial_id(cfg),
        "pretrain_config": None if pretrain is None else trial_id(pretrain),
        "pretrain_keys": None if pretrain is None else json.loads(canonical(pretrain)),
        "grid": list(spec.grid),
        "image_size": [spec.grid[0] * spec.patch, spec.grid[1] * spec.patch],
        "square_side": square_side(spec.grid),
        "exact_in_transformers": exact_in_transformers(spec.grid),
        "tokenizer": str(tok_dir),
        "config": to_dict(cfg),
    }
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp)
        write_tokenizer(tok_dir, tmp, spec.context)
        atomic_write_json(tmp / EXPORT_MARKER, info)
        files_like_umask(tmp)
        # An earlier export is replaced whole: refuse if the user added files to it.
        added = sorted(_listing(out) - _listing(tmp)) if out.exists() else []
        if added:
            raise DataError(
                f"{out} holds files an export does not write ({', '.join(added[:4])}"
                f"{', ...' if len(added) > 4 else ''}); they would be deleted: move them out, "
                "or choose another --out"
            )
    log.info(
        "exported the encoders of %s to %s (grid %dx%d as a %dx%d table)",
        checkpoint,
        out,
        *spec.grid,
        info["square_side"],
        info["square_side"],
    )
    return info


def _listing(folder: Path) -> set[str]:
    """Every file under `folder`, as paths relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def read_export_info(folder: str | Path) -> dict[str, Any] | None:
    """The `bilma_export.json` of a folder, or None if it has none (or an unreadable one)."""
    try:
        info = json.loads((Path(folder) / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def changed_keys(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Keys whose value in `cfg` differs from the saved canonical config (`differences`)."""
    return [key for key, _, _ in differences(saved, cfg)]


def check_built(out: Path, cfg: Config) -> bool:
    """True if `out` holds the export of this very pretraining config; False if there is no
    folder. A folder from another config (or not from `pretrain-clip`) is refused."""
    if not out.exists():
        return False
    info = read_export_info(out)
    if info is None or not isinstance(info.get("pretrain_keys"), dict):
        raise DataError(
            f"{out} exists but was not built by `python -m bilma pretrain-clip` (no "
            f"{EXPORT_MARKER} with a pretraining config); delete it or choose another --out"
        )
    changed = changed_keys(info["pretrain_keys"], cfg)
    if changed:
        raise DataError(
            f"{out} is stale: built from pretraining config {info['pretrain_config']}, which "
            f"differs in {', '.join(changed[:4])}; delete {out} to rebuild it, or choose "
            "another --out"
        )
    return True


def build_pretrained_clip(cfg: Config, out: str | Path) -> dict[str, Any]:
    """Pretrain with `cfg` (CLIP's contrastive loss) and export the best checkpoint to `out`,
    once: a folder already built from the same config is reused, a stale one refused."""
    from bilma.runs.trial_dir import TrialDir
    from bilma.training.trainer import train

    out = Path(out)
    if check_built(out, cfg):
        log.info("reusing the pretrained CLIP in %s (built from this config)", out)
        info = read_export_info(out)
        assert info is not None
        return info
    if cfg.loss.itc_weight <= 0:
        raise DataError(
            "pretrain-clip trains with CLIP's contrastive loss: set loss.itc_weight > 0 "
            "(configs/synth_pretrain.yaml does)"
        )
    train(cfg)
    best = TrialDir.for_config(cfg).best_ckpt
    return export_clip(best, out, pretrain=cfg)
