"""Training and evaluation datasets, and the loaders that feed the trainer.

A training sample is one (image, caption) pair, as in IRRA. It carries the augmented image, the
caption's token ids, the MLM-masked ids with their labels, the SemMIM patch labels (or nothing
for the pixel target, which the model takes from the image itself) and the person id.

Augmentation is a pure function of (seed, epoch, sample index): the sampler hands the epoch to
the dataset with each index. So the same run draws the same augmentations in any number of
worker processes, and a run resumed mid-epoch sees exactly what an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from bilma.config import Config
from bilma.data import formats, image_cache, parsing
from bilma.data.image_cache import ArrayCache
from bilma.data.records import DataError, Record
from bilma.data.synth_cache import ensure_synthetic  # noqa: F401  (re-exported)
from bilma.data.tokenizer import (  # noqa: F401  (tokenizer_folder: importable from here too)
    CaptionTokenizer,
    encode_cached,
    load_tokenizer,
    tokenizer_folder,
)
from bilma.data.transforms import (
    DeviceAugment,
    TestTransform,
    TrainTransform,
    resize_map,
    to_rgb_array,
)
from bilma.labels import IGNORE_INDEX

log = logging.getLogger(__name__)

IGNORE = IGNORE_INDEX  # label of positions that a loss skips


# ----------------------------------------------------------------------------- the dataset on disk


@dataclass
class PedesData:
    """One dataset's records, images folder, tokenizer and tokenized captions."""

    dataset: str
    root: Path
    image_dir: Path
    records: list[Record]
    tokenizer: CaptionTokenizer
    tokens: np.ndarray  # [num captions, text_length] int32, captions in record order
    caption_record: np.ndarray  # [num captions] index into records
    parsing_root: Path
    _split_cache: dict = field(default_factory=dict, repr=False)
    # data.cache=uint8: every record's image (and parse map) at the input size, memory-mapped
    image_cache: ArrayCache | None = None
    map_cache: ArrayCache | None = None
    map_rows: np.ndarray | None = None  # record -> row of map_cache (-1: no map on disk)

    def image(self, i: int) -> Image.Image | np.ndarray:
        """Record i's image: from the uint8 cache if there is one, else decoded from disk."""
        if self.image_cache is not None:
            return self.image_cache[i]
        return read_image(self.image_dir / self.records[i].image_path)

    def parse_map(
        self, i: int, label_set: parsing.LabelSet, image_size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Record i's parse map (uint8 [H, W]), from the cache if it holds it, else from disk,
        checked against its image's original size (W, H): `image_size`, or read from the
        image file's header."""
        if self.map_rows is not None and self.map_rows[i] >= 0:
            return self.map_cache[int(self.map_rows[i])]
        image_path = self.image_dir / self.records[i].image_path
        if image_size is None:
            with Image.open(image_path) as im:  # the header only
                image_size = im.size
        path = parsing.parse_map_path(self.parsing_root, label_set.name, self.records[i].image_path)
        return parsing.load_parse_map(path, label_set, image_size)

    def split(self, name: str) -> tuple[list[int], np.ndarray]:
        """(record indices, caption indices) of a split."""
        if name not in self._split_cache:
            rec = [i for i, r in enumerate(self.records) if r.split == name]
            in_split = np.zeros(len(self.records), dtype=bool)
            in_split[rec] = True
            caps = np.nonzero(in_split[self.caption_record])[0]
            self._split_cache[name] = (rec, caps)
        return self._split_cache[name]

    @property
    def num_train_ids(self) -> int:
        return len({r.pid for r in self.records if r.split == "train"})


def synth_attribute_table(data: PedesData) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The positive control's labels of a synthetic dataset: [train identities, attributes]
    class indices (row = an identity's training label) and the class count of each attribute
    (`synth.ATTRIBUTE_CLASSES`: shoes, bag, hat and scarf colour, or none)."""
    from bilma.data import synth

    identities = synth.identities_of(data.root)
    rows = {r.pid: synth.attribute_labels(identities[r.source_id - 1]) for r in data.records
            if r.split == "train"}  # fmt: skip
    table = torch.tensor([rows[pid] for pid in range(len(rows))], dtype=torch.long)
    return table, tuple(len(v) for v in synth.ATTRIBUTE_CLASSES.values())


def load_data(cfg: Config, check_parse_maps: bool | None = None) -> PedesData:
    """Read annotations, check images (and parse maps for SemMIM), tokenize captions once."""
    d = cfg.data
    if d.dataset == "synth":
        ensure_synthetic(d)
    root = Path(d.root)
    records = formats.read_annotations(d.dataset, root)
    image_dir = formats.image_dir(d.dataset, root)
    records = formats.check_images(records, image_dir, skip_missing=d.skip_bad_images)
    if d.skip_bad_images:
        records = _drop_unreadable(records, image_dir)
    parsing_root = Path(d.parsing_root) if d.parsing_root else root / "parsing"
    if check_parse_maps is None:
        check_parse_maps = cfg.mim.target == "semantic" and cfg.loss.mim_weight > 0
    if check_parse_maps:
        _check_parse_maps(records, parsing_root, cfg.mim.labels)
    tokenizer = load_tokenizer(tokenizer_folder(cfg))
    captions = [c for r in records for c in r.captions]
    caption_record = np.repeat(np.arange(len(records)), [len(r.captions) for r in records])
    tokens = encode_cached(tokenizer, captions, d.text_length, root / "cache")
    data = PedesData(
        d.dataset, root, image_dir, records, tokenizer, tokens, caption_record, parsing_root
    )
    if d.cache == "uint8":
        attach_cache(data, cfg, maps=check_parse_maps)
    return data


def attach_cache(data: PedesData, cfg: Config, maps: bool) -> None:
    """Open (building it when missing or stale) the uint8 cache of `data`'s images at the
    input size and, with `maps`, of its parse maps (bilma/data/image_cache.py)."""
    h, w = cfg.data.image_size
    folder = Path(cfg.data.cache_dir) if cfg.data.cache_dir else data.root / "cache"
    resample = TestTransform((h, w)).resample
    sources = [data.image_dir / r.image_path for r in data.records]
    key = image_cache.fingerprint(sources, data.root, size=[h, w], resample=int(resample))

    def load_image(i: int) -> np.ndarray:
        return to_rgb_array(read_image(sources[i]), (w, h), resample)

    workers = cfg.data.num_workers
    data.image_cache = image_cache.open_or_build(
        folder / f"images-{h}x{w}.u8", key, len(sources), (h, w, 3), load_image, workers
    )
    if not maps:
        return
    label_set = parsing.get_label_set(cfg.mim.labels)
    paths = [
        parsing.parse_map_path(data.parsing_root, label_set.name, r.image_path)
        for r in data.records
    ]
    have = [i for i, p in enumerate(paths) if p.exists()]
    rows = np.full(len(paths), -1, dtype=np.int64)
    rows[have] = np.arange(len(have))
    key = image_cache.fingerprint(
        [paths[i] for i in have], data.parsing_root, size=[h, w], labels=label_set.name
    )

    def load_map(k: int) -> np.ndarray:
        return resize_map(data.parse_map(have[k], label_set), (w, h))

    data.map_cache = image_cache.open_or_build(
        folder / f"parse-{label_set.name}-{h}x{w}.u8", key, len(have), (h, w), load_map, workers
    )
    data.map_rows = rows


def _drop_unreadable(records: list[Record], image_dir: Path) -> list[Record]:
    bad, keep = [], []
    for r in records:
        try:
            formats.validate_image(image_dir / r.image_path)
            keep.append(r)
        except DataError:
            bad.append(r.image_path)
    if bad:
        log.warning(
            "skipping %d unreadable images (data.skip_bad_images=true): %s",
            len(bad),
            ", ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""),
        )
    return keep


def _check_parse_maps(records: list[Record], parsing_root: Path, labels: str) -> None:
    missing = [
        r.image_path
        for r in records
        if r.split == "train"
        and not parsing.parse_map_path(parsing_root, labels, r.image_path).exists()
    ]
    if missing:
        first = parsing.parse_map_path(parsing_root, labels, missing[0])
        raise DataError(
            f"{len(missing)} training images have no {labels} parse map (first: {first}); "
            f"write your parser's maps under {parsing_root / labels}/<image path>.png, "
            "or set mim.target=pixel or mim.target=none"
        )


# ----------------------------------------------------------------------------- images


def read_image(path: Path) -> Image.Image:
    """Open an image as RGB, or raise a DataError that names it and the fix."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(
            f"image not found: {path}; check data.root, or set data.skip_bad_images=true"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(
            f"cannot read image {path}: {e}; re-download it, or set data.skip_bad_images=true "
            "to drop unreadable images with a warning"
        ) from None


# ----------------------------------------------------------------------------- MLM


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    probability: float,
    mask_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """IRRA's MLM masking of one caption: (masked ids, labels with IGNORE where not chosen).

    Ordinary tokens are ids in [1, mask_id) (pad 0 and the mask, SOT, EOT ids above it are
    never chosen). A chosen token becomes the mask with p 0.8, a random ordinary token with
    p 0.1, stays with p 0.1. If no token is chosen, position 1 always becomes the mask
    (label: its original id), without the 80/10/10 draw, as IRRA's `at least mask 1`.
    """
    ids = ids.astype(np.int64)
    masked = ids.copy()
    labels = np.full_like(ids, IGNORE)
    ordinary = (ids > 0) & (ids < mask_id)
    chosen = ordinary & (rng.random(ids.shape) < probability)
    action = rng.random(ids.shape)
    if not chosen.any():
        labels[1] = ids[1]
        masked[1] = mask_id
        return masked, labels
    labels[chosen] = ids[chosen]
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    masked[to_mask] = mask_id
    masked[to_random] = rng.integers(1, mask_id, size=int(to_random.sum()))
    return masked, labels


# ----------------------------------------------------------------------------- datasets


class TrainSet(Dataset):
    """One sample per (image, caption) pair of the train split.

    By default a sample holds what a worker ships cheaply: uint8 ``images`` ``[3, H, W]``, the
    ``erase`` box drawn for it and, for SemMIM, the uint8 ``parse_maps`` ``[H, W]``; the
    trainer finishes each batch on its device with `device_augment()` (normalised float images,
    ``patch_labels``). ``uint8=False`` finishes each sample here instead (the CPU path: the
    same numbers, four times the bytes), for callers that feed the model directly.
    """

    def __init__(self, data: PedesData, cfg: Config, split: str = "train", uint8: bool = True):
        self.data = data
        self.cfg = cfg
        rec_idx, self.captions = data.split(split)
        if not rec_idx:
            raise DataError(f"{data.root}: the {data.dataset} dataset has no {split} split")
        self.transform = TrainTransform(
            tuple(cfg.data.image_size), hflip=cfg.data.hflip, pad=cfg.data.pad, erase=cfg.data.erase
        )
        self.semantic = cfg.mim.target == "semantic" and cfg.loss.mim_weight > 0
        self.label_set = parsing.get_label_set(cfg.mim.labels)
        self.mlm = cfg.mlm.enabled and cfg.loss.mlm_weight > 0
        self.seed = cfg.train.seed
        self.uint8 = uint8
        self._finish = None if uint8 else self.device_augment()

    def device_augment(self) -> DeviceAugment:
        """The float half of this set's augmentation, for whole batches on a device."""
        return self.transform.on_device(self.label_set.num_classes, self.cfg.mim.label_rule)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        cap = int(self.captions[index])
        rec_i = int(self.data.caption_record[cap])
        rec = self.data.records[rec_i]
        image = self.data.image(rec_i)
        parse_map = None
        if self.semantic:
            # a cached image is at the input size: the map's own checks need the original's
            size = None if isinstance(image, np.ndarray) else image.size
            parse_map = self.data.parse_map(rec_i, self.label_set, size)
        drawn = self.transform.draw(image, parse_map, rng, self.label_set.flip_lut)
        ids = self.data.tokens[cap]
        sample = {
            "images": drawn.image,
            "erase": drawn.erase,
            "caption_ids": torch.from_numpy(ids.astype(np.int64)),
            "pids": torch.tensor(rec.pid, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.mlm:
            masked, labels = mask_tokens(
                ids, rng, self.cfg.mlm.probability, self.data.tokenizer.mask_id
            )
            sample["mlm_ids"] = torch.from_numpy(masked)
            sample["mlm_labels"] = torch.from_numpy(labels)
        if drawn.parse_map is not None:
            sample["parse_maps"] = drawn.parse_map
        if self._finish is not None:
            batch = self._finish({k: v[None] for k, v in sample.items()})
            sample = {k: v[0] for k, v in batch.items()}
        return sample


class ImageSet(Dataset):
    """Gallery images of a split, test transform: uint8 ``[3, H, W]`` (normalise them on the
    device with `normalize`), or float32 with ``uint8=False``."""

    def __init__(self, data: PedesData, split: str, size: Sequence[int], uint8: bool = True):
        rec_idx, _ = data.split(split)
        self.data = data
        self.rec_idx = rec_idx
        self.records = [data.records[i] for i in rec_idx]
        self.transform = TestTransform(tuple(size))
        self.normalize = self.transform.normalize
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.data.image(self.rec_idx[i])
        return (self.transform.draw if self.uint8 else self.transform)(image), self.records[i].pid

    @property
    def pids(self) -> torch.Tensor:
        return torch.tensor([r.pid for r in self.records], dtype=torch.int64)


class TextSet(Dataset):
    """Query captions of a split."""

    def __init__(self, data: PedesData, split: str):
        _, caps = data.split(split)
        self.tokens = torch.from_numpy(data.tokens[caps].astype(np.int64))
        self.pids = torch.tensor(
            [data.records[int(data.caption_record[c])].pid for c in caps], dtype=torch.int64
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tokens[i], int(self.pids[i])


# ----------------------------------------------------------------------------- sampling


class EpochSampler(Sampler):
    """Shuffled indices of one epoch, as (index, epoch) pairs, sharded over processes.

    The order depends only on (seed, epoch); `start` skips the samples already trained on in
    this epoch, so a resumed run continues the same sequence.

    With `drop_last=False` (IRRA keeps each epoch's last partial batch) the length counts that
    batch as a whole one (a multiple of `batch_size`), so the trainer's steps per epoch,
    `len(sampler) // batch_size`, include it; iteration yields only the real samples.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        batch_size: int = 1,
        drop_last: bool = True,
    ):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        left = max(0, self.per_rank - self.start)
        if self.drop_last:
            return left
        return math.ceil(left / self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]  # pad so every rank gets as many
        mine = order[self.rank :: self.world]
        for i in mine[self.start :]:
            yield (i, self.epoch)


def _worker_init(_: int) -> None:
    # Each worker is one core's worth of work; torch threads inside it only contend.
    torch.set_num_threads(1)
    # SLURM sends its time-limit signal (SIGUSR2, by submitit's --signal) to every process of
    # the job step: the main process saves and requeues, and a worker dying of the signal
    # first would turn that into a crash. SIGTERM keeps its default: shutting a worker down
    # (torch, multiprocessing at exit) relies on it.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def train_loader(
    dataset: TrainSet,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool | None = None,
) -> tuple[DataLoader, EpochSampler]:
    """The training loader and its sampler. `drop_last` (default: `train.drop_last`, true)
    drops each epoch's last partial batch, so that every SDM batch is full; IRRA keeps it.

    Its workers persist across epochs (no restart, no re-import, no cold prefetch each
    epoch); the sampler, in this process, still hands them each epoch's order."""
    if drop_last is None:
        drop_last = dataset.cfg.train.drop_last
    sampler = EpochSampler(
        len(dataset), dataset.seed, rank, world, batch_size=batch_size, drop_last=drop_last
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return loader, sampler


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, persistent: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_worker_init,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=persistent and num_workers > 0,
    )


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now, rather than whenever it is garbage-collected
    (a process that trains several trials would otherwise keep every trial's workers)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None


class EvalImages:
    """Each split's gallery loader, built on first use and kept: its workers persist across
    evaluations. Batches are uint8; `ImageSet.normalize` finishes them on the device."""

    def __init__(self, data: PedesData, size: Sequence[int], batch_size: int, num_workers: int):
        self.data, self.size = data, tuple(size)
        self.batch_size, self.num_workers = batch_size, num_workers
        self._loaders: dict[str, DataLoader] = {}

    def loader(self, split: str) -> DataLoader:
        if split not in self._loaders:
            images = ImageSet(self.data, split, self.size)
            self._loaders[split] = eval_loader(
                images, self.batch_size, self.num_workers, persistent=True
            )
        return self._loaders[split]

    def close(self) -> None:
        for loader in self._loaders.values():
            shutdown_workers(loader)
        self._loaders.clear()


def root_cause(exc: BaseException) -> str:
    """The one line a researcher needs from an error raised inside a DataLoader worker.

    torch re-raises a worker's exception with the worker's traceback as its message; the
    original message is on the last line, after the exception's name.
    """
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    for prefix in ("bilma.data.records.DataError: ", "DataError: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last
