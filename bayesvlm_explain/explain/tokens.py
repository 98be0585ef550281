"""Token attributions: which words of a prompt carry its (text-side) uncertainty.

captum's ``IntegratedGradients`` integrates from a baseline prompt to the real one *in token-embedding
space*: the baseline keeps the start and end tokens and the padding and replaces every other token by a
neutral token (the tokenizer's pad token unless given). The text tower is run by the adapter with the
interpolated embeddings in place of its token-embedding layer's output (no hook on the shared model, so
predictions in other threads are unaffected) and always sees the real token ids (the pooling position and
any padding mask stay put), so kept positions get exactly zero attribution and the scores sum to
``target(prompt) − target(baseline)`` up to the integration error (``delta``).

Speed: a causal text tower pooled at the end token (CLIP's) gives the same features whether or not the
padding after the end token is there, so the integration runs on the prompt's own tokens only (7 instead
of 77 positions for "a photo of a cat"). Whether the cut is exact is the encoder's verdict
(``Encoder.pad_cut_exact``, checked once per encoder on the first prompts it could shorten); before it has
one, the cut is checked on the call: the cut sequence is used only when its target values equal the full
sequence's to 1e-6 relative (:data:`CUT_RTOL`). Otherwise (a padding mask, pooling at the last position, a
tower that refuses a shorter sequence) the full context is integrated.

Targets for image ``n`` and the prompt: ``"text_variance"`` (the logit variance from the text
projection's posterior, ``w_txt[n]·t̂_c``), ``"image_variance"``, ``"variance"`` and ``"mean"`` (the
logit, for contrast). All depend on the prompt's own features only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..adapters import Features, adapter_for
from ..inputs import InputError, check_prompts
from ..options import MOMENT_TARGETS, check_option

if TYPE_CHECKING:
    from ..model import BayesVLM
from .targets import check_grad_mode, moment_values

TokenTarget = Literal["text_variance", "image_variance", "variance", "mean"]
Ends = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # prompt embeddings, baseline embeddings, target at both
CUT_RTOL = 1e-6
"""Largest relative change of the target allowed when the padding after the end token is cut off."""


@dataclass
class TokenAttributionResult:
    """Per-token scores of one prompt (positions up to the end token; padding is dropped).

    scores: [L] float64, in the target's units; special (start/end) tokens score exactly 0.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    scores: torch.Tensor
    special: list[bool]
    target: str
    target_value: float
    baseline_value: float
    delta: float  # Σ scores − (target_value − baseline_value), IG integration error
    positions: int = 0  # token positions integrated: the prompt's own when the padding was cut off, else the context

    def pairs(self, include_special: bool = False) -> list[tuple[str, float]]:
        """``(token, score)`` pairs in prompt order."""
        return [(t, float(s)) for t, s, sp in zip(self.tokens, self.scores, self.special, strict=True)
                if include_special or not sp]


def token_embedding_layer(model: nn.Module) -> nn.Module:
    """The token-embedding module of the model's text tower (found by its registered family)."""
    return adapter_for(model).token_embedding


