"""Model adapters: each supported model family is a registered plug-in.

:func:`adapter_for` turns a model into a :class:`ModelAdapter` (the two Bayesian projections, their input
activations, token embeddings, patch grid, sizes, logit scale and likelihood). A whole-model family
registered for the model's class builds it directly; otherwise the model is read as open_clip-style
(:class:`OpenCLIPAdapter`) and each tower is split by the family registered for the tower's class.

Built-in families (one module each): open_clip ViT (:mod:`.vit`), SigLIP timm ViT with a MAP head
(:mod:`.siglip`), open_clip ModifiedResNet (:mod:`.resnet`), CLIP's built-in text transformer
(:mod:`.clip_text`), open_clip TextTransformer (:mod:`.text_transformer`), open_clip HFTextEncoder
(:mod:`.hf_text`). Add one with :func:`register` (see :class:`Family`). Importing this package does
not import open_clip: families import it when they build.
"""

from __future__ import annotations

from torch import nn

from . import clip_text, hf_text, resnet, siglip, text_transformer, vit
from .base import (
    Features,
    HookedResidualProjection,
    ImageTower,
    ModelAdapter,
    Projection,
    SubmoduleProjection,
    TextTower,
    UnsupportedModelError,
)
from .registry import Family, class_key, find, register, registered, unregister
from .tokenizers import TokenizerInfo, token_counts
from .two_tower import OpenCLIPAdapter

__all__ = [
    "Family",
    "Features",
    "HookedResidualProjection",
    "ImageTower",
    "ModelAdapter",
    "OpenCLIPAdapter",
    "Projection",
    "SubmoduleProjection",
    "TextTower",
    "TokenizerInfo",
    "UnsupportedModelError",
    "adapter_for",
    "class_key",
    "register",
    "registered",
    "token_counts",
    "unregister",
]

for _family in (vit.FAMILY, siglip.FAMILY, resnet.FAMILY, clip_text.FAMILY, text_transformer.FAMILY, hf_text.FAMILY):
    register(_family)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model``: its registered whole-model family, else :class:`OpenCLIPAdapter` over its
    registered image and text towers. Raises :class:`UnsupportedModelError` naming what is registered."""
    family = find("model", model)
    return family.build(model, model) if family is not None else OpenCLIPAdapter(model)
