"""The encoder seam: preprocessing, tokenising and running both towers, shared by predict, fit and explain.

Everything here is safe to call from several threads at once: the towers are run through the adapters
(which never edit the model), and the prompt feature cache is locked and keyed by a fingerprint of the
text tower's parameters, so a weight change (an optimiser step, ``load_state_dict``, an in-place edit or
a reassigned parameter) can never serve stale encodings.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import Features, ModelAdapter, adapter_for
from .inputs import check_prompts, image_batch

PAD_CUT_RTOL = 1e-5  # largest change (relative to the largest value) a padding cut may make: float32 round-off
PROGRESS_BATCHES = 4  # prompt batches from which encoding shows a progress bar (193+ prompts at 64)
ALGEBRA_DTYPE = torch.float64  # posterior algebra runs in float64 (method.md §9: fp64 inverses)


def autocast(device: torch.device) -> AbstractContextManager:
    """float16 autocast for the encoders on CUDA; disabled elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


class PromptCache:
    """A thread-safe LRU of prompt features ``prompt -> (activation [p_t], embedding [D])``.

    All entries belong to one text-tower fingerprint; a lookup with another fingerprint empties the cache.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._key: tuple[Hashable, ...] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (the next lookups encode afresh)."""
        with self._lock:
            self._entries.clear()

    def lookup(self, key: tuple[Hashable, ...], prompts: Sequence[str]) -> dict[str, tuple[torch.Tensor, ...]]:
        """The cached features among ``prompts`` (marked recently used)."""
        with self._lock:
            if key != self._key:
                self._entries.clear()
                self._key = key
            hits: dict[str, tuple[torch.Tensor, ...]] = {}
            for p in prompts:
                if p in self._entries:
                    self._entries.move_to_end(p)
                    hits[p] = self._entries[p]
            return hits

    def store(self, key: tuple[Hashable, ...], features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Insert freshly computed features (dropped if the weights changed meanwhile) and evict the oldest."""
        with self._lock:
            if key != self._key:
                return
            self._entries.update(features)
            for p in features:
                self._entries.move_to_end(p)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class Encoder:
    """Runs the two towers of a model in batches (through its adapter) and returns float64 CPU features.

    Args:
        model: a built model of a registered family (put in eval mode on ``device`` by the caller).
        tokenizer, preprocess: the matching tokenizer and eval image transform.
        device: where the towers run (float16 autocast on CUDA).
        batch_size: images / prompts per tower call.
        prompt_cache_size: prompt encodings kept (LRU, keyed by the text weights' fingerprint).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess: Any, device: torch.device, *,
                 batch_size: int = 64, prompt_cache_size: int = 4096) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.batch_size = batch_size
        self.adapter: ModelAdapter = adapter_for(model)
        self.prompt_cache = PromptCache(prompt_cache_size)
        self.pad_cut_exact: bool | None = None  # see token_features; None until checked on a batch

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The image tower's input ``(H, W)`` in pixels, or None."""
        return self.adapter.image_size

    @property
    def context_length(self) -> int:
        """Tokens per prompt: the tokenizer's context length, else the text tower's."""
        return self.adapter.context_length(self.tokenizer)

    @property
    def image_dtype(self) -> torch.dtype:
        """The dtype of the image tower's parameters (inputs are cast to it)."""
        return self.adapter.image_dtype

    def preprocess_images(self, images: Any) -> torch.Tensor:
        """PIL images / paths / bytes / a tensor -> a validated batch [N, 3, H, W] in the tower's dtype (CPU)."""
        return image_batch(images, self.preprocess, self.image_size).to(self.image_dtype)

    def tokenize(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Token ids [C, context]; prompts longer than the context are truncated with a warning."""
        prompts = check_prompts(prompts)
        ctx = self.context_length
        for i, n in enumerate(self.adapter.token_counts(self.tokenizer, prompts)):
            if n > ctx:
                warnings.warn(f"prompt {i} ({prompts[i][:40]!r}...) has {n} tokens; truncated to the "
                              f"context length {ctx}", stacklevel=4)
        return self.tokenizer(prompts)

    def image_features(self, x: torch.Tensor) -> Features:
        """Activations [N, p] and mean embeddings [N, D] (float64, CPU) of a preprocessed batch."""
        outs = []
        for chunk in x.split(self.batch_size):
            with torch.inference_mode(), autocast(self.device):
                feats = self.adapter.image.features(chunk.to(self.device))
            outs.append(feats.to("cpu", ALGEBRA_DTYPE))  # outside inference mode: usable by autograd
        return Features(torch.cat([o.activations for o in outs]), torch.cat([o.embeddings for o in outs]))

    def token_features(self, tokens: torch.Tensor) -> Features:
        """Activations [C, p_t] and mean embeddings [C, D] (float64, CPU) of token ids [C, L].

        The padding after the batch's longest prompt is cut off where that leaves the features unchanged:
        a causal tower pooled at the end token (CLIP's) never sees it, so prompts of 10 tokens run on 10
        positions instead of 77. Whether the cut is exact is checked once, on the first batch it would
        shorten (both ways, to :data:`PAD_CUT_RTOL` of the largest value), and kept in :attr:`pad_cut_exact`;
        towers that see the padding (SigLIP pools the last position) or refuse a shorter sequence keep it.
        """
        length = self.used_positions(tokens)
        if length >= tokens.shape[1] or self.pad_cut_exact is False:
            return self._text_features(tokens)
        if self.pad_cut_exact is None:
            full = self._text_features(tokens)
            try:
                cut = self._text_features(tokens[:, :length])
            except (RuntimeError, ValueError, IndexError):  # e.g. a fixed-length positional table
                cut = None
            self.pad_cut_exact = cut is not None and all(
                torch.allclose(c, f, rtol=PAD_CUT_RTOL, atol=PAD_CUT_RTOL * float(f.abs().max()))
                for c, f in ((cut.activations, full.activations), (cut.embeddings, full.embeddings)))
            return full
        return self._text_features(tokens[:, :length])

    def used_positions(self, tokens: torch.Tensor) -> int:
        """Positions up to the last end token of any prompt in ``tokens`` [C, L] (L if unknown)."""
        try:
            info = self.adapter.tokenizer_info(self.tokenizer)
        except TypeError:  # a tokenizer without known pad / end ids: never cut
            return tokens.shape[1]
        return max((info.length(row) for row in tokens.tolist()), default=tokens.shape[1])

    def _text_features(self, tokens: torch.Tensor) -> Features:
        with torch.inference_mode(), autocast(self.device):
            feats = self.adapter.text.features(tokens.to(self.device))
        return feats.to("cpu", ALGEBRA_DTYPE)  # outside inference mode: usable by autograd

    def encode_images(self, images: Any) -> Features:
        """Features of images given as PIL images / paths / bytes / a preprocessed tensor."""
        return self.image_features(self.preprocess_images(images))

    def encode_prompts(self, prompts: str | Sequence[str]) -> Features:
        """Features of the prompts, from the cache where the text weights are unchanged."""
        prompts = check_prompts(prompts)
        key = self.adapter.text_fingerprint()
        rows = self.prompt_cache.lookup(key, prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in rows]
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        starts = range(0, len(missing), self.batch_size)  # streamed in batches; a bar for long label sets
        for start in tqdm(starts, desc="encoding prompts", unit="batch", disable=len(starts) < PROGRESS_BATCHES):
            batch = missing[start:start + self.batch_size]
            feats = self.token_features(self.tokenize(batch))
            fresh.update({p: (feats.activations[i], feats.embeddings[i]) for i, p in enumerate(batch)})
        if fresh:
            self.prompt_cache.store(key, fresh)
            rows.update(fresh)
        return Features(torch.stack([rows[p][0] for p in prompts]), torch.stack([rows[p][1] for p in prompts]))
