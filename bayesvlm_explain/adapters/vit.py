"""open_clip ``VisionTransformer`` image tower (CLIP ViTs): the projection is ``visual.proj`` [p, D],
applied as ``f @ proj`` (so ``W = proj.T``, no bias); ``f`` is the pooled transformer output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ImageTower, UnsupportedModelError, image_only, linear_projection, pair
from .registry import Family


def build(model: nn.Module, visual: Any) -> ImageTower:
    """The tower ``visual`` of ``model`` split at ``visual.proj``."""
    if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
        raise UnsupportedModelError("this open_clip VisionTransformer has no _embeds/_pool; open_clip >= 3.0 "
                                    "is required")

    def pre(x: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features [N, p] (``VisionTransformer.forward`` without the projection)."""
        if token_embeddings is not None:
            image_only("visual.proj")
        pooled, _ = visual._pool(visual.transformer(visual._embeds(x)))
        return pooled

    return ImageTower(linear_projection(visual, "proj", "visual.proj", pre), visual,
                      image_size=pair(visual.image_size), patch_size=pair(visual.patch_size))


FAMILY = Family("image", "open_clip.transformer.VisionTransformer", "open_clip ViT", build)
