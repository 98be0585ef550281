"""Tokenizer quirks: token counts, pad / special / end ids and token strings.

Handles open_clip's ``SimpleTokenizer`` (CLIP BPE) and its ``HFTokenizer`` wrapper of a Hugging Face
tokenizer; a text-tower family with another tokenizer passes its own functions in its ``TextTower``.
"""

from __future__ import annotations

from typing import Any

from ..inputs import InputError


def token_counts(tokenizer: Any, prompts: list[str]) -> list[int]:
    """Untruncated token counts (with start/end tokens) of each prompt, for overflow warnings."""
    inner = getattr(tokenizer, "tokenizer", None)
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return [len(tokenizer.encode(p)) + 2 for p in prompts]
    if inner is not None and callable(inner):  # HFTokenizer wraps a transformers tokenizer
        try:
            return [len(ids) for ids in inner(prompts, truncation=False)["input_ids"]]
        except (TypeError, KeyError):
            pass
    if hasattr(tokenizer, "encode"):
        return [len(tokenizer.encode(p)) for p in prompts]
    raise InputError(f"cannot count tokens with a {type(tokenizer).__name__}")


class TokenizerInfo:
    """Pad / special ids and per-id strings for open_clip's SimpleTokenizer or an HF tokenizer wrapper.

    Attributes:
        pad_id: the padding id (the default neutral token of token attributions).
        end_ids: ids that end a prompt (EOT / SEP / EOS).
        special: ids that are not words (start, end, padding markers...).
    """

    def __init__(self, tokenizer: Any) -> None:
        inner = getattr(tokenizer, "tokenizer", None)
        if hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "eot_token_id"):  # SimpleTokenizer
            self.pad_id = 0
            self.end_ids = {int(tokenizer.eot_token_id)}
            self.special = {int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)}
            self._decode = lambda i: tokenizer.decode([i]).strip()
        elif inner is not None and hasattr(inner, "all_special_ids"):  # open_clip HFTokenizer
            self.pad_id = int(inner.pad_token_id if inner.pad_token_id is not None else 0)
            self.end_ids = {int(i) for i in (inner.sep_token_id, inner.eos_token_id) if i is not None}
            self.special = {int(i) for i in inner.all_special_ids}
            self._decode = lambda i: str(inner.convert_ids_to_tokens(int(i)))
        else:
            raise TypeError(f"unsupported tokenizer {type(tokenizer).__name__}")

    def decode(self, token_id: int) -> str:
        """The string of one token id."""
        return self._decode(int(token_id))

    def length(self, ids: list[int]) -> int:
        """Positions up to and including the end token (all positions before trailing padding)."""
        ends = [i for i, t in enumerate(ids) if t in self.end_ids]
        if ends:
            return ends[0] + 1
        non_pad = [i for i, t in enumerate(ids) if t != self.pad_id]
        return (non_pad[-1] + 1) if non_pad else len(ids)
