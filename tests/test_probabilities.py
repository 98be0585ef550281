"""Logits -> class probabilities by the model's own link, and BALD of ``evaluate`` on a SigLIP-style model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROMPTS, TINY_SIGLIP, build_tiny, random_images, random_posterior

from bayesvlm_explain.evaluation.evaluate import bald_scores
from bayesvlm_explain.selection import class_probabilities


def test_class_probabilities_by_likelihood():
    z = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4 - 6
    torch.testing.assert_close(class_probabilities(z, "infonce"), torch.softmax(z, -1))
    s = 1 / (1 + np.exp(-z.numpy()))
    np.testing.assert_allclose(class_probabilities(z, "sigmoid").numpy(), s / s.sum(-1, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match="likelihood"):
        class_probabilities(z, "softmax")


def _bald_numpy(z: np.ndarray, link: str) -> np.ndarray:
    """Mutual information from logit draws [S, N, C], written out in numpy (independent of the library)."""
    if link == "sigmoid":
        p = 1 / (1 + np.exp(-z))
        p = p / p.sum(-1, keepdims=True)
    else:
        e = np.exp(z - z.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    mean = p.mean(0)
    return -(mean * np.log(mean)).sum(-1) + (p * np.log(p)).sum(-1).mean(0)


@pytest.fixture(scope="module")
def siglip_unbiased():
    """The tiny SigLIP with logit bias 0: logits of both signs, where renormalised sigmoids and the softmax
    differ (at the initial bias of -10 every sigmoid is ~exp(z) and the two nearly coincide)."""
    vlm = build_tiny(dict(TINY_SIGLIP, init_logit_bias=0.0), custom_text=True)
    vlm.posterior = random_posterior(vlm)
    return vlm


@pytest.mark.parametrize("family, link", [("tiny_siglip", "sigmoid"), ("siglip_unbiased", "sigmoid"),
                                          ("tiny_vlm", "softmax")])
def test_bald_uses_the_models_own_link(family, link, request):
    vlm = request.getfixturevalue(family)
    assert vlm.adapter.likelihood == ("sigmoid" if link == "sigmoid" else "infonce")
    img, txt = vlm.encode_images(random_images(vlm, 6)), vlm.encode_prompts(PROMPTS)
    got = bald_scores(vlm, img, txt, PROMPTS, num_samples=200, seed=3).numpy()
    z = vlm.predict_features(img, txt, PROMPTS, predictive="map").sample(200, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(got, _bald_numpy(z.numpy(), link), rtol=1e-9, atol=1e-12)
    if family == "siglip_unbiased":  # the softmax of a SigLIP model's logits is another distribution (the former bug)
        assert np.abs(got - _bald_numpy(z.numpy(), "softmax")).max() > 1e-3
