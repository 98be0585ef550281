"""open_clip ``TextTransformer`` (the text tower of ``CustomTextCLIP``, e.g. SigLIP): the projection is
``text.text_projection`` (parameter or ``nn.Linear``, with bias in SigLIP). Towers with an appended CLS
embedding (CoCa) have no single pooled input to it and are refused."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import TextTower, UnsupportedModelError, linear_projection
from .registry import Family


def build(model: nn.Module, tower: Any) -> TextTower:
    """The tower ``model.text`` split at ``text_projection``."""
    from open_clip.transformer import text_global_pool

    if getattr(tower, "cls_emb", None) is not None:
        raise UnsupportedModelError("text towers with an appended CLS embedding are not supported")

    def pre(text: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features [N, p_t] (``TextTransformer.forward`` without the projection)."""
        cast = tower.transformer.get_cast_dtype()
        seq_len = text.shape[1]
        x = (tower.token_embedding(text) if token_embeddings is None else token_embeddings).to(cast)
        attn_mask = tower.attn_mask
        if tower.use_pad_mask:
            pad = tower._build_additive_mask(text, seq_len, x.dtype)
            attn_mask = pad if attn_mask is None else attn_mask[:seq_len, :seq_len].unsqueeze(0) + pad
        x = x + tower.positional_embedding[:seq_len].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=attn_mask))
        return text_global_pool(x, text, pool_type=tower.pool_type, eos_token_id=getattr(tower, "eos_id", None))

    return TextTower(linear_projection(tower, "text_projection", "text.text_projection", pre),
                     tower.token_embedding, context_length=int(tower.context_length))


FAMILY = Family("text", "open_clip.transformer.TextTransformer", "open_clip TextTransformer", build)
