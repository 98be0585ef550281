"""The one place where tower features and a posterior become logit moments (method.md §3).

``predict`` and every explanation target go through :class:`MomentHead`, so an attribution target
evaluated at the input equals the number ``predict`` reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import Features, ModelAdapter
from .options import check_option
from .posterior import Posterior
from .probcos import CosineMoments, PromptTerms, cosine_moments, image_moments, prompt_terms

FLOAT32_ERROR = 1e-5
"""Bound on the relative error of the float32 head's logit variances, means and probit probabilities against
float64 (the measured worst case is about 1e-6: tests/test_head.py, docs/numerics.md)."""
HEAD_DTYPE = torch.float64
"""The head's default precision. float32 (``dtype=torch.float32``) stays within :data:`FLOAT32_ERROR` of float64
except for nearly parallel image and prompt embeddings in the projected mode (docs/numerics.md); the default
stays float64 until the library's float64 comparisons are moved to an explicit dtype (issue 22)."""


class MomentHead:
    """The posterior algebra between tower features and logit moments, for one posterior and variance mode.

    Holds ``B̃_img⁻¹``, ``Ã_txt⁻¹`` and ``B̃_txt⁻¹`` (in ``dtype``, on ``device``). All maps are differentiable.

    Args:
        posterior: the two projections' posterior.
        adapter: the model's adapter (bias columns, logit scale and bias).
        variance: ``"projected"``, ``"expected_norm"`` (``"exact"``) or ``"diagonal"``.
        device: where the algebra runs.
        dtype: the algebra's precision: :data:`HEAD_DTYPE` (float64) by default, or ``torch.float32``. The
            covariance factors are always inverted in float64 and then rounded; float32 then costs at most
            :data:`FLOAT32_ERROR` relative error in the logit moments where image and prompt embeddings are
            not nearly parallel (measured, tests/test_head.py, docs/numerics.md).
    """

    def __init__(self, posterior: Posterior, adapter: ModelAdapter, *, variance: str = "projected",
                 device: torch.device | str = "cpu", dtype: torch.dtype = HEAD_DTYPE) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.variance = check_option("variance", variance)
        self.posterior = posterior
        self.adapter = adapter
        self.device = torch.device(device)
        self.dtype = dtype
        _, self.b_inv_img = posterior.image.covariance_factors(self.device, dtype)
        self.a_inv_txt, self.b_inv_txt = posterior.text.covariance_factors(self.device, dtype)
        self.logit_scale = adapter.logit_scale
        self.logit_bias = adapter.logit_bias

    def image_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_n [N, D], s_n [N])`` in the head's dtype from image-tower features."""
        act = self.adapter.image.augment(feats.activations.to(self.device, self.dtype))
        return feats.embeddings.to(self.device, self.dtype), self.posterior.image.input_scales(act)

    def text_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_c [C, D], g̃_c [C, p_t])`` in the head's dtype from text-tower features."""
        return (feats.embeddings.to(self.device, self.dtype),
                self.adapter.text.augment(feats.activations.to(self.device, self.dtype)))

    def moments(self, img_mean: torch.Tensor, img_scale: torch.Tensor, txt_mean: torch.Tensor,
                txt_act: torch.Tensor) -> CosineMoments:
        """:func:`cosine_moments` of N images [N, D] against C prompts [C, D] with this posterior."""
        return cosine_moments(img_mean, img_scale, txt_mean, txt_act, self.b_inv_img, self.b_inv_txt,
                              self.a_inv_txt, self.logit_scale, self.logit_bias, variance=self.variance)

    def prompt_terms(self, txt: Features) -> PromptTerms:
        """The prompt side of the moments for C prompts' features (compute once per label set)."""
        return prompt_terms(*self.text_inputs(txt), self.b_inv_img, self.b_inv_txt, self.a_inv_txt,
                            variance=self.variance)

    def image_moments(self, img: Features, terms: PromptTerms) -> CosineMoments:
        """Moments of N images' features against prompts already reduced by :meth:`prompt_terms`."""
        return image_moments(*self.image_inputs(img), terms, self.logit_scale, self.logit_bias)

    def __call__(self, img: Features, txt: Features) -> CosineMoments:
        """Moments of N images' features against C prompts' features."""
        return self.moments(*self.image_inputs(img), *self.text_inputs(txt))

    def map_logits(self, img: Features, txt: Features) -> torch.Tensor:
        """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C] in the head's dtype."""
        return map_logits(self.adapter, img, txt).to(self.dtype)


def map_logits(adapter: ModelAdapter, img: Features, txt: Features) -> torch.Tensor:
    """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C] of the mean embeddings (the plain model)."""
    cos = F.normalize(img.embeddings, dim=-1) @ F.normalize(txt.embeddings, dim=-1).T
    return adapter.logit_scale * cos + adapter.logit_bias
