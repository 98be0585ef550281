"""The float32 head against the float64 one (issue 22 item 3): the error of ``dtype=torch.float32``.

Measured on the bundled model (its images and label set) and on random features at the ViT-B/32 dims
(p = 768, D = 512, p_t = 512) with the built-in B/32 posterior, broad and tight (variances 1e-6 of the
shipped ones, so that the variance is tiny against the mean). Relative errors: each variance part against
its float64 value (largest over all pairs), the logit mean against the largest mean, the probit
probabilities against the largest probability. docs/numerics.md quotes these numbers.
"""

from __future__ import annotations

import pytest
import torch

import bayesvlm_explain as bx
from bayesvlm_explain.head import AUTO_COSINE_LIMIT, FLOAT32_ERROR, HEAD_DTYPE
from bayesvlm_explain.posterior import Posterior
from bayesvlm_explain.predictive import probit_probs
from bayesvlm_explain.pretrained.registry import known_posterior_dir
from bayesvlm_explain.probcos import CosineMoments, cosine_moments

PARTS = ("var_image", "var_text", "var_interaction")


def float32_errors(m32: CosineMoments, m64: CosineMoments) -> dict[str, float]:
    """Largest relative errors of the float32 moments against the float64 ones (see the module doc)."""
    assert m32.mean.dtype == torch.float32 and m64.mean.dtype == torch.float64
    out = {name: float(((getattr(m32, name).double() - getattr(m64, name)).abs() / getattr(m64, name)).max())
           for name in PARTS}
    out["mean"] = float((m32.mean.double() - m64.mean).abs().max() / m64.mean.abs().max())
    p32, p64 = probit_probs(m32.mean.double(), m32.var.double()), probit_probs(m64.mean, m64.var)
    out["probit"] = float((p32 - p64).abs().max() / p64.max())
    return out


def test_predict_takes_the_head_dtype(tiny_vlm):
    from conftest import PROMPTS, random_images

    x = random_images(tiny_vlm, 2)
    assert HEAD_DTYPE == "auto" and tiny_vlm.head().requested_dtype == "auto"
    fast, precise = tiny_vlm.predict(x, PROMPTS, dtype=torch.float32), tiny_vlm.predict(x, PROMPTS, dtype=torch.float64)
    assert fast.var.dtype == fast.probs.dtype == fast.map_probs.dtype == torch.float32
    assert precise.var.dtype == precise.probs.dtype == torch.float64
    err = float32_errors(fast.moments, precise.moments)
    assert max(err.values()) < FLOAT32_ERROR, err
    with pytest.raises(ValueError, match="dtype must be 'auto', torch.float32 or torch.float64"):
        tiny_vlm.predict(x, PROMPTS, dtype=torch.float16)


def _turned(txt: bx.Features, towards: torch.Tensor, cos: float) -> bx.Features:
    """``txt`` with every prompt embedding turned to cosine ``cos`` with the embedding ``towards`` [D]."""
    u = torch.nn.functional.normalize(towards, dim=-1)
    emb = txt.embeddings
    perp = torch.nn.functional.normalize(emb - (emb @ u)[:, None] * u, dim=-1)
    return bx.Features(txt.activations, emb.norm(dim=-1, keepdim=True) * (cos * u + (1 - cos**2) ** 0.5 * perp))


@pytest.mark.parametrize("variance", ["projected", "expected_norm", "diagonal"])
def test_default_head_is_float32_and_switches_to_float64_above_the_cosine_limit(tiny_vlm, variance):
    """``dtype="auto"`` (the default): float32 arithmetic at CLIP-like cosines; a projected-mode call with an image
    and a prompt embedding beyond ``AUTO_COSINE_LIMIT`` is redone in float64 (the other modes have no projection to
    cancel); float64 results either way, equal to the forced head of the dtype used (both head paths)."""
    from conftest import PROMPTS, random_images

    img, txt = tiny_vlm.encode_images(random_images(tiny_vlm, 3)), tiny_vlm.encode_prompts(PROMPTS)
    unit = torch.nn.functional.normalize
    assert float((unit(img.embeddings, dim=-1) @ unit(txt.embeddings, dim=-1).T).abs().max()) < AUTO_COSINE_LIMIT
    auto = tiny_vlm.head(variance)
    assert auto.dtype == torch.float64 and auto.last_dtype is None
    forced = {dt: tiny_vlm.head(variance, dtype=dt) for dt in (torch.float32, torch.float64)}
    projected = variance == "projected"
    cases = [(txt, torch.float32), (_turned(txt, img.embeddings[1], 0.8), torch.float32),
             (_turned(txt, img.embeddings[1], 0.91), torch.float64 if projected else torch.float32),
             (_turned(txt, img.embeddings[2], -0.95), torch.float64 if projected else torch.float32)]
    for prompts, used in cases:
        want = forced[used](img, prompts)
        for got in (auto(img, prompts), auto.image_moments(img, auto.prompt_terms(prompts))):
            assert auto.last_dtype == used
            assert got.mean.dtype == got.var.dtype == torch.float64
            rtol = 1e-12 if used == torch.float64 else 1e-6
            torch.testing.assert_close(got.var, want.var.double(), rtol=rtol, atol=0)
            torch.testing.assert_close(got.mean, want.mean.double(), rtol=rtol, atol=1e-6)
    pred = tiny_vlm.predict_features(img, txt, PROMPTS, variance=variance, predictive="mc", num_samples=64)
    assert pred.probs.dtype == pred.var.dtype == torch.float64  # the default prediction and its draws: float64


