"""The real ViT-B-32 architecture (random weights, real dimensions) with the built-in B/32 posterior.

The model is built once per session, saved as a local safetensors checkpoint and loaded back the way a
user loads their own weights (``--pretrained /path/to/file.safetensors``, open_clip's convention for a
local file). Predict, Monte Carlo, integrated gradients, token attribution, a small fit, the studio and
``export-space`` then run on it; each checks something against an independent computation.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import bayesvlm_explain as bx
from bayesvlm_explain.explain.attribution import UncertaintyAttribution
from bayesvlm_explain.explain.tokens import TokenAttribution
from bayesvlm_explain.pretrained.registry import known_posterior_dir

MODEL, TAG = "ViT-B-32", "laion2b_s34b_b79k"
PROMPTS = ["a photo of a cat", "a photo of a dog", "a diagram", "a red truck", "an oil painting of a ship"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL, pretrained=None)
    path = tmp_path_factory.mktemp("b32") / "vit_b32_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def b32(checkpoint) -> bx.BayesVLM:
    with pytest.warns(UserWarning, match="posterior was fitted for 'ViT-B-32/laion2b_s34b_b79k'"):
        return bx.BayesVLM.from_pretrained(MODEL, pretrained=checkpoint, posterior=known_posterior_dir(MODEL, TAG),
                                           device="cpu")


@pytest.fixture(scope="module")
def images(b32) -> torch.Tensor:
    return torch.randn(2, 3, *b32.image_size, generator=torch.Generator().manual_seed(1))


def test_local_checkpoint_is_the_model_loaded(b32, checkpoint):
    saved = load_file(checkpoint)
    state = b32.model.state_dict()
    assert b32.projection_dims("image") == (768, 512) and b32.projection_dims("text") == (512, 512)
    for key in ("visual.proj", "text_projection", "visual.conv1.weight", "logit_scale"):
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)


def test_predict_and_mc_against_gaussian_draws(b32, images):
    pred = b32.predict(images, PROMPTS, predictive="mc", num_samples=4000, dtype=torch.float64)
    assert pred.mean.shape == (2, 5) and (pred.var > 0).all()
    torch.testing.assert_close(torch.diagonal(pred.cov, dim1=1, dim2=2), pred.var, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(2, dtype=torch.float64))
    # MC predictive vs an independent sampler of N(mean, cov) (torch.distributions)
    mvn = torch.distributions.MultivariateNormal(pred.mean, covariance_matrix=pred.cov + 1e-10 * torch.eye(5))
    torch.manual_seed(5)
    ref = torch.softmax(mvn.sample((20_000,)), -1).mean(0)
    assert (pred.probs - ref).abs().max() < 0.02
    # the per-class head on precomputed prompt terms gives the same moments
    head = b32.head(dtype=torch.float64)
    terms = head.prompt_terms(b32.encode_prompts(PROMPTS))
    mom = head.image_moments(b32.encode_images(images), terms)
    torch.testing.assert_close(mom.var, pred.var, rtol=1e-12, atol=0)


@pytest.mark.parametrize("variance", ["projected", "expected_norm", "diagonal"])
def test_float32_head_error_at_real_dims(b32, variance):
    """The float32 head against the float64 one at ViT-B/32 dims (p = 768, D = 512, p_t = 512) with the
    built-in posterior: N = 32 images x C = 1000 prompts, features from random activations."""
    from bayesvlm_explain.adapters import Features
    from bayesvlm_explain.head import FLOAT32_ERROR

    gen = torch.Generator().manual_seed(4)
    img_act, txt_act = torch.randn(32, 768, generator=gen), torch.randn(1000, 512, generator=gen)
    with torch.no_grad():
        img = Features(img_act, b32.adapter.image.project(img_act))
        txt = Features(txt_act, b32.adapter.text.project(txt_act))
    m64 = b32.head(variance, dtype=torch.float64)(img, txt)
    m32 = b32.head(variance, dtype=torch.float32)(img, txt)
    assert m32.var.dtype == torch.float32 and m64.var.dtype == torch.float64
    for name in ("var_image", "var_text", "var_interaction"):
        a, b = getattr(m32, name).double(), getattr(m64, name)
        rel = float(((a - b).abs() / b).max())
        assert 0 < rel < FLOAT32_ERROR, (name, rel)  # measured about 6e-7
    mean_err = float((m32.mean.double() - m64.mean).abs().max() / m64.mean.abs().max())
    assert 0 < mean_err < FLOAT32_ERROR  # measured about 4e-7
    with pytest.raises(ValueError, match="dtype"):
        b32.head(dtype=torch.float16)


def test_integrated_gradients_target_is_the_predicted_variance(b32, images):
    pred = b32.predict(images[:1], PROMPTS)
    res = UncertaintyAttribution(b32, "image_variance").attribute(images[:1], PROMPTS, prompt_index=2, n_steps=4)
    assert res.attributions.shape == (1, 3, 224, 224) and res.patch_size == (32, 32)
    torch.testing.assert_close(res.target_values, pred.var_image[:, 2], rtol=1e-5, atol=0)
    gap = res.attributions.double().sum() - (res.target_values - res.baseline_values)
    torch.testing.assert_close(res.delta.double(), gap, rtol=1e-3, atol=1e-9)
    assert res.patches().shape == (1, 7, 7)


def test_token_attribution_on_the_real_text_tower(b32, images):
    pred = b32.predict(images[:1], PROMPTS)
    res = TokenAttribution(b32, "text_variance").attribute(images[:1], PROMPTS[4], n_steps=4)
    assert res.tokens[0] == "<start_of_text>" and len(res.scores) == len(res.tokens)
    assert all(float(s) == 0.0 for s, sp in zip(res.scores, res.special, strict=True) if sp)
    value = torch.tensor(res.target_value, dtype=torch.float64)
    torch.testing.assert_close(value, pred.var_text[0, 4], rtol=1e-5, atol=0)


@pytest.mark.slow
def test_fit_on_synthetic_pairs_matches_direct_activation_factor(b32):
    gen = torch.Generator().manual_seed(3)
    pics = [Image.fromarray((torch.rand(48, 48, 3, generator=gen) * 255).byte().numpy()) for _ in range(64)]
    pairs = [(im, f"a synthetic picture number {i}") for i, im in enumerate(pics)]
    vlm = bx.BayesVLM(b32.model, b32.tokenizer, b32.preprocess, None, device="cpu", name=b32.name)
    report = vlm.fit(pairs, num_candidates=32, batch_size=32, shard_size=32, progress=False)
    post = vlm.posterior
    assert (post.image.dim_in, post.image.dim_out, post.text.dim_in) == (768, 512, 512)
    # A_img = Σ f̃ f̃ᵀ / √N over the pairs (method.md §2.2), from an independent encoding
    act = vlm.adapter.image.augment(vlm.encode_images(pics).activations)
    torch.testing.assert_close(post.image.A, act.T @ act / 64**0.5, rtol=1e-4, atol=1e-6 * post.image.A.abs().max())
    # PSD up to the fit's float32 moments (docs/fitting.md): this B is rank-deficient (64 pairs), and its
    # null space carries their round-off, measured -4.4e-8 of the largest eigenvalue (float64: ~1e-15)
    eig = torch.linalg.eigvalsh(post.image.B)
    assert eig.min() > -1e-7 * eig.max()
    assert report is not None and post.image.prior_precision > 0


class _Rows:
    """A tower's activations replaced by rows of a fixed table, handed out in call order (the fit encodes
    its items in order), so that the pairs' embeddings are chosen while the real projection makes them."""

    def __init__(self, table: torch.Tensor):
        self.table, self.used = table, 0

    def __call__(self, inputs: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.table[self.used:self.used + inputs.shape[0]]
        self.used += inputs.shape[0]
        return rows


@pytest.mark.slow
def test_fit_at_real_dims_with_a_saturated_softmax_matches_the_naive_oracle(b32, tmp_path, monkeypatch):
    """A fit on 384 pairs (3 class batches of 128) whose contrastive softmax is saturated, at the real
    B/32 dims (image p = 768, text p = 512, D = 512) and τ = 100, through the whole fit pipeline (feature
    cache, the fit's precision for Σ H, posterior, λ). The towers' activations are synthetic (the encoders
    are exercised by the test above): image activations are random, text activations are solved so that
    each caption's embedding is its image's plus noise at 1.5 times its size per dimension, which puts
    1 − p_k below 1e-6 for every source on both sides. Checked against the float64 per-sample oracle
    (``output_factor_naive``) on the features the fit cached: relative error ≤ 1e-6, B PSD."""
    import math

    from safetensors.torch import load_file as load_shard

    from bayesvlm_explain.estimation import output_factor_naive
    from bayesvlm_explain.fitting import fit_posterior

    n, c, sigma = 384, 128, 1.5
    gen = torch.Generator().manual_seed(7)
    vlm = bx.BayesVLM(b32.model, b32.tokenizer, b32.preprocess, None, device="cpu", name=b32.name)
    monkeypatch.setattr(b32.model.logit_scale, "data", torch.tensor(math.log(100.0)))  # restored afterwards
    tau = vlm.adapter.logit_scale  # exp of a float32 parameter: 100 + 8e-6, which moves B by 3e-6 here
    w_img, w_txt = (vlm.adapter.image.weight.double(), vlm.adapter.text.weight.double())
    img_act = torch.randn(n, 768, generator=gen, dtype=torch.float64)
    img_emb = img_act @ w_img.T
    noise = torch.randn(n, 512, generator=gen, dtype=torch.float64) * img_emb.norm(dim=1, keepdim=True) / 512**0.5
    txt_act = torch.linalg.solve(w_txt, (img_emb + sigma * noise).T).T  # W_t a_t = the caption's embedding
    monkeypatch.setattr(vlm.adapter.image, "_pre", _Rows(img_act.float()))
    monkeypatch.setattr(vlm.adapter.text, "_pre", _Rows(txt_act.float()))
    pics = [Image.new("RGB", (32, 32), (i % 256, 0, 0)) for i in range(n)]
    pairs = [(im, f"a synthetic picture number {i}") for i, im in enumerate(pics)]
    post, report = fit_posterior(vlm, pairs, num_candidates=c, batch_size=64, cache_dir=tmp_path,
                                            progress=False)
    assert report.num_pairs == n and report.num_class_batches == n // c
    assert vlm.adapter.image._pre.used == n and vlm.adapter.text._pre.used == n
    assert (post.image.dim_in, post.image.dim_out, post.text.dim_in, post.text.dim_out) == (768, 512, 512, 512)

    shards = [load_shard(str(f)) for f in sorted((tmp_path / "features").glob("shard_*.safetensors"))]
    assert len(shards) == n // c
    sums = {"image": torch.zeros(512, 512, dtype=torch.float64), "text": torch.zeros(512, 512, dtype=torch.float64)}
    for f in shards:
        for side, (src, cand) in {"image": ("img_emb", "txt_emb"), "text": ("txt_emb", "img_emb")}.items():
            x, y = f[src].double(), f[cand].double()
            p = torch.softmax(tau * F.normalize(x, dim=1) @ F.normalize(y, dim=1).T, dim=1)
            off_pivot = p.scatter(1, p.argmax(1, keepdim=True), 0.0).sum(1)  # 1 − p_k, no cancellation
            assert float(off_pivot.max()) < 1e-6, (side, float(off_pivot.max()))
            sums[side] += output_factor_naive(x, y, tau)
    for side in ("image", "text"):
        got = getattr(post, side).B * n**0.5
        rel = float((got - sums[side]).norm() / sums[side].norm())
        assert rel <= 1e-6, (side, rel)  # measured ~1e-7 (float32 moments, float64 logits)
        eig = torch.linalg.eigvalsh(getattr(post, side).B)
        assert float(eig.min()) >= -1e-10 * float(eig.max()), (side, float(eig.min()), float(eig.max()))
    act = torch.cat([f["img_act"] for f in shards]).double()
    a_ref = act.T @ act / n**0.5
    torch.testing.assert_close(post.image.A, a_ref, rtol=1e-12, atol=1e-12 * float(a_ref.abs().max()))
    torch.testing.assert_close(act, img_act.float().double(), rtol=0, atol=0)  # the cache holds our rows


@pytest.mark.slow
def test_studio_and_export_space_on_b32(b32, checkpoint, tmp_path):
    from bayesvlm_explain.cli import _load, build_parser
    from bayesvlm_explain.space import export_space
    from bayesvlm_explain.ui import build_app

    args = build_parser().parse_args(["studio", "--model", MODEL, "--pretrained", checkpoint,
                                      "--posterior", str(known_posterior_dir(MODEL, TAG)), "--device", "cpu"])
    with pytest.warns(UserWarning, match="posterior was fitted for"):
        vlm = _load(args)  # what `bayesvlm-explain studio --model ViT-B-32 --pretrained FILE --posterior DIR` loads
    torch.testing.assert_close(vlm.model.text_projection, b32.model.text_projection, rtol=0, atol=0)
    app = build_app(vlm)
    assert app.__class__.__name__ == "StudioBlocks"
    out = export_space(tmp_path / "space", model=MODEL, pretrained=TAG)
    for name in ("README.md", "app.py", "requirements.txt", "bayesvlm_explain/__init__.py", ".gitattributes"):
        assert (out / name).is_file(), name
    assert f"{MODEL}" in (out / "app.py").read_text()


@pytest.mark.slow
def test_yardstick_command_on_b32_from_a_local_checkpoint(checkpoint, tmp_path, capsys):
    """`bayesvlm-explain yardstick` end to end on the real architecture: the CLI loads the local weights and
    the built-in posterior, writes yardstick.json beside a copy of it, and the studio then has percentiles."""
    import shutil

    import numpy as np

    from bayesvlm_explain.cli import main
    from bayesvlm_explain.ui.tabs.inspect import inspect_image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    post = tmp_path / "posterior"
    shutil.copytree(known_posterior_dir(MODEL, TAG), post)
    with pytest.warns(UserWarning, match="posterior was fitted for"):
        assert main(["yardstick", "--model", MODEL, "--pretrained", checkpoint, "--posterior", str(post),
                     "--data", str(tmp_path / "data"), "--out", str(post), "--device", "cpu",
                     "--mc-samples", "32", "--batch-size", "4"]) == 0
    assert "yardstick.json" in capsys.readouterr().out and (post / "yardstick.json").is_file()
    with pytest.warns(UserWarning, match="posterior was fitted for"):
        vlm = bx.BayesVLM.from_pretrained(MODEL, pretrained=checkpoint, posterior=post, device="cpu")
    ys = vlm.assets.yardstick
    assert ys is not None and ys.prompts == ["a photo of a cat.", "a photo of a dog."]
    image = inspect_image(vlm, str(tmp_path / "data" / "cat" / "0.png"), "a photo of a cat\na photo of a dog",
                          ys).json["image"]
    assert set(image["percentiles"]) == {"epistemic", "input_scale", "entropy", "joint"}
    assert all(0.0 <= v <= 100.0 for v in image["percentiles"].values())


@pytest.mark.slow
def test_studio_takes_a_thousand_prompts_at_b32(b32, tmp_path):
    from bayesvlm_explain.ui.tabs.inspect import inspect_image
    from bayesvlm_explain.ui.views import MAX_PROMPTS

    path = tmp_path / "photo.png"
    Image.new("RGB", (320, 240), (40, 120, 200)).save(path)
    prompts = [f"a photo of class number {i}" for i in range(MAX_PROMPTS)]
    out = inspect_image(b32, str(path), "\n".join(prompts))  # ~0.1-0.2 s per new prompt on 2 cores, then cached
    classes = out.json["classes"]
    assert MAX_PROMPTS == 1000 and [c["prompt"] for c in classes] == prompts
    assert abs(sum(c["prob"] for c in classes) - 1) < 1e-6 and all(c["var"] > 0 for c in classes)
    with pytest.raises(bx.InputError, match="at most 1000"):
        inspect_image(b32, str(path), "\n".join(prompts + ["one more"]))
