"""The one record type that every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass

from bilma.errors import DataError  # noqa: F401  (importable from here too)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image of one person with its captions.

    `image_path` is relative to the images folder (`root/imgs`), e.g. ``CUHK01/0001001.png``.
    `pid` is the person id used for training and evaluation: train ids are remapped to
    0..N-1 (the classifier's targets); val/test ids keep the dataset's own id, since they
    are only compared for equality. `source_id` is the id as written in the annotation file.
    """

    image_path: str
    pid: int
    captions: tuple[str, ...]
    split: str
    source_id: int
