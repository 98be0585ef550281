"""Adapters (orientation, SigLIP bias and residual), predictives, and errors on bad input."""

from __future__ import annotations

import io
import math
import warnings

import open_clip
import pytest
import torch
from conftest import PROMPTS, TINY_CLIP, TINY_SIGLIP, build_tiny, random_images
from PIL import Image

import bayesvlm_explain as bx


@pytest.mark.parametrize("fixture", ["tiny_vlm", "tiny_siglip"])
def test_adapter_reproduces_open_clip_embeddings_and_orientation(fixture, request):
    vlm = request.getfixturevalue(fixture)
    x = random_images(vlm, 3)
    tokens = vlm.tokenize(PROMPTS)
    with torch.no_grad():
        ref_img = vlm.model.encode_image(x)
        ref_txt = vlm.model.encode_text(tokens)
        img = vlm.adapter.image.features(x)
        txt = vlm.adapter.text.features(tokens)
    torch.testing.assert_close(img.embeddings, ref_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(txt.embeddings, ref_txt, rtol=1e-5, atol=1e-5)
    # the projection is y = W x̃ with W [D, p(+1)] (open_clip stores [p, D] and multiplies x @ proj)
    w_txt = vlm.adapter.text.weight_with_bias()
    torch.testing.assert_close(vlm.adapter.text.augment(txt.activations) @ w_txt.T, ref_txt, rtol=1e-5, atol=1e-5)
    w_img = vlm.adapter.image.weight_with_bias()
    proj = vlm.adapter.image.augment(img.activations) @ w_img.T
    if fixture == "tiny_vlm":
        assert vlm.adapter.image.weight.shape == (16, 32) and vlm.adapter.image.bias is None
        torch.testing.assert_close(proj, ref_img, rtol=1e-5, atol=1e-5)
        assert vlm.projection_dims("image") == (32, 16)
    else:  # SigLIP: fc2 has a bias (constant-1 column) and the attention output is a residual
        assert vlm.projection_dims("image") == (vlm.adapter.image.weight.shape[1] + 1, 64)
        assert vlm.projection_dims("text") == (32 + 1, 64)
        assert not torch.allclose(proj, ref_img, atol=1e-3)  # the residual is not in W f̃ ...
        assert vlm.adapter.likelihood == "sigmoid" and vlm.adapter.logit_bias == pytest.approx(-10.0)
    # the model is left intact (projection restored after the detached forward pass)
    assert isinstance(vlm.model.visual.proj if fixture == "tiny_vlm" else vlm.model.text.text_projection,
                      torch.nn.Parameter | torch.nn.Linear)


def test_siglip_residual_carries_no_uncertainty(tiny_siglip):
    """Only fc2's output is random: the spread of sampled embeddings does not depend on the residual."""
    vlm = tiny_siglip
    img = vlm.encode_images(random_images(vlm, 2))
    post = vlm.posterior
    x = vlm.adapter.image.augment(img.activations)
    draws = post.image.sample_outputs(x, img.embeddings, 20_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), img.embeddings, rtol=0, atol=0.05)
    var = draws.var(0).sum(-1)
    expected = post.image.input_scales(x) * post.image.covariance_factors()[1].trace()
    torch.testing.assert_close(var, expected, rtol=0.03, atol=0)


def test_siglip_mean_includes_logit_bias(tiny_siglip):
    pred = tiny_siglip.predict(random_images(tiny_siglip, 2), PROMPTS)
    assert (pred.map_logits < 0).all()  # bias −10 dominates τ·cos with τ = 1/0.07 ... for |cos| < 0.7
    torch.testing.assert_close(pred.map_probs.sum(-1), torch.ones(2, dtype=torch.float64))
    sig = tiny_siglip.predict(random_images(tiny_siglip, 2), PROMPTS, link="sigmoid")
    assert (sig.probs < 0.5).all()


def test_predictives_probit_mc_map(tiny_vlm):
    pred = tiny_vlm.predict(random_images(tiny_vlm, 4), PROMPTS, predictive="mc", num_samples=20_000)
    probit, mc, det = pred.predictive("probit"), pred.probs, pred.map_probs
    for p in (probit, mc, det):
        torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=torch.float64))
    # MC with the structured class covariance equals MC from an explicit MultivariateNormal per image
    mvn = torch.distributions.MultivariateNormal(pred.mean, covariance_matrix=pred.cov + 1e-9 * torch.eye(4))
    torch.manual_seed(0)
    ref = torch.softmax(mvn.sample((20_000,)), -1).mean(0)
    torch.testing.assert_close(mc, ref, rtol=0, atol=0.01)
    # probit approximates MC with *independent* classes (MacKay's per-class scaling) ...
    eps = torch.randn(20_000, *pred.mean.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mc_indep = torch.softmax(pred.mean + pred.std * eps, -1).mean(0)
    assert (probit - mc_indep).abs().max() < 0.04  # logit variances ≈ 6 here: a hard case for probit
    # ... and ignores the class correlations that the full-covariance MC keeps (broad posterior here)
    assert (mc - mc_indep).abs().max() > 0.05
    # uncertainty flattens the predictive relative to the deterministic model's
    ent = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    assert (ent(probit) >= ent(det) - 1e-9).all()


def test_probit_formula():
    from bayesvlm_explain.predictive import probit_probs

    m, v = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 8.0 / math.pi * 3]])
    torch.testing.assert_close(probit_probs(m, v), torch.softmax(torch.tensor([[1.0, 1.0]]), -1))


