"""open_clip ``HFTextEncoder`` (a Hugging Face transformer as the text tower of ``CustomTextCLIP``): the
projection is the linear ``text.proj``; its input is the tower's pooler output over the non-pad tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import TextTower, linear_projection
from .registry import Family


def build(model: nn.Module, tower: Any) -> TextTower:
    """The tower ``model.text`` split at ``proj``."""

    def pre(text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features [N, p_t] (``HFTextEncoder.forward`` without the projection)."""
        mask = (text != tower.config.pad_token_id).long()
        if token_embeddings is None:
            out = tower.transformer(input_ids=text, attention_mask=mask)
        else:
            out = tower.transformer(inputs_embeds=token_embeddings, attention_mask=mask)
        return tower.pooler(out, mask)

    return TextTower(linear_projection(tower, "proj", "text.proj", pre), tower.transformer.get_input_embeddings(),
                     context_length=int(tower.context_length))


FAMILY = Family("text", "open_clip.hf_model.HFTextEncoder", "open_clip HFTextEncoder (Hugging Face text)", build)
