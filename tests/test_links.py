"""One logits-to-probabilities map: a model's predictions, entropies and attributions use its own class link
(softmax for CLIP, the sigmoids renormalised over the prompts for SigLIP), checked against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import PROMPTS, TINY_SIGLIP, build_tiny, random_images, random_posterior

import bayesvlm_explain as bx
from bayesvlm_explain.explain.targets import entropy_terms, probit_entropy
from bayesvlm_explain.predictive import class_link, link_probabilities


def _renormalised_sigmoid(z: np.ndarray) -> np.ndarray:
    s = 1 / (1 + np.exp(-z))
    return s / s.sum(-1, keepdims=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def siglip_unbiased() -> bx.BayesVLM:
    """Logit bias 0: logits of both signs, where renormalised sigmoids and the softmax differ."""
    vlm = build_tiny(dict(TINY_SIGLIP, init_logit_bias=0.0), custom_text=True)
    vlm.posterior = random_posterior(vlm)
    return vlm


def test_class_link_and_link_probabilities():
    assert class_link("infonce") == "softmax" and class_link("sigmoid") == "normalized_sigmoid"
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    np.testing.assert_allclose(link_probabilities(z, "normalized_sigmoid").numpy(), _renormalised_sigmoid(z.numpy()),
                               rtol=1e-12)
    np.testing.assert_allclose(link_probabilities(z, "softmax").numpy(), _softmax(z.numpy()), rtol=1e-12)
    # every sigmoid underflows: still a distribution (computed as softmax(log σ(z)))
    far = torch.full((1, 3), -800.0, dtype=torch.float64) + torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    p = link_probabilities(far, "normalized_sigmoid")
    assert torch.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-12
    with pytest.raises(ValueError, match="link"):
        link_probabilities(z, "probit")


@pytest.mark.parametrize("predictive", ["map", "probit", "mc"])
def test_siglip_predictions_use_renormalised_sigmoids(siglip_unbiased, predictive):
    vlm = siglip_unbiased
    x = random_images(vlm, 4)
    pred = vlm.predict(x, PROMPTS, predictive=predictive, num_samples=300)
    assert pred.link == "normalized_sigmoid"
    if predictive == "map":
        want = _renormalised_sigmoid(pred.map_logits.numpy())
    elif predictive == "probit":
        want = _renormalised_sigmoid((pred.mean / torch.sqrt(1 + math.pi / 8 * pred.var)).numpy())
    else:
        want = _renormalised_sigmoid(pred.mc_draws(300).numpy()).mean(0)
    np.testing.assert_allclose(pred.probs.numpy(), want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(pred.probs.sum(-1).numpy(), 1.0, atol=1e-12)
    softmax = vlm.predict(x, PROMPTS, predictive=predictive, num_samples=300, link="softmax").probs
    assert (pred.probs - softmax).abs().max() > 1e-3  # what it used to be is another distribution


def test_clip_default_link_is_the_softmax_bit_for_bit(tiny_vlm):
    x = random_images(tiny_vlm, 3)
    default = tiny_vlm.predict(x, PROMPTS, predictive="mc", num_samples=100)
    explicit = tiny_vlm.predict(x, PROMPTS, predictive="mc", num_samples=100, link="softmax")
    assert default.link == "softmax"
    assert torch.equal(default.probs, explicit.probs)


def test_normalised_sigmoid_entropies_match_numpy():
    z = torch.randn(50, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    total, aleatoric, epistemic = entropy_terms(z, "normalized_sigmoid")
    p = _renormalised_sigmoid(z.numpy())
    mean = p.mean(0)
    want_total = -(mean * np.log(mean)).sum(-1)
    want_alea = -(p * np.log(p)).sum(-1).mean(0)
    np.testing.assert_allclose(total.numpy(), want_total, rtol=1e-10)
    np.testing.assert_allclose(aleatoric.numpy(), want_alea, rtol=1e-10)
    np.testing.assert_allclose(epistemic.numpy(), want_total - want_alea, rtol=1e-8, atol=1e-12)
    m, v = z[0], z[1].abs()
    q = _renormalised_sigmoid((m / torch.sqrt(1 + math.pi / 8 * v)).numpy())
    np.testing.assert_allclose(probit_entropy(m, v, "normalized_sigmoid").numpy(), -(q * np.log(q)).sum(-1),
                               rtol=1e-10)


def test_siglip_attribution_target_uses_the_class_link(siglip_unbiased):
    vlm = siglip_unbiased
    x = random_images(vlm, 2)
    attr = bx.UncertaintyAttribution(vlm, target="entropy", num_samples=200)
    assert attr.link == "normalized_sigmoid"
    res = attr.attribute(x, PROMPTS, method="saliency")
    dec = bx.decompose_uncertainty(vlm.predict(x, PROMPTS, predictive="mc", num_samples=200),
                                   leave_one_out=False, rank_by="variance")
    torch.testing.assert_close(res.target_values, dec.total_entropy, rtol=1e-9, atol=1e-12)