class TokenAttribution:
    """Attribute a prompt's logit moment against one image to the prompt's tokens.

    Args:
        vlm: a ``BayesVLM`` with a posterior.
        target: ``"text_variance"`` (default), ``"image_variance"``, ``"variance"`` or ``"mean"``.
        variance: ``"projected"``, ``"expected_norm"`` or ``"diagonal"`` moments.
    """

    def __init__(self, vlm: BayesVLM, target: TokenTarget = "text_variance", *, variance: str = "projected") -> None:
        check_option("target", target, MOMENT_TARGETS)
        check_option("variance", variance)
        self.vlm = vlm
        self.target = target
        self.variance = variance
        self.info = vlm.adapter.tokenizer_info(vlm.tokenizer)

    def _baseline(self, tokens: torch.Tensor, length: int, special: list[bool], token_id: int | None) -> torch.Tensor:
        """Token ids [1, L] with every content token replaced by the neutral one (specials and padding kept)."""
        neutral = self.info.pad_id if token_id is None else int(token_id)
        content = torch.tensor([not sp for sp in special] + [False] * (tokens.shape[1] - length), device=tokens.device)
        baseline = tokens.clone()
        baseline[0, content] = neutral
        return baseline

    def attribute(
        self,
        image: Any,
        prompt: str,
        *,
        n_steps: int = 32,
        internal_batch_size: int | None = None,
        baseline_token_id: int | None = None,
    ) -> TokenAttributionResult:
        """Token scores of ``prompt`` for ``image`` (one image: PIL, path, bytes, [1, 3, H, W], or its
        already-encoded :class:`~bayesvlm_explain.adapters.Features`, so a caller that has encoded the image
        does not encode it again).

        Args:
            n_steps: IG integration points (Gauss-Legendre).
            internal_batch_size: token sequences per forward/backward pass (default ``vlm.batch_size``).
            baseline_token_id: the neutral token replacing the content tokens (default: the pad token).
        """
        check_grad_mode()
        from captum.attr import IntegratedGradients

        prompt = check_prompts(prompt)[0]
        vlm = self.vlm
        head = vlm.head(self.variance, vlm.device)
        img = image if isinstance(image, Features) else vlm.encode_images(image)
        if img.embeddings.shape[0] != 1:
            raise InputError(f"token attribution takes one image, got {img.embeddings.shape[0]}")
        img_mean, img_scale = head.image_inputs(img)
        tokens = vlm.tokenize([prompt]).to(vlm.device)
        ids = tokens[0].tolist()
        length = self.info.length(ids)
        special = [t in self.info.special for t in ids[:length]]
        baseline = self._baseline(tokens, length, special, baseline_token_id)
        layer = vlm.adapter.token_embedding
        text_proj, target = vlm.adapter.text, self.target

        def of_features(feats: Features) -> torch.Tensor:
            txt_mean, txt_act = head.text_inputs(feats)
            m = head.moments(img_mean, img_scale, txt_mean, txt_act)  # 1 image × B prompts
            return moment_values(m, target)[0]  # [B]

        def forward(emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
            return of_features(text_proj.features(seq.expand(emb.shape[0], -1), token_embeddings=emb))

        def ends(seq: torch.Tensor, base: torch.Tensor, prompt_value: torch.Tensor | None = None) -> Ends:
            """Embeddings of the prompt and its baseline, and the target at both ([2]), in one pass (only the
            baseline's when the prompt's value is given)."""
            with torch.no_grad():
                emb, base_emb = layer(seq), layer(base)
                if prompt_value is None:
                    return emb, base_emb, forward(torch.cat([emb, base_emb]), seq)
                return emb, base_emb, torch.cat([prompt_value, forward(base_emb, seq)])

        # On the CPU the prompt's value comes from the encoder's cached encoding (the same tower run, no
        # autocast), so only the baseline costs a pass. Where the encoder has already found the padding cut
        # exact (or not), its verdict is used; else the cut is checked here against the full context.
        cached = of_features(vlm.encode_prompts([prompt])).detach() if vlm.device.type == "cpu" else None
        verdict = vlm.encoder.pad_cut_exact if length < tokens.shape[1] else False
        if verdict:
            tokens, baseline = tokens[:, :length], baseline[:, :length]
        emb, base_emb, ends_used = ends(tokens, baseline, cached)
        reported = float(ends_used[0])  # the prompt's value (on the CPU the encoder's cached one)
        cut = _cut_ends(ends, tokens, baseline, length, ends_used) if verdict is None else None
        if cut is not None:
            tokens, (emb, base_emb, ends_used) = tokens[:, :length], cut
        value, base_value = ends_used.unbind()
        with torch.enable_grad():
            ig = IntegratedGradients(lambda e: forward(e, tokens), multiply_by_inputs=True)
            attr = ig.attribute(emb, baselines=base_emb, n_steps=n_steps, method="gausslegendre",
                                internal_batch_size=internal_batch_size or vlm.batch_size)
        scores = attr[0].sum(-1).to(torch.float64).detach().cpu()
        delta = float(scores.sum() - (value - base_value))
        return TokenAttributionResult(
            prompt=prompt,
            tokens=[self.info.decode(t) for t in ids[:length]],
            token_ids=ids[:length],
            scores=scores[:length],
            special=special,
            target=target,
            target_value=reported,
            baseline_value=float(base_value),
            delta=delta,
            positions=int(tokens.shape[1]),
        )



def _cut_ends(ends: Callable[[torch.Tensor, torch.Tensor], Ends], tokens: torch.Tensor, baseline: torch.Tensor,
              length: int, full: torch.Tensor) -> Ends | None:
    """``ends`` of the sequences cut after the end token (position ``length − 1``), or None where that is
    not exact: the tower refuses the shorter sequence or either target moves by more than :data:`CUT_RTOL`."""
    if length >= tokens.shape[1]:
        return None
    try:
        cut = ends(tokens[:, :length], baseline[:, :length])
    except (RuntimeError, ValueError, IndexError):  # e.g. a tower with a fixed-length positional table
        return None
    ok = torch.allclose(cut[2], full, rtol=CUT_RTOL, atol=CUT_RTOL * float(full.abs().max()))
    return cut if ok else None
