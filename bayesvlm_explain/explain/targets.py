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

import torch
import torch.nn.functional as F

from ..head import MomentHead
from ..numerics import log_categorical_entropy
from ..options import ENTROPY_TARGETS, MOMENT_TARGETS, EntropyTarget, Link, MomentTarget, check_option
from ..predictive import link_log_probabilities
from ..probcos import CosineMoments

__all__ = ["ENTROPY_TARGETS", "MOMENT_TARGETS", "CustomTarget", "EntropyTarget", "MomentTarget", "check_grad_mode",
           "entropy_terms", "evaluate_target", "moment_values", "probit_entropy", "standard_draws"]

CustomTarget = Callable[[CosineMoments], torch.Tensor]
"""A user target: ``moments`` of a batch of B images -> [B] values (differentiable)."""


def entropy_terms(samples: torch.Tensor, link: Link = "softmax") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total, aleatoric and epistemic entropy (nats) from logit draws.

    Args:
        samples: [S, N, C] Gaussian logit draws (e.g. ``Prediction.sample``).
        link: ``"softmax"`` over the C prompts, ``"normalized_sigmoid"`` (the sigmoids renormalised over
            the prompts), or ``"sigmoid"`` per prompt (then each entropy is the sum of the C Bernoulli
            entropies).
    Returns:
        ``(total, aleatoric, epistemic)``, each [N]: ``H[E p]``, ``E[H[p]]`` and their difference (the
        mutual information between the prediction and the projection weights, BALD). Differentiable.
    """
    log_s = math.log(samples.shape[0])
    if link in ("softmax", "normalized_sigmoid"):
        logp = link_log_probabilities(samples, link)  # [S, N, C]
        aleatoric = log_categorical_entropy(logp).mean(0)
        total = log_categorical_entropy(torch.logsumexp(logp, dim=0) - log_s)  # entropy of the MC predictive
    elif link == "sigmoid":
        lp1, lp0 = F.logsigmoid(samples), F.logsigmoid(-samples)
        aleatoric = -(lp1.exp() * lp1 + lp0.exp() * lp0).sum(-1).mean(0)
        lb1, lb0 = torch.logsumexp(lp1, dim=0) - log_s, torch.logsumexp(lp0, dim=0) - log_s
        total = -(lb1.exp() * lb1 + lb0.exp() * lb0).sum(-1)
    else:
        check_option("link", link)
    return total, aleatoric, total - aleatoric


def probit_entropy(mean: torch.Tensor, var: torch.Tensor, link: Link = "softmax") -> torch.Tensor:
    """Entropy (nats) [N] of the probit predictive ``link(m / sqrt(1 + π/8 v))`` from [N, C] moments."""
    z = mean / torch.sqrt(1.0 + (math.pi / 8.0) * var)
    if link in ("softmax", "normalized_sigmoid"):
        return log_categorical_entropy(link_log_probabilities(z, link))
    lp1, lp0 = F.logsigmoid(z), F.logsigmoid(-z)
    return -(lp1.exp() * lp1 + lp0.exp() * lp0).sum(-1)


def standard_draws(head: MomentHead, txt_mean: torch.Tensor, txt_act: torch.Tensor, num_samples: int,
                   seed: int | None) -> tuple[torch.Tensor, ...]:
    """Fixed standard draws (:meth:`CosineMoments.class_noise`; float64, ``head.device``): common random numbers.

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
    noise: tuple[torch.Tensor, ...] | None = None, predictive: str = "mc", link: Link = "softmax",
) -> torch.Tensor:
    """The value [N] of ``target`` for every image of ``moments`` (column ``prompt_index`` for moments)."""
    if callable(target):
        return target(moments)
    if target in MOMENT_TARGETS:
        return moment_values(moments, target)[:, prompt_index]
    check_option("target", target)
    if check_option("predictive", predictive, ("mc", "probit")) == "probit":
        if target != "entropy":
            raise ValueError(f"target {target!r} needs Monte Carlo draws; use predictive='mc'")
        return probit_entropy(moments.mean, moments.var, link)
    if noise is None:
        raise ValueError("entropy targets need the fixed draws (noise)")
    total, aleatoric, epistemic = entropy_terms(moments.draws(noise), link)
    return {"entropy": total, "aleatoric": aleatoric, "epistemic": epistemic}[target]


def check_grad_mode() -> None:
    """Refuse to run inside ``torch.inference_mode`` (no autograd there)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attributions need autograd; call them outside torch.inference_mode()")
