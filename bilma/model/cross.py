"""IRRA's cross-modal module and prediction heads.

CrossModal: one cross-attention layer (queries and keys/values after their own LayerNorm, no
residual), a stack of pre-norm transformer blocks, and a final LayerNorm. Used image->text for
MLM (queries: masked-caption tokens, whose padding the blocks' self-attention can mask;
keys/values: image tokens) and text->image for MIM (queries: masked-image patch tokens;
keys/values: caption tokens with a padding mask). `ln_q`, `ln_kv` and `ln_post` are IRRA's
`ln_pre_t`, `ln_pre_i` and `ln_post` (see `bilma.training.optim` for their learning rate).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """CLIP's residual attention block (pre-norm self-attention and MLP)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, width * 4),
                gelu=QuickGELU(),
                c_proj=nn.Linear(width * 4, width),
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, key_padding_mask=pad_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class CrossModal(nn.Module):
    """Cross-attention, then `depth` transformer blocks, then LayerNorm."""

    def __init__(self, width: int, heads: int, depth: int):
        super().__init__()
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        self._init(width, max(depth, 1))

    def _init(self, width: int, depth: int) -> None:
        # IRRA's initialisation of its cross-modal transformer.
        scale = width**-0.5
        proj_std = scale * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        for attn in [self.cross_attn, *(b.attn for b in self.blocks)]:
            nn.init.normal_(attn.in_proj_weight, std=scale)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
        for b in self.blocks:
            nn.init.normal_(b.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(b.mlp.c_proj.weight, std=proj_std)

    def forward(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        kv_pad_mask: torch.Tensor | None = None,
        q_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`kv_pad_mask` [B, K] / `q_pad_mask` [B, Q], True = padding: keys of the
        cross-attention / of the blocks' self-attention (over the queries) to ignore."""
        kv = self.ln_kv(kv)
        q = self.ln_q(q)
        x = self.cross_attn(q, kv, kv, key_padding_mask=kv_pad_mask, need_weights=False)[0]
        for block in self.blocks:
            x = block(x, q_pad_mask)
        return self.ln_post(x)


class Head(nn.Module):
    """IRRA's MLM head shape: Linear - QuickGELU - LayerNorm - Linear."""

    def __init__(self, width: int, out: int, depth_for_init: int = 4):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.gelu = QuickGELU()
        self.ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, out)
        nn.init.normal_(self.dense.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(self.fc.weight, std=width**-0.5 * (2 * depth_for_init) ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(self.gelu(self.dense(x))))
