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
from dataclasses import MISSING, dataclass, fields

import torch
from torch import nn

from bilma.config import Config
from bilma.labels import IGNORE_INDEX, get_label_set
from bilma.model import losses
from bilma.model.clip import CLIPEncoders, EncoderSpec
from bilma.model.cross import CrossModal, Head
from bilma.patches import patchify


@dataclass(frozen=True)
class HeadSpec:
    """What fixes the shapes of the parts beyond the encoders; stored in checkpoints."""

    num_ids: int
    cross_depth: int
    cross_heads: int
    mlm: bool
    mim_target: str  # semantic | pixel | none
    mim_classes: int  # parser classes for semantic, patch*patch*3 for pixel, 0 for none
    mim_module: str  # own | shared
    mim_depth: int
    # Defaults: what checkpoints written before these fields existed always had.
    classifier: bool = True  # the ID classifier
    mask_token: bool = True  # MIM's mask token in the image encoder


def head_spec(cfg: Config, num_ids: int, patch: int) -> HeadSpec:
    target = cfg.mim.target if cfg.loss.mim_weight > 0 else "none"
    classes = {
        "semantic": get_label_set(cfg.mim.labels).num_classes,
        "pixel": patch * patch * 3,
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
    )


def random_patch_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    mode: str,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, P] bool, True = masked. `patch`: exactly round(ratio * P) random patches per image;
    `block`: BEiT-style rectangles of random aspect until the count is reached (then trimmed
    to the same exact count, so every image contributes equally to the loss)."""
    rows, cols = grid
    p = rows * cols
    n = max(1, round(ratio * p))
    if mode == "patch":
        scores = torch.rand(batch, p, generator=generator)
        idx = scores.argsort(dim=1)[:, :n]
        return torch.zeros(batch, p, dtype=torch.bool).scatter_(1, idx, True).to(device)
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
    return masks.flatten(1).to(device)


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop the padding columns after the batch's last EOT.

    The text encoder is causal, so a token never sees the padding after it and every kept
    position (EOT included) gets the same features; captions average about a third of
    the context, so this saves most of the text encoder's work.
    """
    length = int(ids.argmax(dim=-1).max()) + 1
    return ids[:, :length]


