"""The one place where tower features and a posterior become logit moments (method.md §3).

``predict`` and every explanation target go through :class:`MomentHead`, so an attribution target
evaluated at the input equals the number ``predict`` reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import Features, ModelAdapter
from .encoding import ALGEBRA_DTYPE
from .options import check_option
from .posterior import Posterior
from .probcos import CosineMoments, PromptTerms, cosine_moments, image_moments, prompt_terms


class MomentHead:
    """The posterior algebra between tower features and logit moments, for one posterior and variance mode.

    Holds ``B̃_img⁻¹``, ``Ã_txt⁻¹`` and ``B̃_txt⁻¹`` (float64, on ``device``). All maps are differentiable.

    Args:
        posterior: the two projections' posterior.
        adapter: the model's adapter (bias columns, logit scale and bias).
        variance: ``"projected"``, ``"expected_norm"`` (``"exact"``) or ``"diagonal"``.
        device: where the algebra runs.
    """

    def __init__(self, posterior: Posterior, adapter: ModelAdapter, *, variance: str = "projected",
                 device: torch.device | str = "cpu") -> None:
        self.variance = check_option("variance", variance)
        self.posterior = posterior
        self.adapter = adapter
        self.device = torch.device(device)
        _, self.b_inv_img = posterior.image.covariance_factors(self.device, ALGEBRA_DTYPE)
        self.a_inv_txt, self.b_inv_txt = posterior.text.covariance_factors(self.device, ALGEBRA_DTYPE)
        self.logit_scale = adapter.logit_scale
        self.logit_bias = adapter.logit_bias

    def image_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_n [N, D], s_n [N])`` in float64 from image-tower features."""
        act = self.adapter.image.augment(feats.activations.to(self.device, ALGEBRA_DTYPE))
        return feats.embeddings.to(self.device, ALGEBRA_DTYPE), self.posterior.image.input_scales(act)

    def text_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_c [C, D], g̃_c [C, p_t])`` in float64 from text-tower features."""
        return (feats.embeddings.to(self.device, ALGEBRA_DTYPE),
                self.adapter.text.augment(feats.activations.to(self.device, ALGEBRA_DTYPE)))

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
        """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C] (float64)."""
        return map_logits(self.adapter, img, txt)


def map_logits(adapter: ModelAdapter, img: Features, txt: Features) -> torch.Tensor:
    """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C] of the mean embeddings (the plain model)."""
    cos = F.normalize(img.embeddings, dim=-1) @ F.normalize(txt.embeddings, dim=-1).T
    return adapter.logit_scale * cos + adapter.logit_bias
