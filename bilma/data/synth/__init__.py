"""A deterministic synthetic pedestrian dataset in the CUHK-PEDES format, with parse maps.

Each identity is a combination of described attributes (garment types and colours, hair,
shoes, bag, hat, scarf; see `Identity`); every image draws that person with PIL at a random
position, scale and pose over a random background, and every caption names every attribute.
What worked for learning on such data is in ``docs/SYNTH.md``.

Layout written under ``OUT`` (the CUHK-PEDES layout, so the ``synth`` reader is the CUHK one):

- ``imgs/<split>/<id:05d>_<k>.jpg``: JPEG, quality 90, ``height x width``, chroma subsampled
  4:2:0 (half the colour resolution) or, with ``chroma="4:4:4"``, at full colour resolution.
- ``reid_raw.json``: ``[{id, file_path, captions, processed_tokens, split}, ...]``; ids are
  1-based and unique across splits, train ids first (``1..N_train``), then val, then test.
- ``parsing/<labelset>/<split>/<id:05d>_<k>.png``: 8-bit mode-L parse maps for the label sets
  ``lip20``, ``atr18`` and ``ppp7`` (SCHP conventions, `LABEL_NAMES`).
- ``synth.json`` (`SYNTH_MARKER`), written last and atomically: the generation parameters.
  `is_complete` tells a finished dataset from a half-written one.

Left and right are the *person's*: figures face the camera, so the person's left arm, leg and
shoe are on the image's right side (larger x).

Parse maps are exact (see `canvas`): image and labels are lookups of one index image.
Brightness, noise, blur and JPEG only change the RGB afterwards.

The modules, by concern:

- `attributes`: attribute tables, label sets, `Identity`, `sample_identities`, and
  `sample_lookalike_identities` (groups that differ in one local attribute: shoes, bag, hat,
  scarf colour; `generate(lookalike=k)`, `data.synth_lookalike`), and `POOLS`: two disjoint
  halves of the identity space for a pretraining pool and a fine-tuning set (`data.synth_pool`).
- `canvas`: drawing shapes in figure units into the index image (`Canvas`, `Rendering`).
- `body`: the body parts (head/hair/hat, torso, arms/sleeves, legs/lower garment, shoes,
  bags, scarf), drawn back to front.
- `rendering`: one image (placement, pose, colours, background, `draw_figure`, `degrade`).
- `captions`: caption templates, `describe`, `tokenize`.
- `generation`: splits, annotations, per-identity jobs in worker processes, the marker.
"""

from bilma.data.synth.attributes import (
    ATTRIBUTE_CLASSES,
    BAG_COLOURS,
    BAG_TYPES,
    COLOURS,
    HAIR_COLOURS,
    HAIR_LENGTHS,
    HAT_COLOURS,
    LABEL_NAMES,
    LOCAL_ATTRIBUTES,
    LOWER_TYPES,
    POOLS,
    SHOE_COLOURS,
    SKIN_TONES,
    UPPER_TYPES,
    Identity,
    LookalikeGroup,
    attribute_labels,
    in_pool,
    sample_identities,
    sample_lookalike_identities,
)
from bilma.data.synth.canvas import Rendering
from bilma.data.synth.captions import Mention, captions_for, describe, tokenize
from bilma.data.synth.generation import (
    SYNTH_MARKER,
    IdentityJob,
    caption_rng,
    generate,
    identities_of,
    image_rng,
    is_complete,
    split_sizes,
)
from bilma.data.synth.rendering import degrade, draw_figure

__all__ = [
    "ATTRIBUTE_CLASSES",
    "BAG_COLOURS",
    "BAG_TYPES",
    "COLOURS",
    "HAIR_COLOURS",
    "HAIR_LENGTHS",
    "HAT_COLOURS",
    "LABEL_NAMES",
    "LOWER_TYPES",
    "SHOE_COLOURS",
    "SKIN_TONES",
    "SYNTH_MARKER",
    "UPPER_TYPES",
    "LOCAL_ATTRIBUTES",
    "Identity",
    "IdentityJob",
    "LookalikeGroup",
    "POOLS",
    "Mention",
    "Rendering",
    "attribute_labels",
    "caption_rng",
    "captions_for",
    "degrade",
    "describe",
    "draw_figure",
    "generate",
    "identities_of",
    "image_rng",
    "in_pool",
    "is_complete",
    "sample_identities",
    "sample_lookalike_identities",
    "split_sizes",
    "tokenize",
]
