"""open_clip ``ModifiedResNet`` image tower (CLIP RN50, RN101, RN50x4...).

The ResNet's last feature map [N, C, h, w] is pooled by one multi-head attention step whose query is the
map's mean (plus a positional embedding); the output projection of that attention, ``attnpool.c_proj``
(``nn.Linear`` with bias, C -> D), is the linear map into the joint space. The Bayesian layer is
``c_proj`` on the attention output for the pooled query (``dim_in = C + 1``); nothing follows it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageTower, UnsupportedModelError, image_only, linear_projection, pair
from .registry import Family


def _pooled_attention(pool: Any, fmap: torch.Tensor) -> torch.Tensor:
    """The attention output [N, C] of ``pool``'s mean query over ``fmap`` [N, C, h, w], before ``c_proj``."""
    tokens = fmap.flatten(2).permute(2, 0, 1)  # [hw, N, C]
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    tokens = tokens + pool.positional_embedding[:, None, :].to(tokens.dtype)
    width = tokens.shape[-1]
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=width, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=torch.eye(width, dtype=tokens.dtype, device=tokens.device),
        out_proj_bias=tokens.new_zeros(width), use_separate_proj_weight=True, training=pool.training,
        need_weights=False)
    return out[0]


def build(model: nn.Module, visual: Any) -> ImageTower:
    """The tower ``visual`` of ``model`` split at ``visual.attnpool.c_proj``."""
    pool = getattr(visual, "attnpool", None)
    if pool is None or not isinstance(getattr(pool, "c_proj", None), nn.Linear):
        raise UnsupportedModelError("this ModifiedResNet has no attention pool with a linear c_proj")

    def pre(x: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Attention-pool output [N, C] for the pooled query (``ModifiedResNet.forward`` without ``c_proj``)."""
        if token_embeddings is not None:
            image_only("visual.attnpool.c_proj")
        fmap = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
        return _pooled_attention(pool, fmap)

    size = pair(visual.image_size)
    grid = math.isqrt(pool.positional_embedding.shape[0] - 1)  # the final feature map is grid x grid
    return ImageTower(linear_projection(pool, "c_proj", "visual.attnpool.c_proj", pre), visual,
                      image_size=size, patch_size=(size[0] // grid, size[1] // grid))


FAMILY = Family("image", "open_clip.modified_resnet.ModifiedResNet", "open_clip ModifiedResNet (RN CLIP)", build)
