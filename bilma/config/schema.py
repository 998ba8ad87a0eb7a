"""The config schema: every section of the trainer's configuration as a dataclass.

Each leaf is a field made by `_f` with a help text, an optional inclusive range, and its role
in the trial id (`hash`: True, False = left out (locations, tracking, worker counts), or
"basename" = only the folder's name). Loading, overrides, validation and the trial id live in
`bilma.config`; this module holds only what the keys are.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# Field metadata keys.
_RANGE = "range"  # (low, high) inclusive; None for an open end
_HASH = "hash"  # False: left out of the trial id; "basename": only the last path component
_HELP = "help"


def _f(default: Any, help: str = "", range: tuple | None = None, hash: Any = True, **kw: Any):
    """A dataclass field with a help text, an optional range and its role in the trial id."""
    meta = {_HELP: help, _RANGE: range, _HASH: hash}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class DataConfig:
    dataset: Literal["synth", "cuhk-pedes", "icfg-pedes", "rstpreid"] = _f(
        "synth", "which annotation format and benchmark to read"
    )
    root: str = _f("data/synth", "dataset folder (generated on first use for synth)", hash=False)
    image_size: list[int] = _f([384, 128], "input height and width in pixels")
    text_length: int = _f(77, "caption length in tokens, SOT and EOT included", range=(8, 512))
    tokenizer: str | None = _f(
        None,
        "folder with vocab.json and merges.txt; default: model.pretrained, or the synthetic "
        "dataset's own tokenizer",
        hash="basename",
    )
    parsing_root: str | None = _f(
        None, "folder of parse maps (default: <root>/parsing)", hash=False
    )
    num_workers: int = _f(2, "DataLoader worker processes", range=(0, 64), hash=False)
    cache: Literal["none", "uint8"] = _f(
        "none",
        "uint8: decode and resize every image (and parse map) once into a file under "
        "data.cache_dir, which the loader workers then read (bilma/data/image_cache.py)",
        hash=False,
    )
    cache_dir: str | None = _f(
        None, "folder of data.cache's files (default: <data.root>/cache)", hash=False
    )
    skip_bad_images: bool = _f(False, "drop missing or unreadable images with a warning")
    hflip: float = _f(0.5, "horizontal flip probability", range=(0.0, 1.0))
    pad: int = _f(10, "padding before the random crop, pixels", range=(0, 128))
    erase: float = _f(0.5, "random erasing probability", range=(0.0, 1.0))
    synth_ids: int = _f(1200, "identities of a generated synthetic dataset", range=(3, 1_000_000))
    synth_images_per_id: int = _f(4, "images per identity (synthetic)", range=(1, 100))
    synth_seed: int = _f(0, "seed of the synthetic dataset", range=(0, None))
    synth_pool: Literal["all", "pretrain", "finetune"] = _f("all", "disjoint identity halves")
    synth_lookalike: int = _f(0, "look-alike group size (0: none; synth)", range=(0, 4))
    synth_lookalike_share: float = _f(0.5, "share of ids in look-alike groups", range=(0.01, 1.0))
    synth_eval_ids: int | None = _f(
        None,
        "identities of the synthetic val split and of its test split each (default: ids // 10)",
        range=(1, None),
        hash="nondefault",  # added after studies existed: their trial ids stay
    )
    synth_local_scale: float = _f(
        1.0,
        "size of shoes, bag, hat and scarf (2: about one 16-px patch each at 192x64; synth)",
        range=(0.5, 4.0),
        hash="nondefault",  # added after studies existed: their trial ids stay
    )
    # A bool, not "4:4:4": YAML 1.1 reads an unquoted 4:4:4 as the sexagesimal number 14644.
    synth_full_chroma: bool = _f(
        False,
        "synthetic JPEGs at full colour resolution (4:4:4) instead of 4:2:0",
        hash="nondefault",
    )


@dataclass
class ModelConfig:
    name: Literal["tiny", "vitb16"] = _f("tiny", "encoder size when not loading weights")
    pretrained: str | None = _f(
        None,
        "local folder of a Hugging Face CLIP model (e.g. clip-vit-base-patch16)",
        hash="basename",
    )
    embed_dim: int = _f(512, "joint embedding width", range=(8, 4096))
    cross_depth: int = _f(4, "transformer layers of the cross-modal module", range=(0, 24))
    cross_heads: int = _f(8, "attention heads of the cross-modal module", range=(1, 64))
    temperature: float = _f(0.02, "SDM temperature tau (logit scale 1/tau)", range=(1e-4, 1.0))


@dataclass
class MLMConfig:
    enabled: bool = _f(True, "masked language modelling branch (image -> text)")
    probability: float = _f(0.15, "chance that a caption token is chosen", range=(0.0, 1.0))
    masked_caption_for_retrieval: bool = _f(
        False, "IRRA parity: SDM and ID also see the masked caption (IRRA's in-place mutation)"
    )
    attend_padding: bool = _f(False, "IRRA parity: MLM attends over all positions, padding too")


@dataclass
class MIMConfig:
    target: Literal["semantic", "pixel", "mean_rgb", "feature", "none"] = _f(
        "semantic",
        "what a masked patch predicts: parser class (SemMIM), pixels, the patch's mean colour, "
        "the clean image's patch feature (KL), or no MIM",
    )
    mask_ratio: float = _f(0.5, "fraction of image patches masked", range=(0.0, 0.95))
    masking: Literal["patch", "block"] = _f("patch", "random patches or contiguous blocks")
    cross_module: Literal["own", "shared"] = _f(
        "own", "own cross-modal module, or the MLM branch's"
    )
    depth: int = _f(4, "transformer layers of the MIM cross-modal module", range=(0, 24))
    caption: Literal["clean", "masked"] = _f("clean", "caption used as keys and values")
    labels: Literal["lip20", "atr18", "ppp7"] = _f("lip20", "human-parsing label set")
    label_rule: Literal["majority", "soft"] = _f(
        "majority", "patch label: majority vote, or the soft class histogram"
    )
    norm_pixels: bool = _f(True, "pixel target: normalise each patch (MAE)")
    feature_temperature: float = _f(
        1.0,
        "feature target: softmax temperature over the feature dimension (teacher and student)",
        range=(1e-3, 100.0),
        hash="nondefault",  # added after studies existed: their trial ids stay
    )


@dataclass
class LossConfig:
    sdm_weight: float = _f(1.0, "similarity distribution matching", range=(0.0, None))
    id_weight: float = _f(1.0, "identity classification", range=(0.0, None))
    mlm_weight: float = _f(1.0, "masked language modelling", range=(0.0, None))
    mim_weight: float = _f(1.0, "masked image modelling", range=(0.0, None))
    itc_weight: float = _f(0.0, "CLIP's contrastive loss (pretraining)", range=(0.0, None))
    attribute_weight: float = _f(
        0.0,
        "positive control (synth only): the global image and text features predict each "
        "identity's shoes, bag, hat and scarf colour",
        range=(0.0, None),
        hash="nondefault",  # added after studies existed: their trial ids stay
    )


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "base learning rate (encoders)", range=(0.0, 10.0))
    lr_factor: float = _f(5.0, "multiplier for new modules and heads", range=(0.0, None))
    bias_lr_factor: float = _f(2.0, "multiplier for biases", range=(0.0, None))
    weight_decay: float = _f(4e-5, range=(0.0, None))
    weight_decay_bias: float = _f(0.0, range=(0.0, None))
    betas: list[float] = _f([0.9, 0.999], "Adam betas")
    eps: float = _f(1e-3, "Adam epsilon (IRRA: 1e-3)", range=(0.0, 1.0))
    warmup_epochs: int = _f(5, range=(0, None))
    warmup_factor: float = _f(0.1, "learning-rate factor at the first epoch", range=(0.0, 1.0))
    schedule: Literal["cosine", "constant"] = _f("cosine")
    grad_clip: float | None = _f(None, "clip the gradient norm to this", range=(0.0, None))
    cross_norms_lr: Literal["base", "factor"] = _f(
        "base", "lr of the cross-modal modules' ln_q, ln_kv, ln_post: base (IRRA) or x lr_factor"
    )


@dataclass
class TrainConfig:
    epochs: int = _f(60, range=(1, 10_000))
    batch_size: int = _f(64, "per process", range=(2, 65_536))
    seed: int = _f(1, "seed of the run; each process uses seed + rank", range=(0, None))
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    amp: Literal["auto", "bf16", "fp16", "off"] = _f("auto", "autocast: auto = bf16 on GPU")
    log_every: int = _f(
        20,
        "steps between progress lines: the loss is read from the device (a sync) and, with "
        "several processes, the stop signal checked only this often",
        range=(1, None),
        hash=False,
    )
    length_bucket: int = _f(
        16,
        "caption lengths trimmed up to a multiple of this, so shapes repeat (compiled "
        "model, allocator); 1 = the batch's longest caption",
        range=(1, 512),
        hash=False,
    )
    compile: bool = _f(
        False,
        "torch.compile the encoders and cross-modal modules (one graph per length)",
        hash=False,
    )
    max_steps_per_epoch: int | None = _f(None, "cap steps per epoch (smoke runs)", range=(1, None))
    drop_last: bool = _f(True, "drop each epoch's last partial batch (IRRA: false)")
    checkpoint_every_minutes: float | None = _f(
        None,
        "write ckpt/last.pt at an epoch's end only when this many minutes passed since the "
        "last one (default: every epoch; the last epoch, a stop signal and an evaluation an "
        "on_eval callback sees always write it)",
        range=(0.0, None),
        hash=False,
    )
    keep_checkpoints: str = _f(
        "last_and_best",
        "checkpoints a trial keeps: last_and_best; best (last.pt deleted once the trial is "
        "done); every:N (also ckpt/epoch_<E>.pt every N epochs) (bilma/runs/retention.py)",
        hash=False,
    )


@dataclass
class EvalConfig:
    every: int = _f(1, "evaluate every N epochs", range=(1, None))
    select_split: Literal["val", "test"] = _f(
        "val", "split that picks the best checkpoint (test: IRRA parity)"
    )
    select_metric: Literal["R1", "R5", "R10", "mAP", "mINP"] = _f("R1")
    batch_size: int = _f(256, range=(1, None), hash=False)


@dataclass
class TrackingConfig:
    uri: str = _f("sqlite:///mlflow.db", "MLflow tracking URI", hash=False)
    enabled: bool = _f(True, "mirror the trial directory to MLflow", hash=False)
    study: str = _f("default", "MLflow experiment and runs/<study>/", hash=False)
    variant: str = _f("", "row label in ablation tables", hash=False)
    # What a sweep knows of a trial beyond its label (grid, variant, grid point, parent run)
    # is not the trainer's: the sweep writes it to the trial's launch.json (bilma.runs.launch).


@dataclass
class PathsConfig:
    runs: str = _f("runs", "root of the trial directories", hash=False)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mlm: MLMConfig = field(default_factory=MLMConfig)
    mim: MIMConfig = field(default_factory=MIMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


# ----------------------------------------------------------------------------- key tables


@functools.cache  # every config built calls it; get_type_hints compiles the annotations
def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _leaf_fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every valid dotted key with its field and resolved type hint."""
    out = {}
    for sec, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{sec}.{f.name}"] = (f, hints[f.name])
    return out


LEAF_FIELDS = _leaf_fields()
VALID_KEYS: tuple[str, ...] = tuple(LEAF_FIELDS)
