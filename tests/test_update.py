"""``fitting.update_posterior``: adding new labelled images equals refitting on the union (KFAC sums add up)."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

import bayesvlm_explain as bx
from bayesvlm_explain.adapters import Features
from bayesvlm_explain.estimation import KFACAccumulator
from bayesvlm_explain.fitting import update_posterior
from bayesvlm_explain.marglik import factor_eigenvalues, optimize_prior_precision


def _features(vlm: bx.BayesVLM, n: int, seed: int) -> Features:
    proj = vlm.adapter.image
    acts = torch.randn(n, proj.weight.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Features(acts, proj.project(acts).detach().double())


def _fit(vlm: bx.BayesVLM, parts: list[Features], txt: Features) -> bx.KronPosterior:
    """The image side fitted from scratch: one accumulator over every part, scored against the class prompts."""
    adapter = vlm.adapter
    acc = KFACAccumulator(adapter.image.weight.shape[1], adapter.image.weight.shape[0],
                          bias=adapter.image.bias is not None, likelihood=adapter.likelihood)
    for part in parts:
        acc.update(part.activations, part.embeddings, txt.embeddings, adapter.logit_scale,
                   adapter.logit_bias if adapter.likelihood == "sigmoid" else None)
    a, b, n = acc.factors()
    return bx.KronPosterior(a, b, pseudo_count=1.0, prior_precision=1.0, num_pairs=n)


@pytest.mark.parametrize("family", ["tiny_vlm", "tiny_siglip"])
def test_update_equals_the_fit_on_the_union(family, request):
    base_vlm = request.getfixturevalue(family)
    vlm = bx.BayesVLM(base_vlm.model, base_vlm.tokenizer, base_vlm.preprocess, device="cpu", name="tiny")
    txt = vlm.encode_prompts(PROMPTS)
    old, new, newer = _features(vlm, 30, 1), _features(vlm, 12, 2), _features(vlm, 5, 3)
    fitted = _fit(vlm, [old], txt)
    text = bx.KronPosterior(torch.eye(3, dtype=torch.float64), torch.eye(2, dtype=torch.float64), num_pairs=30)
    post = bx.Posterior(fitted, text, {"model": "tiny"})
    once = update_posterior(vlm, post, new, txt)
    twice = update_posterior(vlm, once, newer, txt)
    for updated, parts in ((once, [old, new]), (twice, [old, new, newer])):
        union = _fit(vlm, parts, txt)
        assert updated.image.num_pairs == union.num_pairs == sum(p.activations.shape[0] for p in parts)
        torch.testing.assert_close(updated.image.A, union.A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(updated.image.B, union.B, rtol=1e-8, atol=1e-10)
        theta_sq = float(vlm.adapter.image.weight_with_bias().detach().double().square().sum())
        lam, _ = optimize_prior_precision(factor_eigenvalues(union.A), factor_eigenvalues(union.B), 1.0, theta_sq)
        assert updated.image.prior_precision == pytest.approx(lam, rel=1e-6)
        assert torch.equal(updated.text.A, text.A) and updated.text is not text
    assert torch.equal(post.image.A, fitted.A) and post.image.num_pairs == 30  # the input is not modified
    assert twice.metadata["support_size"] == 5


def test_update_refuses_bad_input(tiny_vlm):
    txt = tiny_vlm.encode_prompts(PROMPTS)
    new = _features(tiny_vlm, 4, 0)
    post = tiny_vlm.posterior  # random factors without a pair count
    with pytest.raises(ValueError, match="num_pairs"):
        update_posterior(tiny_vlm, post, new, txt)
    counted = bx.Posterior(bx.KronPosterior(post.image.A, post.image.B, num_pairs=10), post.text)
    with pytest.raises(ValueError, match="shape"):
        update_posterior(tiny_vlm, counted, new, txt, delta=torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows"):
        update_posterior(tiny_vlm, counted, Features(new.activations, new.embeddings[:2]), txt)