def trim_batch(batch: dict[str, torch.Tensor], keep_mlm: bool = False) -> dict[str, torch.Tensor]:
    """Captions cut to the batch's longest; `keep_mlm`: the MLM ids and labels keep every
    position (IRRA's MLM attends over the padding too)."""
    length = trim_padding(batch["caption_ids"]).shape[1]
    out = dict(batch)
    keys = ("caption_ids",) if keep_mlm else ("caption_ids", "mlm_ids", "mlm_labels")
    for key in keys:
        if key in out:
            out[key] = out[key][:, :length]
    return out


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
        if cfg.loss.itc_weight > 0:  # CLIP's learnable temperature: log(1 / 0.07) at start
            self.itc_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if heads.mlm:
            self.mlm_cross = CrossModal(width, heads.cross_heads, heads.cross_depth)
            self.mlm_head = Head(width, encoders.spec.vocab_size, heads.cross_depth)
        if heads.mim_target != "none":
            if heads.mim_module == "own" or not heads.mlm:
                self.mim_cross = CrossModal(width, heads.cross_heads, heads.mim_depth)
            self.mim_head = Head(width, heads.mim_classes, heads.mim_depth)

    # ------------------------------------------------------------------ encoders (test time)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image features [B, D] (CLS), not normalised."""
        return self.encoders.encode_image(images)[:, 0].float()

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Global text features [B, D] (EOT), not normalised."""
        ids = trim_padding(ids)
        tokens = self.encoders.encode_text(ids)
        return tokens[
            torch.arange(len(ids), device=ids.device), self.encoders.eot_index(ids)
        ].float()

    def new_module_names(self) -> set[str]:
        """Top-level modules that IRRA trains at the higher learning rate."""
        return {
            n
            for n in ("classifier", "mlm_cross", "mlm_head", "mim_cross", "mim_head")
            if hasattr(self, n)
        }

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss parts of one batch (weighted by the config) and their weighted sum `loss`."""
        cfg, spec = self.cfg, self.heads_spec
        batch = trim_batch(batch, keep_mlm=cfg.mlm.attend_padding)
        images, ids, pids = batch["images"], batch["caption_ids"], batch["pids"]
        w = cfg.loss
        out: dict[str, torch.Tensor] = {}

        image_tokens = self.encoders.encode_image(images)
        # IRRA parity: its in-place mutation trains SDM and ID on the masked caption.
        masked_retrieval = spec.mlm and cfg.mlm.masked_caption_for_retrieval
        retrieval_ids = batch["mlm_ids"] if masked_retrieval else ids
        text_tokens = self.encoders.encode_text(retrieval_ids)
        rows = torch.arange(len(ids), device=ids.device)
        v = image_tokens[:, 0].float()
        t = text_tokens[rows, self.encoders.eot_index(retrieval_ids)].float()

        if w.sdm_weight > 0:
            out["sdm"] = w.sdm_weight * losses.sdm_loss(v, t, pids, self.logit_scale)
        if w.id_weight > 0:
            out["id"] = w.id_weight * losses.id_loss(self.classifier, v, t, pids)
        if w.itc_weight > 0:  # CLIP clamps its logit scale at 100
            scale = self.itc_logit_scale.clamp(max=math.log(100.0)).exp()
            out["itc"] = w.itc_weight * losses.itc_loss(v, t, scale)

        clean_text = None if masked_retrieval else text_tokens
        masked_text = text_tokens if masked_retrieval else None
        if spec.mlm:
            if masked_text is None:
                masked_text = self.encoders.encode_text(batch["mlm_ids"])
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
        logits, labels = self.mlm_predict(image_tokens, masked_text, batch)
        return losses.mlm_loss(logits[None], labels[None])

    def mlm_predict(
        self,
        image_tokens: torch.Tensor,
        masked_text: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocabulary logits [N, V] (float32), original token ids [N]) at the N chosen
        positions of the masked captions, read against `image_tokens`."""
        pad = None if self.cfg.mlm.attend_padding else padding_mask(batch["mlm_ids"])
        x = self.mlm_cross(masked_text, image_tokens, q_pad_mask=pad)
        # The head runs only where a token was chosen (~15%): same loss, far less work
        # than IRRA's full [B, L, vocab] logits.
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
        if self.heads_spec.mim_target == "semantic":
            return losses.semmim_loss(pred, batch["patch_labels"], mask)
        target = patchify(images.float(), self.encoders.spec.patch)
        return losses.mim_pixel_loss(pred, target, mask, norm_pix=self.cfg.mim.norm_pixels)

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
        patches = self.encoders.encode_image(images, mask)[:, 1:]
        if cfg.mim.caption == "masked" and "mlm_ids" in batch:
            kv_ids, kv = batch["mlm_ids"], masked_text
        else:
            kv_ids, kv = batch["caption_ids"], clean_text
        if kv is None:
            kv = self.encoders.encode_text(kv_ids)
        cross = self.mim_cross if hasattr(self, "mim_cross") else self.mlm_cross
        return self.mim_head(cross(patches, kv, padding_mask(kv_ids))).float(), mask


def build_model(cfg: Config, vocab_size: int, eot_id: int, num_ids: int) -> BiLMa:
    """The model of a config: pretrained encoders from a local folder, or a named size."""
    from bilma.model.clip import build_encoders, load_pretrained, spec_from_config

    if cfg.model.pretrained:
        encoders = load_pretrained(cfg.model.pretrained, cfg, vocab_size, eot_id)
    else:
        encoders = build_encoders(spec_from_config(cfg, vocab_size, eot_id))
    return BiLMa(encoders, head_spec(cfg, num_ids, encoders.spec.patch), cfg)


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
