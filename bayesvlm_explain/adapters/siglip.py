"""SigLIP image tower: an open_clip ``TimmModel`` whose timm ViT ends in a MAP attention-pool head.

The projection is ``trunk.attn_pool.mlp.fc2`` with bias; its input is the pooled latent token after the
head's norm; the attention output ``r`` is a deterministic residual added to the mean
(``u = r + fc2(f)``, method.md §1), so the mean embedding is the tower's own output.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import HookedResidualProjection, ImageTower, UnsupportedModelError, pair
from .registry import Family


def build(model: nn.Module, visual: Any) -> ImageTower:
    """The tower ``visual`` of ``model`` split at its MAP head's ``fc2``."""
    from timm.layers import AttentionPoolLatent

    trunk = visual.trunk
    pool = getattr(trunk, "attn_pool", None)
    tail_ok = (isinstance(getattr(trunk, "fc_norm", nn.Identity()), nn.Identity)
               and isinstance(getattr(trunk, "head", nn.Identity()), nn.Identity)
               and all(isinstance(m, nn.Identity | nn.Dropout) for m in visual.head.children()))
    if (not isinstance(pool, AttentionPoolLatent) or pool.mlp is None
            or not isinstance(pool.mlp.fc2, nn.Linear) or not tail_ok):
        raise UnsupportedModelError(
            f"timm image tower {type(trunk).__name__} is supported only with a MAP attention-pool "
            "head (SigLIP) and no projection after it"
        )
    if pool.latent_len != 1:
        raise UnsupportedModelError("MAP heads with more than one latent token are not supported")
    patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", None)
    return ImageTower(HookedResidualProjection(pool.mlp.fc2, "visual.trunk.attn_pool.mlp.fc2", visual, token=0),
                      visual, image_size=pair(visual.image_size), patch_size=None if patch is None else pair(patch))


FAMILY = Family("image", "open_clip.timm_model.TimmModel", "SigLIP timm ViT with a MAP head", build)
