"""``OpenCLIPAdapter``: a CLIP-style model assembled from a registered image tower and text tower.

The model follows open_clip's layout: ``encode_image`` / ``encode_text``, the image tower at
``model.visual``, the text tower at ``model.text`` or (``open_clip.CLIP``) on the model itself, and
``logit_scale`` (log ``τ``) with an optional ``logit_bias`` (SigLIP). Each tower is split by the family
registered for its class (:mod:`.registry`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from ..options import Likelihood
from .base import ImageTower, Projection, TextTower, UnsupportedModelError
from .registry import Side, find, listing
from .tokenizers import TokenizerInfo


def _tower(side: Side, model: nn.Module, candidates: list[Any], what: str) -> tuple[Any, str]:
    """``(built tower, its label)`` from the first candidate module with a registered ``side`` family."""
    for module in candidates:
        family = find(side, module) if isinstance(module, nn.Module) else None
        if family is not None:
            return family.build(model, module), family.label or type(module).__name__
    raise UnsupportedModelError(f"{what} is not supported; registered {side} towers: {listing(side)}")


class OpenCLIPAdapter:
    """Splits an open_clip-style model into feature extractors and the two Bayesian projections.

    Attributes:
        image, text: :class:`Projection` of each tower.
        image_tower, text_tower: what the two registered families built (sizes, token embedding...).
        architecture: a short description such as ``"CLIP[VisionTransformer+TextTransformer]"``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model: Any = model  # open_clip-style: attributes are read by name
        visual = getattr(model, "visual", None)
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text") or visual is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} is not a CLIP-style model (encode_image, encode_text, visual) and no "
                f"model family is registered for it; registered model families: {listing('model')}")
        self.image_tower: ImageTower
        self.text_tower: TextTower
        self.image_tower, image_kind = _tower("image", model, [visual], f"image tower {type(visual).__name__}")
        text = getattr(model, "text", None)
        self.text_tower, text_kind = _tower(
            "text", model, [text, model],
            f"text tower {type(text).__name__}" if text is not None else f"the text parts of {type(model).__name__}")
        if self.image.dim_out != self.text.dim_out:
            raise UnsupportedModelError(
                f"image and text projections map to {self.image.dim_out} and {self.text.dim_out} dims"
            )
        self.architecture = f"{type(model).__name__}[{image_kind}+{text_kind}]"

    @property
    def image(self) -> Projection:
        return self.image_tower.projection

    @property
    def text(self) -> Projection:
        return self.text_tower.projection

    @property
    def logit_scale(self) -> float:
        """``τ = exp(logit_scale)``."""
        return float(self.model.logit_scale.detach().exp().reshape(-1)[0])

    @property
    def logit_bias(self) -> float:
        """The logit bias (SigLIP), else 0."""
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().reshape(-1)[0])

    @property
    def likelihood(self) -> Likelihood:
        """``"sigmoid"`` for models with a logit bias (SigLIP), else ``"infonce"``."""
        return "sigmoid" if getattr(self.model, "logit_bias", None) is not None else "infonce"

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.image_tower.image_size

    @property
    def patch_size(self) -> tuple[int, int] | None:
        return self.image_tower.patch_size

    @property
    def image_dtype(self) -> torch.dtype:
        """The dtype of the image tower's parameters (inputs are cast to it)."""
        return next(self.image_tower.module.parameters()).dtype

    @property
    def token_embedding(self) -> nn.Module:
        return self.text_tower.token_embedding

    def context_length(self, tokenizer: Any) -> int:
        """The tokenizer's context length, else the text tower's."""
        length = getattr(tokenizer, "context_length", None) or self.text_tower.context_length
        if length is None:
            raise UnsupportedModelError(
                f"neither the {type(tokenizer).__name__} nor the text tower states a context length")
        return int(length)

    def token_counts(self, tokenizer: Any, prompts: list[str]) -> list[int]:
        """Untruncated token counts (start/end tokens included) of each prompt."""
        return self.text_tower.count_tokens(tokenizer, prompts)

    def tokenizer_info(self, tokenizer: Any) -> TokenizerInfo:
        """Pad / special ids and token strings of ``tokenizer``."""
        return self.text_tower.tokenizer_info(tokenizer)

    def text_fingerprint(self) -> tuple[Hashable, ...]:
        """A cheap key that changes whenever a text-side parameter (any parameter outside the image tower,
        the logit scale included) is edited, replaced or reloaded.

        Uses each parameter's identity, storage pointer and in-place version counter (bumped by optimiser
        steps, ``load_state_dict`` and ``mul_``-style edits); O(number of parameters), no data is read.
        """
        image = {id(p) for p in self.image_tower.module.parameters()}
        return tuple((name, id(p), p.data_ptr(), p._version) for name, p in self.model.named_parameters()
                     if id(p) not in image)
