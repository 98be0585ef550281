"""The text tower built into ``open_clip.CLIP`` (its text parts sit on the model itself): the projection
is ``text_projection`` ([p_t, D] parameter used as ``g @ P``, or an ``nn.Linear``); ``g`` is the pooled,
final-normed transformer output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import TextTower, linear_projection
from .registry import Family


def build(model: nn.Module, tower: Any) -> TextTower:
    """The text parts of the CLIP model ``tower`` (``= model``) split at ``text_projection``."""
    from open_clip.transformer import text_global_pool

    def pre(text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features [N, p_t] (``CLIP.encode_text`` without the projection)."""
        cast = tower.transformer.get_cast_dtype()
        x = (tower.token_embedding(text) if token_embeddings is None else token_embeddings).to(cast)
        seq_len = text.shape[1]  # shorter than the context when a caller cut the padding off (token attribution)
        mask = tower.attn_mask if tower.attn_mask is None else tower.attn_mask[:seq_len, :seq_len]
        x = x + tower.positional_embedding[:seq_len].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))
        return text_global_pool(x, text, tower.text_pool_type, eos_token_id=getattr(tower, "text_eos_id", None))

    return TextTower(linear_projection(tower, "text_projection", "text_projection", pre), tower.token_embedding,
                     context_length=int(tower.context_length))


FAMILY = Family("text", "open_clip.model.CLIP", "open_clip CLIP built-in text transformer", build,
                label="TextTransformer")