def test_pil_images_and_paths(tiny_vlm, tmp_path):
    img = Image.new("RGB", (50, 40), (200, 10, 10))
    path = tmp_path / "red.png"
    img.save(path)
    a = tiny_vlm.predict([img], PROMPTS)
    b = tiny_vlm.predict([path], PROMPTS)
    torch.testing.assert_close(a.mean, b.mean)
    assert a.mean.shape == (1, 4) and a.cov.shape == (1, 4, 4)


def test_bad_inputs_get_clear_errors(tiny_vlm, tmp_path):
    x = random_images(tiny_vlm, 1)
    with pytest.raises(bx.InputError, match="non-empty list"):
        tiny_vlm.predict(x, [])
    with pytest.raises(bx.InputError, match="prompt 2 is empty"):
        tiny_vlm.predict(x, ["a cat", "   "])
    with pytest.raises(bx.InputError, match="not a string"):
        tiny_vlm.predict(x, ["a cat", 3])
    with pytest.raises(bx.InputError, match=r"\[N, 3, H, W\]"):
        tiny_vlm.predict(torch.zeros(2, 32, 32), PROMPTS)
    with pytest.raises(bx.InputError, match="expects"):
        tiny_vlm.predict(torch.zeros(1, 3, 64, 64), PROMPTS)
    with pytest.raises(bx.InputError, match="expected a PIL image"):
        tiny_vlm.predict([42], PROMPTS)
    with pytest.raises(bx.InputError, match="non-empty list"):
        tiny_vlm.predict([], PROMPTS)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(bx.InputError, match="not a readable image"):
        tiny_vlm.predict([bad], PROMPTS)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    with pytest.raises(bx.InputError, match="readable|decoded"):
        tiny_vlm.predict([buf.getvalue()[:60]], PROMPTS)  # truncated PNG
    with pytest.raises(bx.InputError, match="exceeds"):
        bx.inputs.load_image(Image.new("L", (10, 10)), max_pixels=50)
    with pytest.raises(ValueError, match="unknown predictive"):
        tiny_vlm.predict(x, PROMPTS, predictive="laplace-bridge")


def test_over_long_prompt_is_truncated_with_a_warning(tiny_vlm):
    long = "a photo of " + " ".join(["very"] * 40) + " big cat"
    with pytest.warns(UserWarning, match="truncated to the context length 12"):
        pred = tiny_vlm.predict(random_images(tiny_vlm, 1), [long, "a cat"])
    assert torch.isfinite(pred.var).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_vlm.predict(random_images(tiny_vlm, 1), ["a short prompt"])


def _text_tower_calls(vlm: bx.BayesVLM) -> list[tuple[int, int]]:
    """The token shapes ``(prompts, positions)`` of every later call of ``vlm``'s text tower, appended live."""
    calls = []
    original = vlm.adapter.text.features

    def recording(tokens, token_embeddings=None):
        calls.append(tuple(tokens.shape))
        return original(tokens, token_embeddings)

    vlm.adapter.text.features = recording
    return calls


def test_prompt_cache_is_used_and_bounded():
    vlm = build_tiny(TINY_CLIP)
    vlm.encoder.prompt_cache.size = 3
    vlm.encoder.pad_cut_exact = True  # one tower call per batch (the check is tested below)
    calls = _text_tower_calls(vlm)
    a = vlm.encode_prompts(["a", "b"])
    b = vlm.encode_prompts(["b", "a"])
    assert [n for n, _ in calls] == [2]
    torch.testing.assert_close(a.embeddings[0], b.embeddings[1])
    vlm.encode_prompts(["c", "d"])
    assert len(vlm.encoder.prompt_cache) == 3 and [n for n, _ in calls] == [2, 2]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_prompt_padding_is_cut_off_only_where_the_features_stay_the_same(family):
    from bayesvlm_explain.encoding import PAD_CUT_RTOL

    vlm = build_tiny(TINY_CLIP) if family == "clip" else build_tiny(TINY_SIGLIP, custom_text=True)
    calls = _text_tower_calls(vlm)
    context = vlm.context_length
    first = vlm.encode_prompts(PROMPTS)  # the check: the batch both ways
    later = ["a photo of a frog", "a blue car"]
    second = vlm.encode_prompts(later)
    lengths = [positions for _, positions in calls]  # before the reference call below adds its own
    full = vlm.encoder._text_features(vlm.tokenize(PROMPTS + later))
    got = torch.cat([first.embeddings, second.embeddings])
    if family == "clip":  # causal, pooled at the end token: the padding is never seen
        assert vlm.encoder.pad_cut_exact is True and lengths[0] == context and max(lengths[1:3]) < context
        torch.testing.assert_close(got, full.embeddings, rtol=0, atol=PAD_CUT_RTOL * float(full.embeddings.abs().max()))
    else:  # SigLIP pools the last position: cutting changes the features, so it is never done
        assert vlm.encoder.pad_cut_exact is False and lengths[2:3] == [context]
        assert torch.equal(got, full.embeddings)


