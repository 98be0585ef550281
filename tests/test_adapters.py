"""Model families as registered plug-ins: the registry, and the ResNet CLIP family added through it.

The ResNet family (:mod:`bayesvlm_explain.adapters.resnet`) is checked as the ViT and SigLIP families are
in test_model / test_probcos / test_explain: its features reproduce ``model.encode_image``, the analytic
logit moments agree with Monte Carlo over posterior draws of both projections, and pixel attributions
run on it (IG complete, target equal to what ``predict`` reports, patches on its 32-pixel grid).
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from conftest import PROMPTS, TINY_CLIP, random_images, random_posterior
from torch import nn

import bayesvlm_explain as bx
from bayesvlm_explain.adapters import (
    Family,
    ImageTower,
    OpenCLIPAdapter,
    adapter_for,
    class_key,
    register,
    registered,
    unregister,
)
from bayesvlm_explain.adapters.base import SubmoduleProjection
from bayesvlm_explain.explain import TokenAttribution, UncertaintyAttribution, model_patch_size

TINY_RN = dict(  # ModifiedResNet: 4 one-block stages of width 8 (C = 8·32 = 256 into c_proj), 64 px -> 2x2 grid
    embed_dim=16,
    vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=16),
    text_cfg=TINY_CLIP["text_cfg"],
)


@pytest.fixture(scope="module")
def tiny_resnet() -> bx.BayesVLM:
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_RN)
    vlm = bx.BayesVLM(model, open_clip.SimpleTokenizer(context_length=12),
                      open_clip.image_transform(64, is_train=False), device="cpu", name="tiny-rn")
    vlm.posterior = random_posterior(vlm)
    return vlm


# -- the ResNet CLIP family ----------------------------------------------------------------------------------
def test_resnet_features_reproduce_encode_image(tiny_resnet):
    vlm = tiny_resnet
    x = random_images(vlm, 3)
    with torch.no_grad():
        ref = vlm.model.encode_image(x)
        feats = vlm.adapter.image.features(x)
    assert vlm.adapter.architecture == "CLIP[ModifiedResNet+TextTransformer]"
    # c_proj: nn.Linear 256 -> 16 with bias, so the Bayesian layer acts on [f; 1]
    c_proj = vlm.model.visual.attnpool.c_proj
    assert vlm.adapter.image.weight is c_proj.weight and vlm.adapter.image.bias is c_proj.bias
    assert vlm.projection_dims("image") == (256 + 1, 16) and feats.activations.shape == (3, 256)
    torch.testing.assert_close(feats.embeddings, ref, rtol=1e-5, atol=1e-6)  # measured max |diff| 6e-8
    w = vlm.adapter.image.weight_with_bias()
    torch.testing.assert_close(vlm.adapter.image.augment(feats.activations) @ w.T, ref, rtol=1e-5, atol=1e-6)
    # through the encoder (float64 features) as predict uses them
    torch.testing.assert_close(vlm.encode_images(x).embeddings, ref.double(), rtol=1e-5, atol=1e-6)
    # the activation is the attention output of the pooled (mean) query: it depends on every pixel block
    x2 = x.clone()
    x2[:, :, :32, :32] = 0
    with torch.no_grad():
        assert not torch.allclose(vlm.adapter.image.features(x2).activations, feats.activations)


def test_resnet_grid_and_sizes(tiny_resnet):
    assert tiny_resnet.image_size == (64, 64)
    assert tiny_resnet.adapter.patch_size == (32, 32) == model_patch_size(tiny_resnet.model)
    assert tiny_resnet.encoder.image_dtype == torch.float32


def test_resnet_moments_match_monte_carlo(tiny_resnet):
    """Analytic logit moments against Monte Carlo of the exact cosine under matrix-normal draws of both
    projections (the check test_probcos makes for the ViT model), on a tight posterior."""
    vlm = tiny_resnet
    vlm_post = vlm.posterior
    vlm.posterior = random_posterior(vlm, prior_precision=1e4, seed=3)
    try:
        img, txt = vlm.encode_images(random_images(vlm, 3)), vlm.encode_prompts(PROMPTS)
        pred = vlm.predict_features(img, txt, PROMPTS, variance="projected")
        z = vlm.sample_logits_features(img, txt, 5_000, torch.Generator().manual_seed(5))
        mc = vlm.predict_features(img, txt, PROMPTS, predictive="mc", num_samples=5_000).probs
    finally:
        vlm.posterior = vlm_post
    # measured: logit std 0.68-0.77 (93%+ of the variance from the image side), mean within 0.007 std,
    # variance ratio 1.00-1.03, predictive probabilities within 0.0012 (5k draws; MC standard error ~0.014 std)
    assert pred.std.min() > 0.3 and (pred.var_image / pred.var).min() > 0.5  # non-degenerate, image-driven
    assert ((z.mean(0) - pred.mean).abs() / pred.std).max() < 0.06
    ratio = z.var(0) / pred.var
    assert 0.92 < ratio.min() and ratio.max() < 1.1, ratio
    # and the MC predictive (Gaussian logits) agrees with the softmax averaged over weight draws
    torch.testing.assert_close(mc, torch.softmax(z, -1).mean(0), rtol=0, atol=0.01)


def test_resnet_pixel_attribution(tiny_resnet):
    vlm = tiny_resnet
    x = random_images(vlm, 2)
    pred = vlm.predict(x, PROMPTS)
    res = UncertaintyAttribution(vlm, "image_variance").attribute(x, PROMPTS, prompt_index=1, n_steps=16)
    torch.testing.assert_close(res.target_values, pred.var_image[:, 1], rtol=1e-5, atol=0)
    gap = res.target_values - res.baseline_values
    assert (gap.abs() > 1e-6).all() and (res.delta.abs() <= 0.05 * gap.abs()).all(), (res.delta, gap)
    assert res.patch_size == (32, 32) and res.patches().shape == (2, 2, 2)
    occ = UncertaintyAttribution(vlm, "mean").attribute(x, PROMPTS, method="occlusion")
    assert occ.settings["sliding_window"] == (32, 32)  # the default window is the tower's grid cell
    per_cell = occ.attributions[:, :, :32, :32]
    torch.testing.assert_close(per_cell, per_cell[:, :1, :1, :1].expand_as(per_cell))


def test_token_attribution_on_resnet_model(tiny_resnet):
    res = TokenAttribution(tiny_resnet, target="text_variance").attribute(random_images(tiny_resnet, 1),
                                                                         "a photo of a cat", n_steps=32)
    assert res.tokens[1:-1] == ["a", "photo", "of", "a", "cat"]
    gap = res.target_value - res.baseline_value
    assert abs(gap) > 1e-6 and abs(res.delta) <= 0.05 * abs(gap)


# -- the registry --------------------------------------------------------------------------------------------
class FlatTower(nn.Module):
    """A toy image tower of a family unknown to the package: one linear map of the flattened pixels."""

    def __init__(self, size: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.image_size = size
        self.lin = nn.Linear(3 * size * size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _build_flat(model: nn.Module, tower: nn.Module) -> ImageTower:
    proj = SubmoduleProjection("visual.lin", lambda x, token_embeddings=None: x.flatten(1),
                               lambda: tower.lin.weight, lambda: tower.lin.bias)
    return ImageTower(proj, tower, image_size=(tower.image_size,) * 2, patch_size=(4, 4))


def _flat_model() -> nn.Module:
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)
    model.visual = FlatTower()
    return model


def test_registry_lists_families_in_the_error():
    model = _flat_model()
    with pytest.raises(bx.UnsupportedModelError) as err:
        adapter_for(model)
    message = str(err.value)
    assert message.startswith("image tower FlatTower is not supported; registered image towers:")
    for family in registered("image"):
        assert f"{family.name} ({family.key})" in message
    assert {f.key for f in registered("image")} >= {"open_clip.transformer.VisionTransformer",
                                                     "open_clip.timm_model.TimmModel",
                                                     "open_clip.modified_resnet.ModifiedResNet"}
    with pytest.raises(bx.UnsupportedModelError, match="Linear is not a CLIP-style model"):
        adapter_for(nn.Linear(2, 2))


def test_registering_a_family_is_all_it_takes():
    """A family registered from outside the package is used by every part (encoder, predict, attribution)."""
    family = register(Family("image", class_key(FlatTower), "flat test tower", _build_flat))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(Family("image", class_key(FlatTower), "again", _build_flat))
        model = _flat_model()
        vlm = bx.BayesVLM(model, open_clip.SimpleTokenizer(context_length=12), None, device="cpu")
        assert vlm.adapter.architecture == "CLIP[FlatTower+TextTransformer]"
        assert vlm.projection_dims("image") == (3 * 64 + 1, 16) and vlm.image_size == (8, 8)
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(vlm.encode_images(x).embeddings, model.encode_image(x).double())
        vlm.posterior = random_posterior(vlm)
        res = UncertaintyAttribution(vlm, "image_variance").attribute(x, PROMPTS, method="saliency")
        assert res.patches().shape == (2, 2, 2)
    finally:
        unregister(family)
    with pytest.raises(bx.UnsupportedModelError, match="FlatTower"):
        adapter_for(model)


def test_whole_model_family_takes_precedence_and_keys_follow_subclasses():
    class SubCLIP(open_clip.CLIP):
        pass

    torch.manual_seed(0)
    model = SubCLIP(**TINY_CLIP)
    # the CLIP text family is keyed by open_clip.model.CLIP and found along the subclass's MRO
    assert adapter_for(model).architecture == "SubCLIP[VisionTransformer+TextTransformer]"
    calls = []

    def build(model: nn.Module, module: nn.Module) -> OpenCLIPAdapter:
        calls.append(module)
        return OpenCLIPAdapter(model)

    family = register(Family("model", class_key(SubCLIP), "a whole-model test family", build))
    try:
        adapter = adapter_for(model)
        assert calls == [model] and isinstance(adapter, OpenCLIPAdapter)
        assert isinstance(adapter_for(open_clip.CLIP(**TINY_CLIP)), OpenCLIPAdapter) and len(calls) == 1
    finally:
        unregister(family)
    with pytest.raises(ValueError, match="unknown side"):
        register(Family("audio", "x.Y", "bad side", build))  # type: ignore[arg-type]


def test_adapting_again_adds_no_hook(tiny_siglip):
    """The SigLIP family hooks fc2 once per module, however many adapters are built on the model."""
    fc2 = tiny_siglip.model.visual.trunk.attn_pool.mlp.fc2
    before = len(fc2._forward_pre_hooks)
    for _ in range(3):
        adapter = adapter_for(tiny_siglip.model)
    assert len(fc2._forward_pre_hooks) == before == 1
    x = random_images(tiny_siglip, 2)
    with torch.no_grad():
        torch.testing.assert_close(adapter.image.features(x).activations,
                                   tiny_siglip.adapter.image.features(x).activations)


def test_text_fingerprint_follows_text_weights_only(tiny_vlm):
    adapter = tiny_vlm.adapter
    key = adapter.text_fingerprint()
    names = {k[0] for k in key}
    assert "text_projection" in names and "logit_scale" in names and not any(n.startswith("visual.") for n in names)
    with torch.no_grad():
        tiny_vlm.model.visual.proj.mul_(1.0)
        assert adapter.text_fingerprint() == key
        tiny_vlm.model.text_projection.mul_(1.0)
    assert adapter.text_fingerprint() != key
