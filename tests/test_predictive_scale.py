"""Memory that follows what is asked (docs/scale.md): the per-class moments never form C×C, the class
covariance and the Monte Carlo predictive run in image chunks within ``max_memory``, and a request that
cannot fit is refused before allocating. Every chunked/fast path is checked against the one-shot path."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bayesvlm_explain.predictive import Prediction
from bayesvlm_explain.probcos import ROOT_WORK, MemoryBudgetError, cosine_moments, image_moments, prompt_terms


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch op produces while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _problem(n: int, c: int, d: int = 12, p: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    kw = {"dtype": torch.float64, "generator": gen}

    def spd(k: int, scale: float) -> torch.Tensor:
        m = torch.randn(k, k + 2, **kw)
        return m @ m.T * scale / k

    return (torch.randn(n, d, **kw), torch.rand(n, **kw) + 0.5, torch.randn(c, d, **kw), torch.randn(c, p, **kw),
            spd(d, 0.05), spd(d, 0.05), spd(p, 0.02))


@pytest.mark.parametrize("variance", ["projected", "expected_norm", "diagonal"])
def test_per_class_moments_never_form_a_class_by_class_matrix(variance):
    n, c = 3, 600
    args = _problem(n, c)
    with LargestTensor() as watch:
        mom = cosine_moments(*args, 30.0, variance=variance)
        var = mom.var
    assert var.shape == (n, c)
    assert watch.largest <= max(3 * n * c, c * 20)  # [3N, C] or [C, p_t] at most; C×C would be 360,000
    # the one-shot class covariance (the naive oracle) has these variances on its diagonal
    torch.testing.assert_close(torch.diagonal(mom._cov_block(), dim1=1, dim2=2), var, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variance", ["projected", "expected_norm"])
def test_prompt_terms_reused_across_image_batches(variance):
    img, scale, txt, act, si, st, ai = _problem(5, 40)
    whole = cosine_moments(img, scale, txt, act, si, st, ai, 20.0, 0.5, variance=variance)
    terms = prompt_terms(txt, act, si, st, ai, variance=variance)
    for rows in (slice(0, 2), slice(2, 5)):
        part = image_moments(img[rows], scale[rows], terms, 20.0, 0.5)
        for name in ("mean", "var_image", "var_text", "var_interaction"):
            torch.testing.assert_close(getattr(part, name), getattr(whole, name)[rows], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("variance", ["projected", "expected_norm"])
def test_chunked_covariance_equals_the_one_shot_covariance(variance):
    n, c = 7, 30
    mom = cosine_moments(*_problem(n, c), 30.0, variance=variance)
    naive = mom._cov_block()
    mat = c * c * 8
    budget = (mom._fixed_mats() + n + 6 * 2) * mat  # room for the result and chunks of two images
    torch.testing.assert_close(mom.covariance(max_memory=budget), naive, rtol=0, atol=0)
    streamed = list(mom.cov_chunks(max_memory=(mom._fixed_mats() + 6) * mat))  # one image per chunk
    assert len(streamed) == n
    torch.testing.assert_close(torch.cat([blk for _, blk in streamed]), naive, rtol=0, atol=0)


def test_over_budget_covariance_is_refused_before_allocating():
    n, c = 256, 1000
    mom = cosine_moments(*_problem(n, c), 30.0)
    with LargestTensor() as watch, pytest.raises(MemoryBudgetError) as err:
        mom.covariance(max_memory=1 << 30)
    msg = str(err.value)
    assert "N=256" in msg and "C=1000" in msg and "(2,120,000,000 bytes)" in msg  # (N + 3 + 6)·C²·8
    assert isinstance(err.value, MemoryError)
    assert watch.largest < c * c  # refused from the estimate, nothing C×C was made
    pred = Prediction(mom, mom.mean, [str(i) for i in range(c)], max_memory=1 << 30)
    with pytest.raises(MemoryBudgetError, match="class covariance"):
        _ = pred.cov
    with pytest.raises(MemoryBudgetError, match="N=1 images x C=1000"):
        mom.restrict(slice(0, 1)).covariance(max_memory=4 * c * c * 8)  # result + fixed fit, one chunk's work not


@pytest.mark.parametrize("variance", ["projected", "expected_norm"])
def test_chunked_mc_predictive_equals_the_one_shot_one(variance):
    n, c = 6, 25
    args = _problem(n, c, seed=3)
    prompts = [str(i) for i in range(c)]
    one = Prediction(cosine_moments(*args, 30.0, variance=variance), torch.zeros(n, c), prompts,
                     method="mc", num_samples=500, seed=4)
    mom = cosine_moments(*args, 30.0, variance=variance)
    small = (mom._fixed_mats() + ROOT_WORK * 2) * c * c * 8  # two images' roots per chunk (projected)
    chunked = Prediction(mom, torch.zeros(n, c), prompts, method="mc", num_samples=500, seed=4, max_memory=small)
    if variance == "projected":
        assert len(chunked.moments.draw_chunks()) == 3
    torch.testing.assert_close(chunked.probs, one.probs, rtol=1e-12, atol=1e-15)
    # the one-shot draws are those of `sample` with the same seed; their average is the MC predictive
    draws = one.sample(500, torch.Generator().manual_seed(4))
    torch.testing.assert_close(torch.softmax(draws, -1).mean(0), one.probs, rtol=1e-12, atol=1e-15)


def test_mc_over_budget_and_bad_budget_are_clear_errors():
    c = 400
    mom = cosine_moments(*_problem(2, c), 30.0)
    with pytest.raises(MemoryBudgetError, match="Monte Carlo draws for N=2 images x C=400"):
        Prediction(mom, mom.mean, [str(i) for i in range(c)], method="mc", max_memory=c * c * 8).predictive("mc")
    with pytest.raises(ValueError, match="max_memory"):
        Prediction(mom, mom.mean, [str(i) for i in range(c)], max_memory=0)


def test_mc_draws_are_made_once_per_prediction(tiny_vlm, monkeypatch):
    """probs, the entropies of the studio (entropy_parts) and decompose_uncertainty read one set of draws."""
    from conftest import PROMPTS, random_images

    from bayesvlm_explain.explain import decompose_uncertainty
    from bayesvlm_explain.numerics import categorical_entropy
    from bayesvlm_explain.ui.views import entropy_parts

    pred = tiny_vlm.predict(random_images(tiny_vlm, 3), PROMPTS, predictive="mc", num_samples=300, seed=2)
    calls = []
    original = pred.sample
    monkeypatch.setattr(pred, "sample", lambda k, gen=None: calls.append(k) or original(k, gen))
    probs = pred.probs
    assert sum(calls) == 300
    total, alea, epi = entropy_parts(pred)
    dec = decompose_uncertainty(pred, leave_one_out=False, rank_by="variance")
    assert sum(calls) == 300  # no second set of draws
    torch.testing.assert_close(torch.from_numpy(total), categorical_entropy(probs), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(dec.epistemic, torch.from_numpy(epi), rtol=0, atol=0)
    # the cached draws are those a fresh sampler with the prediction's seed makes
    fresh = original(300, torch.Generator().manual_seed(2))
    torch.testing.assert_close(pred.mc_draws(), fresh, rtol=0, atol=0)
    assert pred.mc_draws(seed=None) is not pred.mc_draws()  # a fresh, uncached set on request
