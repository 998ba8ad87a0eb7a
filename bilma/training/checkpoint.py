"""Checkpoints: model, optimizer, scheduler, scaler, position in training, every RNG state.

Written atomically (temporary file, then `os.replace`) and read with `weights_only=True`:
everything in them is tensors, numbers, strings, lists and dicts. Each holds the model's
signature (the shapes that define it) and the resolved config, so `eval` needs nothing else,
and a checkpoint of another model is refused with the differences named.

The trainer's saves are off its critical path (`BackgroundSaver`): the state is copied to host
memory in the training thread (so it is the state of one step), then serialised, fsynced and
renamed on one background thread while training goes on.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
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


def payload(model: BiLMa, cfg: Config, **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds: the model with its signature and config, plus `extra`."""
    return {
        "format": FORMAT,
        "signature": model_signature(model),
        "config": to_dict(cfg),
        "model": model.state_dict(),
        **extra,
    }


def write(path: Path, content: dict[str, Any]) -> None:
    """Atomically write a checkpoint's `payload`; a full disk raises `DiskFull` (one line)."""
    try:
        atomic_torch_save(content, path)
    except DiskFull:
        # The space needed: the tensors plus 10% for the archive's structure.
        raise DiskFull(disk_full_message(path, int(_nbytes(content) * 1.1))) from None


def save(path: Path, model: BiLMa, cfg: Config, **extra: Any) -> None:
    """Atomically save the model with its signature and config, plus any training state."""
    write(path, payload(model, cfg, **extra))


class HostCopy:
    """A copy of a (nested) state in host memory, made now, whose tensors are reused from
    one copy to the next: after the first save no allocation (pinned memory for a GPU's
    tensors, whose copies run in the current stream, ordered before any later update)."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self._next = 0

    def __call__(self, obj: Any) -> Any:
        self._next = 0
        return self._copy(obj, {})

    def _copy(self, obj: Any, memo: dict[int, Any]) -> Any:
        if id(obj) in memo:  # shared parts (one model in two payloads, tied weights)
            return memo[id(obj)]
        if isinstance(obj, torch.Tensor):
            out: Any = self._buffer(obj)
            out.copy_(obj.detach(), non_blocking=obj.is_cuda)
        elif isinstance(obj, dict):
            out = type(obj)((k, self._copy(v, memo)) for k, v in obj.items())
            if isinstance(obj, OrderedDict) and hasattr(obj, "_metadata"):
                out._metadata = copy.deepcopy(obj._metadata)  # a state_dict's versions
        elif isinstance(obj, (list, tuple)):
            out = type(obj)(self._copy(v, memo) for v in obj)
        else:
            out = copy.deepcopy(obj)
        memo[id(obj)] = out
        return out

    def _buffer(self, t: torch.Tensor) -> torch.Tensor:
        i, self._next = self._next, self._next + 1
        if i < len(self._buffers):
            buf = self._buffers[i]
            if buf.shape == t.shape and buf.dtype == t.dtype and buf.is_pinned() == t.is_cuda:
                return buf
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
        if i < len(self._buffers):
            self._buffers[i] = buf
        else:
            self._buffers.append(buf)
        return buf


class BackgroundSaver:
    """Checkpoint writes on one background thread, one job in flight at a time.

    `submit` waits for the job before it (and raises that job's error here, in the training
    thread: a failed save is never lost), copies the payloads to host memory (`HostCopy`:
    the state of this very step), and returns; the thread writes each file atomically in
    order, then runs `then` (e.g. promoting best.pt once last.pt names it). `wait` blocks
    until the job is done; call it before reading the files and before the process ends.
    """

    def __init__(self) -> None:
        self._copy = HostCopy()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(
        self,
        writes: Sequence[tuple[Path, dict[str, Any]]],
        then: Callable[[], None] | None = None,
    ) -> None:
        self.wait()
        contents = self._copy([content for _, content in writes])
        ready = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            ready = torch.cuda.Event()
            ready.record()  # the copies above are queued in this stream: done at this event
        paths = [path for path, _ in writes]
        self._thread = threading.Thread(
            target=self._run, args=(paths, contents, then, ready), name="checkpoint-writer"
        )
        self._thread.start()

    def _run(
        self,
        paths: list[Path],
        contents: list[dict[str, Any]],
        then: Callable[[], None] | None,
        ready: Any,
    ) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            for path, content in zip(paths, contents, strict=True):
                write(path, content)
            if then is not None:
                then()
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Block until the job in flight is written; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """`wait`, logging (not raising) a failure: for the way out of an error."""
        try:
            self.wait()
        except Exception as e:
            log.error("the last checkpoint save failed too: %s", str(e).splitlines()[0])


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
