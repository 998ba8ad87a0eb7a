"""Checkpoints: model, optimizer, scheduler, scaler, position in training, every RNG state.

Written atomically (temporary file, then `os.replace`) and read with `weights_only=True`:
everything in them is tensors, numbers, strings, lists and dicts. Each holds the model's
signature (the shapes that define it) and the resolved config, so `eval` needs nothing else,
and a checkpoint of another model is refused with the differences named.
"""

from __future__ import annotations

import logging
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bilma.config import Config, from_dict, to_dict
from bilma.data.records import DataError
from bilma.errors import CheckpointMismatch, UnreadableCheckpoint  # noqa: F401  (importable from here too)
from bilma.fileio import DiskFull, atomic_torch_save, disk_full_message, fsync_dir
from bilma.model.bilma import BiLMa, build_from_signature, model_signature, signature_mismatch

FORMAT = 1
log = logging.getLogger(__name__)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 64


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer draws from, as tensors and plain values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, model: BiLMa, cfg: Config, **extra: Any) -> None:
    """Atomically save the model with its signature and config, plus any training state."""
    payload = {
        "format": FORMAT,
        "signature": model_signature(model),
        "config": to_dict(cfg),
        "model": model.state_dict(),
        **extra,
    }
    try:
        atomic_torch_save(payload, path)
    except DiskFull:
        # The space needed: the tensors plus 10% for the archive's structure.
        raise DiskFull(disk_full_message(path, int(_nbytes(payload) * 1.1))) from None


def promote_best(candidate: Path, best: Path) -> None:
    """Make the best-checkpoint candidate ckpt/best.pt (after last.pt named its epoch)."""
    if candidate.exists():
        os.replace(candidate, best)
        fsync_dir(best.parent)


def settle_best(candidate: Path, best: Path, best_epoch: int | None) -> None:
    """At start: a candidate left by a kill becomes best.pt if last.pt's state names its
    epoch as the best (the kill came after last.pt was committed), else it is deleted."""
    if not candidate.exists():
        return
    try:
        epoch = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:  # torn or foreign: it was never committed
        epoch = None
    if epoch is not None and epoch == best_epoch:
        log.info("promoting the best checkpoint of epoch %s left by the last run", epoch)
        promote_best(candidate, best)
    else:
        candidate.unlink()


def load(path: Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`), with a clear error for a bad file.

    Tensors go to `map_location` (default the CPU), so a checkpoint saved on a GPU loads on a
    machine without one.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say what it is, not torch's advice
        reason = _what_went_wrong(path, e)
        raise UnreadableCheckpoint(
            f"cannot read checkpoint {path}: not a bilma checkpoint ({reason}); give a "
            "ckpt/last.pt or ckpt/best.pt of a trial directory",
            reason,
        ) from None
    if not isinstance(ckpt, dict) or "signature" not in ckpt or "model" not in ckpt:
        raise UnreadableCheckpoint(
            f"{path} is not a bilma checkpoint (no model signature in it)", "no model signature"
        )
    return ckpt


def set_aside(path: Path) -> Path:
    """Rename an unusable checkpoint to `<name>.damaged` beside it (kept for a look, never
    deleted) so that the next run starts without it; returns the new path."""
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    fsync_dir(path.parent)
    return aside


def _what_went_wrong(path: Path, e: Exception) -> str:
    """What the file is, from its first bytes and torch's error, in a few words."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    text = str(e)
    if not head:
        return "the file is empty"
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return f"it holds Python objects ({unsupported.group(1)}) that a safe load refuses"
    if "CUDA device" in text:
        return (
            "its tensors were saved on a GPU and there is none here: load with map_location='cpu'"
        )
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path) or "zip archive" in text:
            return "a truncated or damaged PyTorch file: copy it again"
        return f"a PyTorch file that does not unpickle safely ({type(e).__name__})"
    if head[:1] == b"\x80":
        return "a plain Python pickle, not a file written by torch.save"
    return f"not a PyTorch file: it starts with the bytes {head.hex(' ')}"


def load_model_state(model: BiLMa, ckpt: dict[str, Any], path: Path) -> None:
    """Load weights after checking that the checkpoint was made for this very model."""
    diffs = signature_mismatch(ckpt["signature"], model_signature(model))
    if diffs:
        raise CheckpointMismatch(
            f"{path} was saved from another model ({'; '.join(diffs[:4])}); use the config it was "
            "trained with, or start a new run directory"
        )
    weights = ckpt["model"]
    if diffs := weight_mismatch(weights, model.state_dict()):
        # The signature matched but the weights do not: the file was edited, or another
        # program wrote it. A raw load_state_dict error is a 40-line traceback.
        raise CheckpointMismatch(
            f"{path}: its weights do not fit the model its own signature describes "
            f"({'; '.join(diffs[:4])}); the file was altered or written by another program: "
            "use another checkpoint (ckpt/best.pt or ckpt/last.pt of the trial)"
        )
    model.load_state_dict(weights, strict=True)


def weight_mismatch(weights: Any, expected: dict[str, torch.Tensor]) -> list[str]:
    """How a checkpoint's state dict differs from the model's: missing, unexpected and
    wrongly shaped tensors (a few names each)."""
    if not isinstance(weights, dict):
        return [f"the weights are a {type(weights).__name__}, not a state dict"]

    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    common = [k for k in expected if k in weights]
    wrong_type = [k for k in common if not isinstance(weights[k], torch.Tensor)]
    shapes = [
        f"{k} {list(weights[k].shape)} instead of {list(expected[k].shape)}"
        for k in common
        if k not in wrong_type and weights[k].shape != expected[k].shape
    ]
    out = []
    if missing:
        out.append(f"missing {few(missing)}")
    if unexpected:
        out.append(f"unexpected {few(unexpected)}")
    if wrong_type:
        out.append(f"not tensors: {few(wrong_type)}")
    out.extend(shapes[:3])
    return out


def load_for_eval(path: Path, device: torch.device) -> tuple[BiLMa, Config, dict[str, Any]]:
    """Rebuild the model of a checkpoint from its own signature and config."""
    ckpt = load(path, device)
    cfg = from_dict(ckpt["config"], where=str(path))
    model = build_from_signature(ckpt["signature"], cfg)
    load_model_state(model, ckpt, path)
    model.to(device).eval()
    return model, cfg, {k: v for k, v in ckpt.items() if k in ("epoch", "step", "metrics")}
