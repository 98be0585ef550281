"""Differentiable uncertainty targets: logit moments and predictive entropies as functions of features.

Everything the explanation tools attribute is computed here from the same formulas as
:meth:`BayesVLM.predict_features` (float64, the exact-variance moments of :func:`cosine_moments`), so that
an attribution target evaluated at the input equals the number the model reports:

* ``"mean"``, ``"image_variance"``, ``"text_variance"``, ``"variance"``: entry ``[n, k]`` of the
  corresponding :class:`~bayesvlm_explain.predictive.Prediction` field (logit units / squared logit units);
* ``"entropy"``: the entropy (nats) of the predictive over all prompts, Monte Carlo (``"mc"``: the average
  link over Gaussian logit draws with the full class covariance, the same draws as
  ``Prediction.predictive("mc")``) or probit;
* ``"aleatoric"``: the expected entropy ``E_z[H[p(z)]]`` under the same draws;
* ``"epistemic"``: the mutual information (BALD) ``H[E_z p(z)] − E_z[H[p(z)]]``.

The entropies are written in log space (``log_softmax``/``logsigmoid``, ``logsumexp`` over draws), so both
their values and their gradients stay finite when a probability underflows to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Features
from ..model import ALGEBRA_DTYPE
from ..posterior import PosteriorError
from ..predictive import Link
from ..probcos import CosineMoments, cosine_moments

MomentTarget = Literal["mean", "image_variance", "text_variance", "variance"]
EntropyTarget = Literal["entropy", "aleatoric", "epistemic"]
MOMENT_TARGETS: tuple[str, ...] = ("mean", "image_variance", "text_variance", "variance")
ENTROPY_TARGETS: tuple[str, ...] = ("entropy", "aleatoric", "epistemic")

CustomTarget = Callable[[CosineMoments], torch.Tensor]
"""A user target: ``moments`` of a batch of B images -> [B] values (differentiable)."""


def entropy_terms(samples: torch.Tensor, link: Link = "softmax") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total, aleatoric and epistemic entropy (nats) from logit draws.

    Args:
        samples: [S, N, C] Gaussian logit draws (e.g. ``Prediction.sample``).
        link: ``"softmax"`` over the C prompts, or ``"sigmoid"`` per prompt (then each entropy is the sum
            of the C Bernoulli entropies).
    Returns:
        ``(total, aleatoric, epistemic)``, each [N]: ``H[E p]``, ``E[H[p]]`` and their difference (the
        mutual information between the prediction and the projection weights, BALD). Differentiable.
    """
    log_s = math.log(samples.shape[0])
    if link == "softmax":
        logp = torch.log_softmax(samples, dim=-1)  # [S, N, C]
        aleatoric = -(logp.exp() * logp).sum(-1).mean(0)
        logp_bar = torch.logsumexp(logp, dim=0) - log_s  # log of the MC predictive [N, C]
        total = -(logp_bar.exp() * logp_bar).sum(-1)
    elif link == "sigmoid":
        lp1, lp0 = F.logsigmoid(samples), F.logsigmoid(-samples)
        aleatoric = -(lp1.exp() * lp1 + lp0.exp() * lp0).sum(-1).mean(0)
        lb1, lb0 = torch.logsumexp(lp1, dim=0) - log_s, torch.logsumexp(lp0, dim=0) - log_s
        total = -(lb1.exp() * lb1 + lb0.exp() * lb0).sum(-1)
    else:
        raise ValueError(f"link must be 'softmax' or 'sigmoid', not {link!r}")
    return total, aleatoric, total - aleatoric


def probit_entropy(mean: torch.Tensor, var: torch.Tensor, link: Link = "softmax") -> torch.Tensor:
    """Entropy (nats) [N] of the probit predictive ``link(m / sqrt(1 + π/8 v))`` from [N, C] moments."""
    z = mean / torch.sqrt(1.0 + (math.pi / 8.0) * var)
    if link == "softmax":
        logp = torch.log_softmax(z, dim=-1)
        return -(logp.exp() * logp).sum(-1)
    lp1, lp0 = F.logsigmoid(z), F.logsigmoid(-z)
    return -(lp1.exp() * lp1 + lp0.exp() * lp0).sum(-1)


