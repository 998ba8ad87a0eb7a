"""CLIP image and text encoders from transformers, for non-square pedestrian images.

The encoders are built either from a local folder in Hugging Face format (a downloaded
`openai/clip-vit-base-patch16`) or from a named size with random weights (`tiny`, `vitb16`).

Position table: the pretrained 14x14 (+CLS) table is resized once, bilinearly as IRRA does,
to the configured grid (24x8 for 384x128) and then fine-tuned as a 193-row table. The grid is
part of the saved model spec, so a checkpoint reloads into the same shape bit-exact.
transformers' `interpolate_pos_encoding=True` would instead resample the square table at every
forward: the learned parameters would be the 14x14 table seen through a bicubic resampler
(not what IRRA fine-tunes), at an extra cost per step (STACK.md).

Both encoders return every token projected to the joint width, `[B, T, embed_dim]`, as IRRA's
CLIP does (ln_post and the projection are applied to all tokens, not only to the pooled one).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bilma.config import Config
from bilma.data.records import DataError
from bilma.errors import PretrainedNotFound  # noqa: F401  (importable from here too)

# Encoder sizes: (width, layers, heads, mlp) for vision and text, patch size.
SIZES: dict[str, dict] = {
    "tiny": dict(vision=(128, 2, 4, 512), text=(128, 2, 4, 512), patch=16),
    "vitb16": dict(vision=(768, 12, 12, 3072), text=(512, 12, 8, 2048), patch=16),
}


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that fixes the encoders' parameter shapes; stored in every checkpoint."""

    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    patch: int
    grid: tuple[int, int]  # patch rows and columns of the input (24, 8 for 384x128)
    context: int
    vocab_size: int
    embed_dim: int
    eot_id: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d


def _hf_config(spec: EncoderSpec):
    from transformers import CLIPConfig

    def part(width: int, layers: int, heads: int, mlp: int) -> dict:
        return dict(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp,
            hidden_act="quick_gelu",
        )

    text = part(spec.text_width, spec.text_layers, spec.text_heads, spec.text_mlp)
    text.update(
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.context,
        eos_token_id=spec.eot_id,
        bos_token_id=spec.eot_id - 1,
        pad_token_id=0,
    )
    vision = part(spec.vision_width, spec.vision_layers, spec.vision_heads, spec.vision_mlp)
    # A square nominal size; the real (non-square) grid lives in our own position table.
    vision.update(image_size=spec.patch * max(spec.grid), patch_size=spec.patch)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.embed_dim)


