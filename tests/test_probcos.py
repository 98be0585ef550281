"""Analytic moments of the probabilistic cosine against independent references.

* Monte Carlo over matrix-normal draws of both projection matrices (the sampling path);
* a naive dense computation through the full Kronecker covariance ``torch.kron(Ã⁻¹, B̃⁻¹)`` and
  Isserlis' theorem, per (image, prompt, prompt) triple;
* the reference implementation's diagonal formula written out elementwise (method.md §3.1).
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, TINY_CLIP, build_tiny, random_images, random_posterior

from bayesvlm_explain.probcos import cosine_moments


def _features(vlm):
    return vlm.encode_images(random_images(vlm)), vlm.encode_prompts(PROMPTS)


def _draws(vlm, img, txt, num_samples, seed=0):
    gen = torch.Generator().manual_seed(seed)
    post = vlm.posterior
    u = post.image.sample_outputs(vlm.adapter.image.augment(img.activations), img.embeddings, num_samples, gen)
    v = post.text.sample_outputs(vlm.adapter.text.augment(txt.activations), txt.embeddings, num_samples, gen)
    return u, v


def _scaled_inner(vlm, u, v, img, txt):
    """τ·uᵀv / sqrt(E||u||² E||v||²) + b: the quantity whose moments are exact (no norm fluctuation)."""
    post = vlm.posterior
    s = post.image.input_scales(vlm.adapter.image.augment(img.activations))
    t = post.text.input_scales(vlm.adapter.text.augment(txt.activations))
    eu = img.embeddings.square().sum(-1) + s * post.image.covariance_factors()[1].trace()
    ev = txt.embeddings.square().sum(-1) + t * post.text.covariance_factors()[1].trace()
    z = u @ v.transpose(1, 2) / torch.sqrt(eu[:, None] * ev[None, :])
    return vlm.adapter.logit_scale * z + vlm.adapter.logit_bias


@pytest.mark.parametrize("fixture", ["tiny_vlm", "tiny_siglip"])
def test_moments_match_monte_carlo_over_weights(fixture, request):
    vlm = request.getfixturevalue(fixture)
    img, txt = _features(vlm)
    pred = vlm.predict_features(img, txt, PROMPTS)
    u, v = _draws(vlm, img, txt, 40_000)
    z = _scaled_inner(vlm, u, v, img, txt)  # [S, N, C]
    mc_mean, mc_var = z.mean(0), z.var(0)
    sd = pred.var.sqrt()
    # mean: within 5 MC standard errors; variance: within 4% (S = 40k, heavy-ish tails of products)
    assert ((mc_mean - pred.mean).abs() <= 5 * sd / 200 + 1e-9).all()
    torch.testing.assert_close(mc_var, pred.var, rtol=0.04, atol=0)
    # full class covariance of each image
    zc = z - z.mean(0)
    mc_cov = torch.einsum("snc,snd->ncd", zc, zc) / (z.shape[0] - 1)
    scale = pred.var.max()
    assert ((mc_cov - pred.cov).abs() / scale).max() < 0.04


def test_covariance_matches_naive_kronecker_isserlis(tiny_vlm):
    vlm = tiny_vlm
    img, txt = _features(vlm)
    img = type(img)(img.activations[:2], img.embeddings[:2])
    pred = vlm.predict_features(img, txt, PROMPTS)
    post = vlm.posterior
    a_i, b_i = post.image.covariance_factors()
    a_t, b_t = post.text.covariance_factors()
    cov_w_img = torch.kron(a_i, b_i)  # Cov(vec W_img), column-stacking vec of W [D, p]
    cov_w_txt = torch.kron(a_t, b_t)
    d = b_i.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    g = vlm.adapter.text.augment(txt.activations)
    jt = torch.stack([torch.kron(gc[None, :], eye) for gc in g])  # v_c = (g̃ᵀ ⊗ I) vec W  [C, D, pD]
    cov_v = torch.einsum("cij,jk,elk->ceil", jt, cov_w_txt, jt)  # [C, C', D, D]
    tau = vlm.adapter.logit_scale
    for n in range(2):
        f = vlm.adapter.image.augment(img.activations[n:n + 1])[0]
        ju = torch.kron(f[None, :], eye)
        cov_u = ju @ cov_w_img @ ju.T
        mu_u, mu_v = img.embeddings[n], txt.embeddings
        eu = mu_u @ mu_u + torch.trace(cov_u)
        ev = torch.stack([mu_v[c] @ mu_v[c] + torch.trace(cov_v[c, c]) for c in range(len(PROMPTS))])
        second_u = cov_u + torch.outer(mu_u, mu_u)
        for c in range(len(PROMPTS)):
            for e in range(len(PROMPTS)):
                second_v = cov_v[c, e] + torch.outer(mu_v[c], mu_v[e])
                cov_z = (second_u * second_v).sum() - (mu_u @ mu_v[c]) * (mu_u @ mu_v[e])
                expected = tau**2 * cov_z / torch.sqrt(eu * ev[c] * eu * ev[e])
                torch.testing.assert_close(pred.cov[n, c, e], expected, rtol=1e-9, atol=1e-12)
    # the variance is the covariance's diagonal, and the three parts add up to it
    torch.testing.assert_close(torch.diagonal(pred.cov, dim1=1, dim2=2), pred.var)
    torch.testing.assert_close(pred.var_image + pred.var_text + pred.var_interaction, pred.var)
    assert (pred.var_image > 0).all() and (pred.var_text > 0).all() and (pred.var_interaction > 0).all()
    assert (torch.linalg.eigvalsh(pred.cov) > -1e-10).all()


def test_diagonal_mode_reproduces_reference_formula_and_differs_from_exact(tiny_vlm):
    vlm = tiny_vlm
    img, txt = _features(vlm)
    exact = vlm.predict_features(img, txt, PROMPTS)
    diag = vlm.predict_features(img, txt, PROMPTS, variance="diagonal")
    post = vlm.posterior
    beta = post.image.covariance_factors()[1].diagonal()
    gamma = post.text.covariance_factors()[1].diagonal()
    s = post.image.input_scales(vlm.adapter.image.augment(img.activations))
    t = post.text.input_scales(vlm.adapter.text.augment(txt.activations))
    tau = vlm.adapter.logit_scale
    for n in range(len(s)):
        for c in range(len(t)):
            mu_n, mu_c = img.embeddings[n], txt.embeddings[c]
            sig2, rho2 = s[n] * beta, t[c] * gamma  # per-dimension variances (reference's σ², ρ²)
            big_n = (mu_n**2 + sig2).sum()
            big_m = (mu_c**2 + rho2).sum()
            ref_mean = tau * (mu_n @ mu_c) / torch.sqrt(big_n * big_m)
            ref_var = tau**2 * (((mu_n**2 + sig2) * rho2).sum() + (sig2 * mu_c**2).sum()) / (big_n * big_m)
            torch.testing.assert_close(diag.mean[n, c], ref_mean)
            torch.testing.assert_close(diag.var[n, c], ref_var)
    torch.testing.assert_close(exact.mean, diag.mean)  # means need only traces: identical
    rel = ((exact.var - diag.var).abs() / exact.var).max()
    assert rel > 0.01, f"exact and diagonal variances should differ for non-diagonal B (max rel {rel})"
    # ... and coincide when the output factors are diagonal
    saved = post.image.B.clone(), post.text.B.clone()
    try:
        for side, b in zip((post.image, post.text), saved, strict=True):
            side.B = torch.diag(b.diagonal())
            side.prior_precision = side.prior_precision  # drop cached inverses
        torch.testing.assert_close(vlm.predict_features(img, txt, PROMPTS).var,
                                   vlm.predict_features(img, txt, PROMPTS, variance="diagonal").var)
    finally:
        for side, b in zip((post.image, post.text), saved, strict=True):
            side.B = b
            side.prior_precision = side.prior_precision


def test_cosine_moments_cost_has_no_pairwise_dxd_work():
    """Large C and D run in well under a second: nothing per (image, prompt) is D×D."""
    import time

    n, c, d, p = 32, 2000, 256, 384
    g = torch.Generator().manual_seed(0)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    sig = m @ m.T / d
    a = torch.randn(p, p, generator=g, dtype=torch.float64)
    start = time.perf_counter()
    mom = cosine_moments(torch.randn(n, d, dtype=torch.float64), torch.rand(n, dtype=torch.float64),
                         torch.randn(c, d, dtype=torch.float64), torch.randn(c, p, dtype=torch.float64),
                         sig, sig, a @ a.T / p, 50.0)
    _ = mom.var
    assert time.perf_counter() - start < 5.0  # a per-pair D×D version needs ~30× longer


def _exact_cosine_vs_analytic(lam: float, num_samples: int):
    vlm = build_tiny(TINY_CLIP, seed=3)
    vlm.posterior = random_posterior(vlm, prior_precision=lam, seed=3)
    img, txt = _features(vlm)
    pred = vlm.predict_features(img, txt, PROMPTS)
    z = vlm.sample_logits_features(img, txt, num_samples, torch.Generator().manual_seed(5))
    return vlm, img, txt, pred, z


@pytest.mark.parametrize("lam", [1e4, 30.0, 1.0])
def test_expected_norm_cosine_against_exact_cosine(lam):
    """The analytic moments against Monte Carlo of the true cosine, from tight to broad posteriors.

    Measured (tiny CLIP, |cos| ≤ 0.37, 20k draws): the mean is within 0.02 posterior std everywhere;
    the exact cosine's variance is 0.87–1.00× the analytic one for tight posteriors (λ = 1e4, logit
    std ≈ 0.3) and 0.99–1.02× for broad ones (λ = 1, logit std ≈ 3.5). The analytic variance is
    conservative for tight posteriors (next test explains why).
    """
    _, _, _, pred, z = _exact_cosine_vs_analytic(lam, 20_000)
    assert ((z.mean(0) - pred.mean).abs() / pred.std).max() < 0.05
    ratio = z.var(0) / pred.var
    assert 0.8 < ratio.min() and ratio.max() < 1.06, ratio


def test_expected_norm_variance_misses_the_projection_of_the_cosine():
    """Documented limitation: the normalisation by expected norms ignores that a perturbation along an
    embedding's own direction leaves the cosine unchanged. For tight posteriors the exact variance is
    the first-order (delta-method) one, with the projections P_u = I − ûûᵀ, which the analytic formula
    over-estimates by up to ~13% here; the delta method matches the exact cosine to 1%.
    """
    vlm, img, txt, pred, z = _exact_cosine_vs_analytic(1e6, 20_000)
    post = vlm.posterior
    s = post.image.input_scales(vlm.adapter.image.augment(img.activations))
    t = post.text.input_scales(vlm.adapter.text.augment(txt.activations))
    b_i, b_t = post.image.covariance_factors()[1], post.text.covariance_factors()[1]
    u, v = img.embeddings, txt.embeddings
    un, vn = u.norm(dim=-1), v.norm(dim=-1)
    uh, vh = u / un[:, None], v / vn[:, None]
    cos = uh @ vh.T
    gu = (vh[None, :, :] - cos[:, :, None] * uh[:, None, :]) / un[:, None, None]  # d cos / d u  [N, C, D]
    gv = (uh[:, None, :] - cos[:, :, None] * vh[None, :, :]) / vn[None, :, None]  # d cos / d v
    delta_var = vlm.adapter.logit_scale**2 * (
        s[:, None] * torch.einsum("ncd,de,nce->nc", gu, b_i, gu)
        + t[None, :] * torch.einsum("ncd,de,nce->nc", gv, b_t, gv))
    torch.testing.assert_close(z.var(0), delta_var, rtol=0.03, atol=0)
    over = pred.var / delta_var
    assert over.min() > 0.99 and over.max() > 1.05  # conservative, and measurably so