@pytest.mark.parametrize("variance", ["projected", "expected_norm", "diagonal"])
def test_float32_head_error_on_the_bundled_model(variance):
    from bayesvlm_explain.ui import bundled_examples

    vlm = bx.BayesVLM.from_pretrained(device="cpu")
    img = vlm.encode_images([path for path, *_ in bundled_examples()])
    txt = vlm.encode_prompts(vlm.assets.prompts())
    err = float32_errors(vlm.head(variance, dtype=torch.float32)(img, txt),
                         vlm.head(variance, dtype=torch.float64)(img, txt))
    assert 0 < max(err.values()) < FLOAT32_ERROR, err  # measured at most 6e-7 (docs/numerics.md)


def _b32_problem(tightness: float, cos: float = 0.0, seed: int = 4) -> tuple[dict[str, torch.Tensor], float]:
    """Random B/32-dim features (N = 16, C = 500) and the built-in posterior's factors scaled by
    ``tightness`` (float64 masters, the head's inputs); with ``cos`` > 0 every prompt embedding is turned to
    that cosine with the first image's."""
    post = Posterior.load(known_posterior_dir("ViT-B-32", "laion2b_s34b_b79k"))
    a_img, b_img = post.image.covariance_factors()
    a_txt, b_txt = post.text.covariance_factors()
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(16, a_img.shape[0], generator=gen, dtype=torch.float64)
    g = torch.randn(500, a_txt.shape[0], generator=gen, dtype=torch.float64)
    w_img = torch.randn(b_img.shape[0], a_img.shape[0], generator=gen, dtype=torch.float64) / 28
    w_txt = torch.randn(b_txt.shape[0], a_txt.shape[0], generator=gen, dtype=torch.float64) / 23
    img_mean, txt_mean = f @ w_img.T, g @ w_txt.T
    if cos > 0:
        u = torch.nn.functional.normalize(img_mean[:1], dim=-1)
        perp = torch.nn.functional.normalize(txt_mean - (txt_mean @ u.T) * u, dim=-1)
        txt_mean = txt_mean.norm(dim=-1, keepdim=True) * (cos * u + (1 - cos**2) ** 0.5 * perp)
    return {"img_mean": img_mean, "img_scale": tightness * ((f @ a_img) * f).sum(-1),
            "txt_mean": txt_mean, "txt_act": g, "img_cov_out": b_img, "txt_cov_out": tightness * b_txt,
            "txt_cov_in": a_txt}, 100.0


@pytest.mark.parametrize("variance", ["projected", "expected_norm", "diagonal"])
@pytest.mark.parametrize("tightness,cos", [(1.0, 0.0), (1e-6, 0.0), (1.0, 0.9), (1e-6, 0.9)])
def test_float32_head_error_at_b32_dims_broad_and_tight(variance, tightness, cos):
    """Below the bound up to an image-prompt cosine of 0.9 (CLIP's are about 0.2-0.4)."""
    inputs, tau = _b32_problem(tightness, cos)
    m64 = cosine_moments(**inputs, logit_scale=tau, variance=variance)
    m32 = cosine_moments(**{k: v.float() for k, v in inputs.items()}, logit_scale=tau, variance=variance)
    if tightness < 1:
        assert float(m64.var.max()) < 1e-6 * float(m64.mean.abs().max())  # the tight regime
    err = float32_errors(m32, m64)
    assert 0 < max(err.values()) < FLOAT32_ERROR, err


def test_float32_projected_variance_near_parallel_embeddings_needs_float64():
    """The documented limit: the projected variance removes each embedding's own direction from the other's,
    which cancels in float32 when an image and a prompt embedding are nearly parallel (cosine 0.99 here:
    about 4e-5 relative); float64 (``dtype=torch.float64``, or the default ``"auto"`` head, which switches above
    ``AUTO_COSINE_LIMIT``) keeps it at round-off. The expected-norm and diagonal modes stay within the bound."""
    inputs, tau = _b32_problem(1.0, 0.99)
    m64 = cosine_moments(**inputs, logit_scale=tau)
    err32 = float32_errors(cosine_moments(**{k: v.float() for k, v in inputs.items()}, logit_scale=tau), m64)
    assert err32["var_image"] > FLOAT32_ERROR and err32["var_text"] > FLOAT32_ERROR
    assert err32["mean"] < FLOAT32_ERROR and err32["probit"] < FLOAT32_ERROR  # the probabilities stay within
    for variance in ("expected_norm", "diagonal"):  # no projection to cancel: these stay within the bound
        m64 = cosine_moments(**inputs, logit_scale=tau, variance=variance)
        m32 = cosine_moments(**{k: v.float() for k, v in inputs.items()}, logit_scale=tau, variance=variance)
        assert max(float32_errors(m32, m64).values()) < FLOAT32_ERROR, variance
