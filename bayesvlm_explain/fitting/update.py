"""The posterior after new labelled data: add its KFAC sums to the stored ones (method.md §2.2, §2.5).

The KFAC factors are sums over rows scaled by ``1/√N``, so data arriving later is absorbed exactly:
``A' = (√N A + Σ x̃x̃ᵀ)/√N'`` and ``B' = (√N B + Σ H)/√N'`` with ``N' = N + M``. Updating a posterior
fitted on a set ``A`` with a set ``B`` gives, to round-off, the factors of a fit on ``A ∪ B`` with the
same candidate sets (``tests/test_update.py``).
"""

from __future__ import annotations

import math

import torch

from ..adapters import Features
from ..estimation import input_factor, output_factor
from ..marglik import factor_eigenvalues, optimize_prior_precision
from ..posterior import KronPosterior, Posterior
from .protocol import FittableModel


def update_posterior(vlm: FittableModel, posterior: Posterior, images: Features, classes: Features,
                     delta: torch.Tensor | None = None) -> Posterior:
    """A new posterior: ``posterior`` plus the image-side curvature of ``M`` new labelled images.

    Args:
        vlm: the :class:`~bayesvlm_explain.BayesVLM` whose adapter gives the projection, ``τ``, the bias
            and the likelihood (InfoNCE or sigmoid) of the Hessian ``H``.
        posterior: the current posterior; must record its ``num_pairs`` ``N`` (not modified).
        images: the new images' features, activations [M, p] and embeddings [M, D] at the stored weights.
        classes: the class prompts' features [C, ·]: the candidate set every new image is scored against.
        delta: optional [D, p(+1)] change of the image projection (e.g. after adapting it on the new data):
            the curvature is taken at ``W* + delta`` and ``λ`` uses ``‖W* + delta‖²``.
    Returns:
        a new :class:`~bayesvlm_explain.posterior.Posterior` with image factors from the summed KFAC sums,
        ``num_pairs = N + M``, the image ``λ`` re-optimised by the marginal likelihood (method.md §2.5);
        the text side is copied unchanged; ``metadata["support_size"] = M``.
    """
    img = posterior.image
    if img.num_pairs is None:
        raise ValueError("the posterior does not record its number of pairs (num_pairs); cannot add data")
    proj, adapter = vlm.adapter.image, vlm.adapter
    m = images.activations.shape[0]
    if images.embeddings.shape[0] != m:
        raise ValueError(f"images: {m} activation rows but {images.embeddings.shape[0]} embedding rows")
    weight = proj.weight_with_bias().detach().double()
    delta = torch.zeros_like(weight) if delta is None else delta
    if delta.shape != weight.shape:
        raise ValueError(f"delta must have the projection's shape {tuple(weight.shape)}, got {tuple(delta.shape)}")
    embeddings = images.embeddings + proj.augment(images.activations) @ delta.T
    n_old, n_new = img.num_pairs, img.num_pairs + m
    a_sum = math.sqrt(n_old) * img.A + input_factor(images.activations, bias=proj.bias is not None)
    b_sum = math.sqrt(n_old) * img.B + output_factor(
        embeddings, classes.embeddings, adapter.logit_scale, likelihood=adapter.likelihood,
        logit_bias=adapter.logit_bias if adapter.likelihood == "sigmoid" else None)
    scale = 1.0 / math.sqrt(n_new)
    new_img = KronPosterior(a_sum * scale, b_sum * scale, pseudo_count=img.pseudo_count,
                            prior_precision=img.prior_precision, num_pairs=n_new)
    lam, _ = optimize_prior_precision(factor_eigenvalues(new_img.A), factor_eigenvalues(new_img.B),
                                      new_img.pseudo_count, float((weight + delta).square().sum()))
    new_img.prior_precision = lam
    text = posterior.text
    new_txt = KronPosterior(text.A, text.B, pseudo_count=text.pseudo_count, prior_precision=text.prior_precision,
                            num_pairs=text.num_pairs)
    return Posterior(new_img, new_txt, {**posterior.metadata, "support_size": int(m)})
