"""Posterior algebra, storage, the reference layout, and refusal of untrusted files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP, build_tiny, random_posterior, random_spd

import bayesvlm_explain as bx
from bayesvlm_explain.posterior import PosteriorError

SHARED_FACTORS = Path(__file__).resolve().parents[2] / "shared" / "reference-factors" / \
    "CLIP-ViT-B-32-laion2B-s34B-b79K"


def test_covariance_convention_and_matrix_normal_draws():
    gen = torch.Generator().manual_seed(0)
    post = bx.KronPosterior(random_spd(5, gen), random_spd(3, gen), pseudo_count=4.0, prior_precision=9.0)
    a_prec, b_prec = post.precision_factors()
    torch.testing.assert_close(a_prec, 2.0 * post.A + 3.0 * torch.eye(5, dtype=torch.float64))
    a_inv, b_inv = post.covariance_factors()
    torch.testing.assert_close(a_inv @ a_prec, torch.eye(5, dtype=torch.float64))
    # Cov(W x) = (xᵀ Ã⁻¹ x) B̃⁻¹ for full matrix draws W − W* ~ MN(0, B̃⁻¹, Ã⁻¹)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    dw = post.sample_weight_noise(100_000, torch.Generator().manual_seed(1))
    y = dw @ x.T  # [S, D, 2]
    emp = torch.einsum("sdn,sen->nde", y, y) / y.shape[0]
    scales = post.input_scales(x)
    for n in range(2):
        torch.testing.assert_close(emp[n], scales[n] * b_inv, rtol=0.03, atol=0.03 * b_inv.abs().max().item())
    # vec(W) covariance is kron(Ã⁻¹, B̃⁻¹) in column-stacking order
    vec = dw[:20_000].transpose(1, 2).reshape(20_000, -1)
    emp_vec = vec.T @ vec / vec.shape[0]
    kron = torch.kron(a_inv, b_inv)
    assert (emp_vec - kron).abs().max() < 0.06 * kron.abs().max()
    # sample_outputs uses the same law as full draws applied to the inputs
    out = post.sample_outputs(x, torch.zeros(2, 3, dtype=torch.float64), 100_000, torch.Generator().manual_seed(2))
    emp2 = torch.einsum("snd,sne->nde", out, out) / out.shape[0]
    torch.testing.assert_close(emp2, emp, rtol=0.05, atol=0.05 * b_inv.abs().max().item())


def test_hyperparameter_change_invalidates_cached_inverses():
    gen = torch.Generator().manual_seed(0)
    post = bx.KronPosterior(random_spd(4, gen), random_spd(3, gen), prior_precision=1.0)
    before = post.covariance_factors()[1].clone()
    post.prior_precision = 100.0
    after = post.covariance_factors()[1]
    assert not torch.allclose(before, after)
    with pytest.raises(PosteriorError):
        post.pseudo_count = -1.0
    with pytest.raises(PosteriorError):
        bx.KronPosterior(torch.ones(3, 4), torch.eye(3))


def test_save_load_round_trip(tmp_path, tiny_vlm):
    post = tiny_vlm.posterior
    post.metadata.update(model="tiny", likelihood="infonce", num_pairs=123)
    post.save(tmp_path / "post")
    meta = json.loads((tmp_path / "post" / "posterior.json").read_text())
    assert meta["image"]["dim_in"] == post.image.dim_in and meta["model"] == "tiny"
    loaded = bx.Posterior.load(tmp_path / "post")
    for side in ("image", "text"):
        a, b = getattr(post, side), getattr(loaded, side)
        torch.testing.assert_close(a.A, b.A, rtol=0, atol=0)
        torch.testing.assert_close(a.B, b.B, rtol=0, atol=0)
        assert (a.pseudo_count, a.prior_precision) == (b.pseudo_count, b.prior_precision)
    assert loaded.metadata["num_pairs"] == 123


def test_reference_layout_round_trip(tmp_path, tiny_vlm):
    post = tiny_vlm.posterior
    post.save_reference_dir(tmp_path / "ref")
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == ["A_img_analytic.pt", "A_txt_analytic.pt", "B_img_analytic.pt", "B_txt_analytic.pt",
                     "prior_precision_analytic.json"]
    loaded = bx.Posterior.from_reference_dir(tmp_path / "ref")
    torch.testing.assert_close(loaded.image.A, post.image.A, rtol=1e-6, atol=1e-6)  # stored as float32
    assert loaded.text.prior_precision == pytest.approx(post.text.prior_precision)
    # the model accepts a reference directory path directly
    tiny_vlm.posterior = tmp_path / "ref"
    tiny_vlm.posterior = post
    with pytest.raises(PosteriorError, match="reference layout"):
        bx.Posterior.load(tmp_path / "ref")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bayesvlm_pwned",))


def test_malicious_pickles_are_refused_not_executed(tmp_path, tiny_vlm):
    marker = Path("/tmp/bayesvlm_pwned")
    marker.unlink(missing_ok=True)
    tiny_vlm.posterior.save_reference_dir(tmp_path)
    torch.save({"x": _Evil()}, tmp_path / "A_img_analytic.pt")  # zip archive with a hostile pickle
    with pytest.raises(PosteriorError, match="not a plain tensor"):
        bx.Posterior.from_reference_dir(tmp_path)
    (tmp_path / "A_img_analytic.pt").write_bytes(pickle.dumps(_Evil()))  # a bare legacy pickle
    with pytest.raises(PosteriorError, match="refusing"):
        bx.Posterior.from_reference_dir(tmp_path)
    torch.save({"A": torch.eye(3)}, tmp_path / "A_img_analytic.pt")  # allowed types, but not a bare tensor
    with pytest.raises(PosteriorError, match="not a bare tensor"):
        bx.Posterior.from_reference_dir(tmp_path)
    assert not marker.exists()


def test_posterior_for_another_model_is_refused(tiny_vlm):
    other = build_tiny({**TINY_CLIP, "embed_dim": 24})
    wrong = random_posterior(other)
    with pytest.raises(PosteriorError, match="text posterior|image posterior"):
        tiny_vlm.posterior = wrong
    assert tiny_vlm.posterior is not wrong  # the old posterior stays in place


def test_missing_posterior_gives_clear_error():
    vlm = build_tiny(TINY_CLIP)
    with pytest.raises(PosteriorError, match="no posterior"):
        vlm.predict(torch.zeros(1, 3, 32, 32), ["a cat"])


@pytest.mark.skipif(not SHARED_FACTORS.is_dir(), reason="the authors' factors live in ../shared (CI and dev only)")
def test_published_vit_b32_factors_load_and_fit_a_random_vit_b32():
    """Real-scale reference files: read safely, symmetrised, oriented for open_clip ViT-B-32."""
    import open_clip

    post = bx.Posterior.from_reference_dir(SHARED_FACTORS)
    assert (post.image.dim_in, post.image.dim_out, post.text.dim_in) == (768, 512, 512)
    assert post.image.prior_precision == pytest.approx(1708.945, rel=1e-6)
    torch.testing.assert_close(post.image.B, post.image.B.T, rtol=0, atol=0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    vlm = bx.BayesVLM(model, open_clip.get_tokenizer("ViT-B-32"), None, post, device="cpu", name="ViT-B-32")
    pred = vlm.predict(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                       ["a photo of a dog", "a photo of a cat"])
    assert torch.isfinite(pred.var).all() and (pred.var > 0).all()
    # the real posterior is non-diagonal enough that the exact and diagonal variances differ
    diag = vlm.predict(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                       ["a photo of a dog", "a photo of a cat"], variance="diagonal")
    assert not torch.allclose(pred.var, diag.var, rtol=1e-3)