def spec_from_config(cfg: Config, vocab_size: int, eot_id: int) -> EncoderSpec:
    """The encoder spec of a named size (random weights)."""
    s = SIZES[cfg.model.name]
    h, w = cfg.data.image_size
    return EncoderSpec(
        *s["vision"],
        *s["text"],
        patch=s["patch"],
        grid=(h // s["patch"], w // s["patch"]),
        context=cfg.data.text_length,
        vocab_size=vocab_size,
        embed_dim=cfg.model.embed_dim,
        eot_id=eot_id,
    )


def resize_position_table(
    table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """[1 + h*w, D] -> [1 + H*W, D]: CLS row kept, patch rows resized bilinearly (IRRA)."""
    if tuple(old_grid) == tuple(new_grid):
        return table.clone()
    cls, grid = table[:1], table[1:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, d).to(table.dtype)
    return torch.cat([cls, grid], 0)


class CLIPEncoders(nn.Module):
    """The image and text towers of CLIP with a fixed non-square position table."""

    def __init__(self, spec: EncoderSpec, hf_model=None):
        super().__init__()
        from transformers import CLIPModel

        self.spec = spec
        if hf_model is None:
            hf_model = CLIPModel._from_config(_hf_config(spec), attn_implementation="sdpa")
        self.vision = hf_model.vision_model
        self.text = hf_model.text_model
        self.visual_projection = hf_model.visual_projection
        self.text_projection = hf_model.text_projection
        emb = self.vision.embeddings
        old = emb.position_embedding.weight.data
        side = int(math.isqrt(old.shape[0] - 1))
        table = resize_position_table(old, (side, side), spec.grid)
        emb.position_embedding = nn.Embedding(table.shape[0], table.shape[1])
        emb.position_embedding.weight.data.copy_(table)
        emb.num_patches = spec.grid[0] * spec.grid[1]
        emb.num_positions = emb.num_patches + 1
        emb.position_ids = torch.arange(emb.num_positions).unsqueeze(0)
        # Built only for masked image modelling (`add_mask_token`): a parameter that no loss
        # uses gets no gradient, and DistributedDataParallel fails on it.
        self.mask_token: nn.Parameter | None = None

    def add_mask_token(self) -> None:
        """The learnable mask token of masked image modelling (replaces patch embeddings)."""
        self.mask_token = nn.Parameter(torch.zeros(self.spec.vision_width))
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.spec.grid[0] * self.spec.grid[1]

    def encode_image(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + P, embed_dim]; `mask` [B, P] bool swaps in the mask token."""
        emb = self.vision.embeddings
        b, _, h, w = images.shape
        if (h // self.spec.patch, w // self.spec.patch) != tuple(self.spec.grid):
            raise ValueError(
                f"image size {h}x{w} does not match the model's patch grid {self.spec.grid} "
                f"(patch {self.spec.patch}); set data.image_size to the size it was built for"
            )
        x = emb.patch_embedding(images.to(emb.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this model has no mask token: it was built without MIM")
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        cls = emb.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], 1) + emb.position_embedding.weight.to(x.dtype)
        x = self.vision.pre_layrnorm(x)
        x = self.vision.encoder(inputs_embeds=x).last_hidden_state
        x = self.vision.post_layernorm(x)
        return self.visual_projection(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, L, embed_dim] (causal, as CLIP)."""
        x = self.text(input_ids=ids).last_hidden_state
        return self.text_projection(x)

    @staticmethod
    def eot_index(ids: torch.Tensor) -> torch.Tensor:
        """Position of EOT in each caption: the largest id (CLIP's pooling rule)."""
        return ids.argmax(dim=-1)


def load_pretrained(folder: str | Path, cfg: Config, vocab_size: int, eot_id: int) -> CLIPEncoders:
    """CLIP from a local Hugging Face folder, position table resized to the configured grid."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise PretrainedNotFound(
            f"model.pretrained = {folder}: not a local folder with config.json; "
            + PretrainedNotFound.fix(folder)
        )
    from transformers import CLIPModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf = CLIPModel.from_pretrained(folder, attn_implementation="sdpa", local_files_only=True)
    vc, tc = hf.config.vision_config, hf.config.text_config
    if tc.vocab_size != vocab_size:
        raise DataError(
            f"{folder}: the text encoder has {tc.vocab_size} tokens but the tokenizer has "
            f"{vocab_size}; use the tokenizer of the same folder (data.tokenizer unset)"
        )
    h, w = cfg.data.image_size
    spec = EncoderSpec(
        vc.hidden_size,
        vc.num_hidden_layers,
        vc.num_attention_heads,
        vc.intermediate_size,
        tc.hidden_size,
        tc.num_hidden_layers,
        tc.num_attention_heads,
        tc.intermediate_size,
        patch=vc.patch_size,
        grid=(h // vc.patch_size, w // vc.patch_size),
        context=min(cfg.data.text_length, tc.max_position_embeddings),
        vocab_size=vocab_size,
        embed_dim=hf.config.projection_dim,
        eot_id=eot_id,
    )
    if cfg.data.text_length > tc.max_position_embeddings:
        raise DataError(
            f"data.text_length = {cfg.data.text_length} exceeds the {folder} text encoder's "
            f"{tc.max_position_embeddings} positions"
        )
    if cfg.model.embed_dim != spec.embed_dim:
        raise DataError(
            f"model.embed_dim = {cfg.model.embed_dim} but {folder} projects to {spec.embed_dim}; "
            f"set model.embed_dim={spec.embed_dim}"
        )
    return CLIPEncoders(spec, hf)


def build_encoders(spec: EncoderSpec) -> CLIPEncoders:
    """Random-weight encoders of a spec (a named size, or the spec read from a checkpoint)."""
    return CLIPEncoders(spec)
