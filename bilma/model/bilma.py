"""The BiLMa model: IRRA (SDM + ID + MLM) plus masked image modelling with SemMIM labels.

At training time:
- the clean image and the clean caption give global features (CLS, EOT) for SDM and ID;
- MLM: the masked caption's tokens query the clean image's tokens through the image->text
  cross-modal module, and the MLM head predicts the chosen tokens (IRRA). The module's
  self-attention masks the caption's padding (`mlm.attend_padding=true`: IRRA's attention over
  all `data.text_length` positions);
- MIM: a second pass of the image encoder on the image with masked patches (mask token at the
  ViT input); its patch tokens query the caption's tokens through the text->image module (own
  or shared with MLM), and a head predicts each masked patch's parser class (SemMIM) or its
  normalised pixels. Every open choice of METHOD.md is a config key (`mim.*`).
At test time only the two encoders run.

Only the parts that a config's losses use are built (no ID classifier at `loss.id_weight=0`,
no mask token without MIM): a parameter without a gradient makes DistributedDataParallel
fail at the second step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn

from bilma.config import Config
from bilma.labels import IGNORE_INDEX, get_label_set
from bilma.model import losses
from bilma.model.clip import CLIPEncoders, EncoderSpec

if TYPE_CHECKING:
    from bilma.data.datasets import PedesData
from bilma.model.cross import CrossModal, Head
from bilma.patches import patchify


@dataclass(frozen=True)
class HeadSpec:
    """What fixes the shapes of the parts beyond the encoders; stored in checkpoints."""

    num_ids: int
    cross_depth: int
    cross_heads: int
    mlm: bool
    mim_target: str  # semantic | pixel | mean_rgb | feature | none
    mim_classes: int  # parser classes (semantic), patch*patch*3 (pixel), 3 (mean_rgb), else 0
    mim_module: str  # own | shared
    mim_depth: int
    # Defaults: what checkpoints written before these fields existed always had.
    classifier: bool = True  # the ID classifier
    mask_token: bool = True  # MIM's mask token in the image encoder
    attributes: tuple[int, ...] = ()  # classes per attribute of the positive control's head


def head_spec(cfg: Config, num_ids: int, patch: int, attributes: tuple[int, ...] = ()) -> HeadSpec:
    target = cfg.mim.target if cfg.loss.mim_weight > 0 else "none"
    classes = {
        "semantic": get_label_set(cfg.mim.labels).num_classes,
        "pixel": patch * patch * 3,
        "mean_rgb": 3,
        "feature": 0,  # the encoder's width (known when the head is built)
        "none": 0,
    }[target]
    return HeadSpec(
        num_ids=num_ids,
        cross_depth=cfg.model.cross_depth,
        cross_heads=cfg.model.cross_heads,
        mlm=cfg.mlm.enabled and cfg.loss.mlm_weight > 0,
        mim_target=target,
        mim_classes=classes,
        mim_module=cfg.mim.cross_module,
        mim_depth=cfg.mim.depth,
        classifier=cfg.loss.id_weight > 0,
        mask_token=target != "none",
        attributes=tuple(attributes) if cfg.loss.attribute_weight > 0 else (),
    )


def random_patch_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    mode: str,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, P] bool, True = masked. `patch`: exactly round(ratio * P) random patches per image,
    drawn where `generator` lives (the training device: no copy, no sync; a CPU generator
    gives the same masks as before); `block`: BEiT-style rectangles of random aspect until
    the count is reached (then trimmed to the same exact count, so every image contributes
    equally to the loss), drawn on the host (a loop of scalar draws) with a CPU generator."""
    rows, cols = grid
    p = rows * cols
    n = max(1, round(ratio * p))
    if mode == "patch":
        where = generator.device if generator is not None else device
        scores = torch.rand(batch, p, generator=generator, device=where)
        idx = scores.argsort(dim=1)[:, :n]
        mask = torch.zeros(batch, p, dtype=torch.bool, device=where).scatter_(1, idx, True)
        return mask.to(device)
    g = generator
    masks = torch.zeros(batch, rows, cols, dtype=torch.bool)
    for b in range(batch):
        m = masks[b]
        while int(m.sum()) < n:
            area = int(torch.randint(max(1, n // 8), max(2, n // 2) + 1, (), generator=g))
            aspect = math.exp(float(torch.empty(()).uniform_(-1.2, 1.2, generator=g)))
            h = max(1, min(rows, round((area * aspect) ** 0.5)))
            w = max(1, min(cols, round((area / aspect) ** 0.5)))
            top = int(torch.randint(0, rows - h + 1, (), generator=g))
            left = int(torch.randint(0, cols - w + 1, (), generator=g))
            m[top : top + h, left : left + w] = True
        flat = m.flatten()
        extra = int(flat.sum()) - n
        if extra > 0:  # unmask random extras so the count is exact
            on = flat.nonzero().squeeze(1)
            flat[on[torch.randperm(len(on), generator=g)[:extra]]] = False
        masks[b] = flat.view(rows, cols)
    masks = masks.flatten(1)
    if device.type == "cuda":  # pinned: the copy does not wait for the device
        return masks.pin_memory().to(device, non_blocking=True)
    return masks.to(device)


def caption_length(ids: torch.Tensor, multiple: int = 1) -> int:
    """Columns to keep: up to the batch's last EOT, rounded up to a multiple of `multiple`
    (at most all of them). Read it from the host's copy of the batch: from a device tensor
    the copy to the host waits for the device."""
    longest = int(ids.cpu().numpy().argmax(axis=-1).max()) + 1  # numpy: plainly on the host
    return min(ids.shape[1], -(-longest // multiple) * multiple)


def trim_padding(ids: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Drop the padding columns after the batch's last EOT (`caption_length`).

    The text encoder is causal, so a token never sees the padding after it and every kept
    position (EOT included) gets the same features; captions average about a third of
    the context, so this saves most of the text encoder's work. Lengths rounded up to a
    `multiple` repeat from batch to batch (a compiled model, cuDNN, the allocator reuse them).
    """
    return ids[:, : caption_length(ids, multiple)]


def trim_batch(
    batch: dict[str, torch.Tensor],
    keep_mlm: bool = False,
    multiple: int = 1,
    length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Captions cut to `length` columns (default: `caption_length` of the batch's captions);
    `keep_mlm`: the MLM ids and labels keep every position (IRRA's MLM attends over the
    padding too)."""
    if length is None:
        length = caption_length(batch["caption_ids"], multiple)
    out = dict(batch)
    keys = ("caption_ids",) if keep_mlm else ("caption_ids", "mlm_ids", "mlm_labels")
    for key in keys:
        if key in out:
            out[key] = out[key][:, :length]
    return out


def mlm_capacity(labels: torch.Tensor, multiple: int = 8) -> int:
    """Rows the MLM head runs on for a batch whose `labels` [B, L] mark the chosen tokens:
    their count rounded up to a `multiple`, read from the host's copy (no sync). The head and
    the loss run eagerly, so a count that changes from batch to batch costs no recompile."""
    chosen = int((labels.cpu().numpy() != IGNORE_INDEX).sum())
    return min(labels.numel(), max(multiple, -(-chosen // multiple) * multiple))


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool, True at the positions after each caption's EOT."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    return positions.unsqueeze(0) > ids.argmax(dim=-1).unsqueeze(1)


class BiLMa(nn.Module):
    def __init__(self, encoders: CLIPEncoders, heads: HeadSpec, cfg: Config):
        super().__init__()
        self.encoders = encoders
        self.heads_spec = heads
        self.cfg = cfg
        width = encoders.spec.embed_dim
        if heads.mask_token:
            encoders.add_mask_token()
        if heads.classifier:
            self.classifier = nn.Linear(width, heads.num_ids)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self.logit_scale = 1.0 / cfg.model.temperature
        self._compiled: dict[str, Callable] = {}  # compile_parts: the encoders' training passes
        if cfg.loss.itc_weight > 0:  # CLIP's learnable temperature: log(1 / 0.07) at start
            self.itc_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if heads.mlm:
            self.mlm_cross = CrossModal(width, heads.cross_heads, heads.cross_depth)
            self.mlm_head = Head(width, encoders.spec.vocab_size, heads.cross_depth)
        if heads.mim_target != "none":
            if heads.mim_module == "own" or not heads.mlm:
                self.mim_cross = CrossModal(width, heads.cross_heads, heads.mim_depth)
            out = width if heads.mim_target == "feature" else heads.mim_classes
            self.mim_head = Head(width, out, heads.mim_depth)
        if heads.attributes:  # the positive control; its labels come with set_attribute_table
            self.attribute_head = nn.Linear(width, sum(heads.attributes))
            self.register_buffer(
                "attribute_table",
                torch.zeros(0, len(heads.attributes), dtype=torch.long),
                persistent=False,
            )

    def set_attribute_table(self, table: torch.Tensor) -> None:
        """The positive control's labels: [train identities, attributes] class indices,
        row = the ID loss's label of an identity."""
        self.attribute_table = table.to(self.attribute_table.device, torch.long)

    # ------------------------------------------------------------------ encoders (test time)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image features [B, D] (CLS), not normalised."""
        return self.encoders.encode_image(images)[:, 0].float()

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Global text features [B, D] (EOT), not normalised. Captions as given: trim their
        padding on the host first (`trim_padding`), where reading the length costs no sync."""
        tokens = self.encoders.encode_text(ids)
        return tokens[
            torch.arange(len(ids), device=ids.device), self.encoders.eot_index(ids)
        ].float()

    def compile_parts(self, length_bucket: int) -> None:
        """torch.compile the encoders and the cross-modal modules in place (parameter names
        and checkpoints unchanged). Static shapes: one graph per caption-length bucket
        (`train.length_bucket`), never one per batch; the losses stay eager (small, and
        their selection sizes vary). Evaluation (`encode_image`, `encode_text`) stays eager:
        its batch sizes would add graphs, for a small share of the time."""
        import torch._dynamo.config

        # Graphs per compiled function: every bucket, the full context (IRRA's MLM), the
        # image encoder with and without the MIM mask.
        graphs = -(-self.encoders.spec.context // length_bucket) + 2
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, graphs)
        enc = self.encoders
        self._compiled["image"] = torch.compile(enc.encode_image, dynamic=False)
        self._compiled["text"] = torch.compile(enc.encode_text, dynamic=False)
        for name in ("mlm_cross", "mim_cross"):
            if hasattr(self, name):
                getattr(self, name).compile(dynamic=False)

    def _encoder(self, which: str):
        """The training pass's encoder function (`image` or `text`): compiled by
        `compile_parts`, or the encoders' own."""
        return self._compiled.get(which) or getattr(self.encoders, f"encode_{which}")

    def new_module_names(self) -> set[str]:
        """Top-level modules that IRRA trains at the higher learning rate."""
        return {
            n
            for n in (
                "classifier",
                "mlm_cross",
                "mlm_head",
                "mim_cross",
                "mim_head",
                "attribute_head",
            )
            if hasattr(self, n)
        }

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss parts of one batch (weighted by the config) and their weighted sum `loss`.

        Nothing here reads a device value (no sync): captions come as the batch holds them
        (the trainer cuts them to a length read on the host: `caption_length`, `trim_batch`),
        the MLM head runs on a number of rows counted on the host (`batch["mlm_capacity"]`,
        `mlm_capacity`; default: every position) and the losses are masked means."""
        cfg, spec = self.cfg, self.heads_spec
        images, ids, pids = batch["images"], batch["caption_ids"], batch["pids"]
        w = cfg.loss
        out: dict[str, torch.Tensor] = {}

        image_tokens = self._encoder("image")(images)
        # IRRA parity: its in-place mutation trains SDM and ID on the masked caption.
        masked_retrieval = spec.mlm and cfg.mlm.masked_caption_for_retrieval
        retrieval_ids = batch["mlm_ids"] if masked_retrieval else ids
        text_tokens = self._encoder("text")(retrieval_ids)
        rows = torch.arange(len(ids), device=ids.device)
        v = image_tokens[:, 0].float()
        t = text_tokens[rows, self.encoders.eot_index(retrieval_ids)].float()

        if w.sdm_weight > 0:
            out["sdm"] = w.sdm_weight * losses.sdm_loss(v, t, pids, self.logit_scale)
        if w.id_weight > 0:
            out["id"] = w.id_weight * losses.id_loss(self.classifier, v, t, pids)
        if spec.attributes:
            labels = self.attribute_table[pids.reshape(-1).long()]
            out["attribute"] = w.attribute_weight * losses.attribute_loss(
                self.attribute_head, v, t, labels, spec.attributes
            )
        if w.itc_weight > 0:  # CLIP clamps its logit scale at 100
            scale = self.itc_logit_scale.clamp(max=math.log(100.0)).exp()
            out["itc"] = w.itc_weight * losses.itc_loss(v, t, scale)

        clean_text = None if masked_retrieval else text_tokens
        masked_text = text_tokens if masked_retrieval else None
        if spec.mlm:
            if masked_text is None:
                masked_text = self._encoder("text")(batch["mlm_ids"])
            out["mlm"] = w.mlm_weight * self._mlm(image_tokens, masked_text, batch)

        if spec.mim_target != "none":
            out["mim"] = w.mim_weight * self._mim(images, batch, clean_text, masked_text)

        out["loss"] = sum(out.values())
        return out

    def _mlm(
        self,
        image_tokens: torch.Tensor,
        masked_text: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """MLM loss without a sync: the head runs on `mlm_capacity` rows, the chosen positions
        first (a stable sort of the labels, so no boolean indexing); the other rows carry the
        ignore label and drop out of the mean."""
        x = self._mlm_states(image_tokens, masked_text, batch).flatten(0, 1)
        labels = batch["mlm_labels"].flatten()
        capacity = batch.get("mlm_capacity") or labels.numel()
        if capacity < labels.numel():
            rows = (labels == IGNORE_INDEX).to(torch.uint8).argsort(stable=True)[:capacity]
            x, labels = x.index_select(0, rows), labels.index_select(0, rows)
        return losses.mlm_loss(self.mlm_head(x), labels)

    def _mlm_states(
        self,
        image_tokens: torch.Tensor,
        masked_text: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """[B, L, D]: the masked captions' tokens after the image->text cross-modal module."""
        pad = None if self.cfg.mlm.attend_padding else padding_mask(batch["mlm_ids"])
        return self.mlm_cross(masked_text, image_tokens, q_pad_mask=pad)

    def mlm_predict(
        self,
        image_tokens: torch.Tensor,
        masked_text: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocabulary logits [N, V] (float32), original token ids [N]) at the N chosen
        positions of the masked captions, read against `image_tokens` (for analysis: the
        boolean selection waits for the device)."""
        x = self._mlm_states(image_tokens, masked_text, batch)
        labels = batch["mlm_labels"]
        chosen = labels != IGNORE_INDEX
        return self.mlm_head(x[chosen]).float(), labels[chosen]

    def _mim(
        self,
        images: torch.Tensor,
        batch: dict[str, torch.Tensor],
        clean_text: torch.Tensor | None,
        masked_text: torch.Tensor | None,
    ) -> torch.Tensor:
        """MIM loss; `clean_text` / `masked_text`: the captions' tokens if already encoded."""
        pred, mask = self.mim_predict(images, batch, clean_text, masked_text)
        kind = self.heads_spec.mim_target
        if kind == "semantic":
            return losses.semmim_loss(pred, batch["patch_labels"], mask)
        if kind == "feature":
            # The teacher: the same encoder on the clean image, without gradient (our choice
            # where the paper is silent: last-layer patch tokens, softmax over the width).
            with torch.no_grad():
                teacher = self._encoder("image")(images)[:, 1:]
            return losses.mim_feature_loss(pred, teacher, mask, self.cfg.mim.feature_temperature)
        pixels = patchify(images.float(), self.encoders.spec.patch)
        if kind == "mean_rgb":  # each patch's mean colour (normalised image units)
            colour = pixels.unflatten(-1, (-1, 3)).mean(dim=-2)
            return losses.mim_pixel_loss(pred, colour, mask, norm_pix=False)
        return losses.mim_pixel_loss(pred, pixels, mask, norm_pix=self.cfg.mim.norm_pixels)

    def mim_predict(
        self,
        images: torch.Tensor,
        batch: dict[str, torch.Tensor],
        clean_text: torch.Tensor | None = None,
        masked_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-patch predictions [B, P, C] (float32: class logits or pixels), mask [B, P])
        of a random patch mask (`batch["mim_generator"]` draws it) read against the captions
        (`clean_text` / `masked_text`: their tokens if already encoded)."""
        cfg = self.cfg
        mask = random_patch_mask(
            len(images),
            self.encoders.spec.grid,
            cfg.mim.mask_ratio,
            cfg.mim.masking,
            images.device,
            batch.get("mim_generator"),
        )
        patches = self._encoder("image")(images, mask)[:, 1:]
        if cfg.mim.caption == "masked" and "mlm_ids" in batch:
            kv_ids, kv = batch["mlm_ids"], masked_text
        else:
            kv_ids, kv = batch["caption_ids"], clean_text
        if kv is None:
            kv = self._encoder("text")(kv_ids)
        cross = self.mim_cross if hasattr(self, "mim_cross") else self.mlm_cross
        return self.mim_head(cross(patches, kv, padding_mask(kv_ids))).float(), mask


def build_model(
    cfg: Config, vocab_size: int, eot_id: int, num_ids: int, attributes: tuple[int, ...] = ()
) -> BiLMa:
    """The model of a config: pretrained encoders from a local folder, or a named size.
    `attributes`: classes per attribute of the positive control (`loss.attribute_weight`)."""
    from bilma.model.clip import build_encoders, load_pretrained, spec_from_config

    if cfg.model.pretrained:
        encoders = load_pretrained(cfg.model.pretrained, cfg, vocab_size, eot_id)
    else:
        encoders = build_encoders(spec_from_config(cfg, vocab_size, eot_id))
    return BiLMa(encoders, head_spec(cfg, num_ids, encoders.spec.patch, attributes), cfg)


def build_untrained(cfg: Config, data: PedesData) -> tuple[BiLMa, str]:
    """The config's model as built for `data`, untrained (zero-shot: its `model.pretrained`
    weights), and what its weights are, in words."""
    tok = data.tokenizer
    model = build_model(cfg, tok.vocab_size, tok.eot_id, data.num_train_ids)
    return model, str(cfg.model.pretrained or f"random {cfg.model.name} weights")


def model_signature(model: BiLMa) -> dict:
    """Shapes-defining description saved with checkpoints and compared on load."""
    from dataclasses import asdict

    return {"encoders": model.encoders.spec.to_dict(), "heads": asdict(model.heads_spec)}


def build_from_signature(signature: dict, cfg: Config) -> BiLMa:
    """Rebuild a model (random weights) with exactly the shapes of a saved signature."""
    enc = dict(signature["encoders"])
    enc["grid"] = tuple(enc["grid"])
    return BiLMa(CLIPEncoders(EncoderSpec(**enc)), HeadSpec(**signature["heads"]), cfg)


def signature_mismatch(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two model signatures, e.g. 'encoders.grid: [24, 8] != [12, 4]'."""
    diffs = []
    for part in ("encoders", "heads"):
        a, b = _with_defaults(part, saved), _with_defaults(part, current)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{part}.{key}: checkpoint {a.get(key)!r} != config {b.get(key)!r}")
    return diffs


def _with_defaults(part: str, signature: dict) -> dict:
    """A signature part with the defaults of fields added since older checkpoints."""
    values = dict(signature.get(part, {}))
    if part == "heads":
        for f in fields(HeadSpec):
            if f.default is not MISSING:
                values.setdefault(f.name, f.default)
    return values
