"""Built-in posteriors: the authors' ViT-B/32 factors shipped as package data, found by (model, tag)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

import bayesvlm_explain as bx
from bayesvlm_explain.posterior import WEIGHTS_FILE
from bayesvlm_explain.pretrained.registry import KNOWN_POSTERIORS, known_posterior_dir

REPO = Path(__file__).resolve().parent.parent
MODEL, TAG = "ViT-B-32", "laion2b_s34b_b79k"
# method.md §2.5: maximisers of the corrected marginal likelihood at n = 1, and the published (buggy) λ
EXPECTED_LAMBDA = {"image": 3090.0, "text": 3350.0}
PUBLISHED_LAMBDA = {"image": 1708.9451904296875, "text": 1255.334228515625}


@pytest.fixture(scope="module")
def vitb32(monkeypatch_module):
    """``BayesVLM.from_pretrained("ViT-B-32", pretrained=TAG)`` with the download replaced by random weights."""
    create = open_clip.create_model_and_transforms

    def offline(name, pretrained=None, **kw):
        assert (name, pretrained) == (MODEL, TAG)
        torch.manual_seed(0)
        return create(name, pretrained=None, **kw)

    monkeypatch_module.setattr(open_clip, "create_model_and_transforms", offline)
    return bx.BayesVLM.from_pretrained(MODEL, pretrained=TAG, device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_known_posterior_files_licence_and_provenance():
    directory = known_posterior_dir(MODEL, TAG)
    assert directory == known_posterior_dir(MODEL, "LAION2B-S34B-B79K")  # open_clip's tag normalisation
    assert directory.is_relative_to(REPO / "bayesvlm_explain" / "pretrained" / "posteriors")
    assert "MIT" in (directory / "LICENSE").read_text() and "AaltoML" in (directory / "LICENSE").read_text()
    meta = json.loads((directory / "posterior.json").read_text())
    assert set(meta["provenance"]["source_sha256"]) == {
        "A_img_analytic.pt", "B_img_analytic.pt", "A_txt_analytic.pt", "B_txt_analytic.pt",
        "prior_precision_analytic.json"}
    assert meta["reference_prior_precision"] == PUBLISHED_LAMBDA
    # ‖θ*‖² recovered from the published λ, as in method.md §2.5 (63.66 image, 42.13 text)
    assert meta["theta_sq_norm"]["image"] == pytest.approx(63.66, abs=0.01)
    assert meta["theta_sq_norm"]["text"] == pytest.approx(42.13, abs=0.02)


def test_posterior_from_pretrained_dims_and_lambda():
    post = bx.Posterior.from_pretrained(MODEL, TAG)
    assert (post.image.dim_in, post.image.dim_out, post.text.dim_in, post.text.dim_out) == (768, 512, 512, 512)
    for side in ("image", "text"):
        kp = getattr(post, side)
        assert kp.pseudo_count == 1.0 and kp.num_pairs == 327_680
        assert kp.prior_precision == pytest.approx(EXPECTED_LAMBDA[side], rel=5e-3)
        assert kp.prior_precision > 1.5 * PUBLISHED_LAMBDA[side]
        assert kp.A.dtype == torch.float64 and torch.equal(kp.A, kp.A.T)
        eig = torch.linalg.eigvalsh(kp.A)
        assert eig[0] > -1e-3 * eig[-1]  # positive semi-definite up to float32 rounding
    assert post.metadata["model"] == f"{MODEL}/{TAG}"


def test_unknown_pair_says_how_to_fit():
    with pytest.raises(bx.PosteriorError, match=r"bayesvlm-explain fit --model ViT-L-14 --pretrained openai"):
        bx.Posterior.from_pretrained("ViT-L-14", "openai")
    assert known_posterior_dir(MODEL, None) is None
    assert (MODEL, TAG) in KNOWN_POSTERIORS


def test_from_pretrained_attaches_the_known_posterior(vitb32, monkeypatch_module):
    post = vitb32.posterior
    assert post is not None and vitb32.name == f"{MODEL}/{TAG}"
    assert vitb32.projection_dims("image") == (768, 512) and vitb32.projection_dims("text") == (512, 512)
    assert post.image.prior_precision == pytest.approx(EXPECTED_LAMBDA["image"], rel=5e-3)
    none = bx.BayesVLM.from_pretrained(MODEL, pretrained=TAG, posterior=False, device="cpu")
    assert none.posterior is None


def test_prediction_with_the_known_posterior_matches_sampling(vitb32):
    """Analytic logit moments under the shipped posterior vs exact cosines of sampled projections."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 224, 224, generator=gen)
    prompts = ["a photo of a cat", "a photo of a dog", "a diagram"]
    pred = vitb32.predict(images, prompts)
    assert pred.mean.shape == pred.var.shape == (2, 3)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(2, dtype=pred.probs.dtype))
    # 128 draws of two 512x768 / 512x512 matrices: the sample mean's error is ≈ std/11, the sample
    # variance's ≈ 12 % (and the analytic normalisation may over-estimate a little, README limitation)
    samples = vitb32.sample_logits(images, prompts, num_samples=128, generator=torch.Generator().manual_seed(1))
    std = pred.var.sqrt()
    assert ((samples.mean(0) - pred.mean).abs() / std).max() < 0.4
    ratio = pred.var / samples.var(0)
    assert ratio.min() > 0.6 and ratio.max() < 1.6, ratio


def test_conversion_script_reproduces_the_shipped_files(tmp_path):
    """Write the shipped factors back in the authors' layout with their λ; the script must rebuild them."""
    shipped = bx.Posterior.from_pretrained(MODEL, TAG)
    src = tmp_path / "src"
    shipped.image.prior_precision, shipped.text.prior_precision = PUBLISHED_LAMBDA["image"], PUBLISHED_LAMBDA["text"]
    shipped.save_reference_dir(src)
    shutil.copyfile(known_posterior_dir(MODEL, TAG) / "LICENSE", src / "LICENSE")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(REPO / "scripts" / "convert_reference_posterior.py"), "--src", str(src),
                    "--out", str(out)], check=True, capture_output=True, cwd=REPO)
    rebuilt, again = bx.Posterior.load(out), bx.Posterior.from_pretrained(MODEL, TAG)
    for side in ("image", "text"):
        a, b = getattr(rebuilt, side), getattr(again, side)
        assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
        assert a.prior_precision == pytest.approx(b.prior_precision, rel=1e-9)
    assert (out / "LICENSE").read_bytes() == (known_posterior_dir(MODEL, TAG) / "LICENSE").read_bytes()
    assert (out / WEIGHTS_FILE).stat().st_size == (known_posterior_dir(MODEL, TAG) / WEIGHTS_FILE).stat().st_size