class MomentHead:
    """The posterior algebra between tower features and logit moments, fixed for one explanation.

    Holds the posterior's ``B̃_img⁻¹``, ``Ã_txt⁻¹`` and ``B̃_txt⁻¹`` (float64, on ``device``) and evaluates
    the moments exactly as :meth:`BayesVLM.predict_features` does.
    """

    def __init__(self, vlm: Any, device: torch.device, *, variance: str = "exact") -> None:
        post = vlm.posterior
        if post is None:
            raise PosteriorError("explaining uncertainty needs a posterior: set vlm.posterior first")
        if variance not in ("exact", "diagonal"):
            raise ValueError(f"variance must be 'exact' or 'diagonal', not {variance!r}")
        self.vlm = vlm
        self.device = device
        self.diagonal = variance == "diagonal"
        self.post = post
        _, self.b_inv_img = post.image.covariance_factors(device, ALGEBRA_DTYPE)
        self.a_inv_txt, self.b_inv_txt = post.text.covariance_factors(device, ALGEBRA_DTYPE)
        self.logit_scale = vlm.adapter.logit_scale
        self.logit_bias = vlm.adapter.logit_bias

    def image_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_n [N, D], s_n [N])`` in float64 from image-tower features (differentiable)."""
        act = self.vlm.adapter.image.augment(feats.activations.to(ALGEBRA_DTYPE))
        return feats.embeddings.to(ALGEBRA_DTYPE), self.post.image.input_scales(act)

    def text_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_c [C, D], g̃_c [C, p_t])`` in float64 from text-tower features (differentiable)."""
        return (feats.embeddings.to(ALGEBRA_DTYPE),
                self.vlm.adapter.text.augment(feats.activations.to(ALGEBRA_DTYPE)))

    def moments(self, img_mean: torch.Tensor, img_scale: torch.Tensor, txt_mean: torch.Tensor,
                txt_act: torch.Tensor) -> CosineMoments:
        """:func:`cosine_moments` of N images [N, D] against C prompts [C, D] with this posterior."""
        return cosine_moments(img_mean, img_scale, txt_mean, txt_act, self.b_inv_img, self.b_inv_txt,
                              self.a_inv_txt, self.logit_scale, self.logit_bias, diagonal=self.diagonal)


def standard_draws(head: MomentHead, txt_mean: torch.Tensor, txt_act: torch.Tensor, num_samples: int,
                   seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed correlated noise ``(E₁, E₂)`` [S, C] (float64, ``head.device``) for common random numbers.

    The noise of ``CosineMoments.sample`` depends only on the prompts (:meth:`CosineMoments.class_noise`),
    so with the same seed and S, ``moments.draws(noise)`` reproduces ``Prediction.sample`` bit for bit
    while staying a smooth, deterministic function of the image.
    """
    probe = head.moments(txt_mean.new_zeros(1, txt_mean.shape[1]), txt_mean.new_ones(1), txt_mean.detach(),
                         txt_act.detach())
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return probe.class_noise(num_samples, gen)


def moment_values(moments: CosineMoments, target: str) -> torch.Tensor:
    """The [N, C] tensor of a moment target (``"mean"``, ``"image_variance"``, ...)."""
    if target == "variance":
        return moments.var
    return getattr(moments, {"mean": "mean", "image_variance": "var_image", "text_variance": "var_text"}[target])


def evaluate_target(
    target: str | CustomTarget, moments: CosineMoments, prompt_index: int | None, *,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None, predictive: str = "mc", link: Link = "softmax",
) -> torch.Tensor:
    """The value [N] of ``target`` for every image of ``moments`` (column ``prompt_index`` for moments)."""
    if callable(target):
        return target(moments)
    if target in MOMENT_TARGETS:
        return moment_values(moments, target)[:, prompt_index]
    if target not in ENTROPY_TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {MOMENT_TARGETS + ENTROPY_TARGETS}")
    if predictive == "probit":
        if target != "entropy":
            raise ValueError(f"target {target!r} needs Monte Carlo draws; use predictive='mc'")
        return probit_entropy(moments.mean, moments.var, link)
    if noise is None:
        raise ValueError("entropy targets need the fixed draws (noise)")
    total, aleatoric, epistemic = entropy_terms(moments.draws(noise), link)
    return {"entropy": total, "aleatoric": aleatoric, "epistemic": epistemic}[target]


@contextmanager
def frozen(model: nn.Module):
    """Evaluation mode and ``requires_grad=False`` on every parameter, restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def check_grad_mode() -> None:
    """Refuse to run inside ``torch.inference_mode`` (no autograd there)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attributions need autograd; call them outside torch.inference_mode()")