def test_unsupported_architecture_is_named():
    model = open_clip.CLIP(**TINY_CLIP)
    model.visual = torch.nn.Conv2d(3, 16, 32)  # an image tower no family is registered for
    with pytest.raises(bx.UnsupportedModelError, match="image tower Conv2d is not supported; registered image "
                                                       "towers: open_clip ViT .*ModifiedResNet"):
        bx.BayesVLM(model, open_clip.SimpleTokenizer(), None)
    cls_text = dict(TINY_CLIP["text_cfg"], embed_cls=True)  # CoCa-style text tower: a family refuses it
    model = open_clip.CustomTextCLIP(embed_dim=16, vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=cls_text)
    with pytest.raises(bx.UnsupportedModelError, match="CLS embedding"):
        bx.BayesVLM(model, open_clip.SimpleTokenizer(), None)
    with pytest.raises(bx.UnsupportedModelError, match="Linear"):
        bx.BayesVLM(torch.nn.Linear(3, 3), None, None)


def test_hugging_face_text_tower(tmp_path):
    """CustomTextCLIP with an HF text encoder (tiny BERT built from a local config, random weights)."""
    from transformers import BertConfig

    BertConfig(vocab_size=49408, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=16).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=TINY_CLIP["vision_cfg"],
        text_cfg=dict(hf_model_name=str(tmp_path), hf_model_pretrained=False, hf_proj_type="linear",
                      hf_pooler_type="mean_pooler", context_length=12))
    vlm = bx.BayesVLM(model, open_clip.SimpleTokenizer(context_length=12),
                      open_clip.image_transform(32, is_train=False), device="cpu")
    assert "HFTextEncoder" in vlm.adapter.architecture and vlm.projection_dims("text") == (32, 16)
    tokens = vlm.tokenize(PROMPTS)
    with torch.no_grad():
        feats = vlm.adapter.text.features(tokens)
        torch.testing.assert_close(feats.embeddings, model.encode_text(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feats.activations @ vlm.adapter.text.weight.T, feats.embeddings)


def test_from_pretrained_local_dir_checkpoint(tmp_path):
    """open_clip's ``local-dir:`` loading path (config + safetensors), offline."""
    import json

    from safetensors.torch import save_file

    vlm = build_tiny(TINY_CLIP)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP,
                                                                "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous() for k, v in vlm.model.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    loaded = bx.BayesVLM.from_pretrained(f"local-dir:{tmp_path}", device="cpu")
    x = random_images(vlm, 2)
    torch.testing.assert_close(loaded.encode_images(x).embeddings, vlm.encode_images(x).embeddings)
    torch.testing.assert_close(loaded.encode_prompts(PROMPTS).embeddings, vlm.encode_prompts(PROMPTS).embeddings)
    assert loaded.name == f"local-dir:{tmp_path}" and loaded.posterior is None


def test_string_options_are_validated_where_they_enter(tiny_vlm):
    x = random_images(tiny_vlm, 1)
    with pytest.raises(ValueError, match="unknown predictive 'probitt'; choose one of 'probit', 'mc', 'map'"):
        tiny_vlm.predict(x, PROMPTS, predictive="probitt")
    with pytest.raises(ValueError, match="unknown variance 'full'; choose one of 'projected'"):
        tiny_vlm.predict(x, PROMPTS, variance="full")
    with pytest.raises(ValueError, match="unknown link 'tanh'"):
        tiny_vlm.predict(x, PROMPTS, link="tanh")
    pred = tiny_vlm.predict(x, PROMPTS)
    with pytest.raises(ValueError, match="unknown predictive 'MC'"):
        pred.predictive("MC")
    with pytest.raises(ValueError, match="unknown target 'uncertainty'"):
        bx.UncertaintyAttribution(tiny_vlm, "uncertainty")
    with pytest.raises(ValueError, match="unknown variance 'exactly'"):
        bx.UncertaintyAttribution(tiny_vlm, "entropy", variance="exactly")
    # "exact" stays an alias of the paper's expected-norm variance
    torch.testing.assert_close(tiny_vlm.predict(x, PROMPTS, variance="exact").var,
                               tiny_vlm.predict(x, PROMPTS, variance="expected_norm").var)
