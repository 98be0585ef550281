"""Uncertainty explanations: decomposition, pixel attributions (captum) and token attributions.

The attribution targets are checked against the numbers ``BayesVLM.predict`` reports, IG against its
completeness axiom, and image-independent targets against exact zeros.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, random_images

from bayesvlm_explain.explain import (
    TokenAttribution,
    UncertaintyAttribution,
    decompose_uncertainty,
    entropy_terms,
    model_patch_size,
    patch_sum,
)

S = 400  # Monte Carlo draws for entropy targets (fast; the tests compare like with like)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.xlogy(p, p).sum(-1)


def _assert_complete(res, tol: float = 0.05) -> None:
    """IG completeness: Σ attributions = target(x) − target(baseline) within ``tol`` (relative)."""
    gap = res.target_values - res.baseline_values
    total = res.attributions.double().sum(dim=(1, 2, 3))
    assert (gap.abs() > 1e-6).all(), "degenerate test: target equal at input and baseline"
    assert ((total - gap).abs() <= tol * gap.abs()).all(), (total, gap)
    torch.testing.assert_close(res.delta, total - gap, rtol=1e-4, atol=1e-9)


# -- pixel attributions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_vlm", "tiny_siglip"])
def test_ig_image_variance_complete_and_matches_predict(fixture, request):
    vlm = request.getfixturevalue(fixture)
    x = random_images(vlm, 2)
    pred = vlm.predict(x, PROMPTS)
    k = 2
    res = UncertaintyAttribution(vlm, "image_variance").attribute(x, PROMPTS, prompt_index=k, n_steps=32)
    assert res.attributions.shape == x.shape and res.delta.shape == (2,)
    torch.testing.assert_close(res.target_values, pred.var_image[:, k], rtol=1e-5, atol=0)
    _assert_complete(res)
    # the baseline value is the target at the baseline image (zeros in preprocessed space)
    ua = UncertaintyAttribution(vlm, "image_variance")
    torch.testing.assert_close(res.baseline_values, ua.target_values(torch.zeros_like(x), PROMPTS, k), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("fixture", ["tiny_vlm", "tiny_siglip"])
def test_ig_entropy_complete_and_matches_mc_predictive(fixture, request):
    vlm = request.getfixturevalue(fixture)
    x = random_images(vlm, 2, seed=4)
    pred = vlm.predict(x, PROMPTS, predictive="mc", num_samples=S, seed=3)
    res = UncertaintyAttribution(vlm, "entropy", num_samples=S, seed=3).attribute(x, PROMPTS, n_steps=32)
    # the target at the input is the entropy of the model's own MC predictive (same draws)
    torch.testing.assert_close(res.target_values, _entropy(pred.probs), rtol=1e-5, atol=0)
    _assert_complete(res)
    assert res.prompt_index is None


def test_entropy_targets_agree_with_decomposition_and_probit(tiny_vlm):
    x = random_images(tiny_vlm, 4, seed=7)
    pred = tiny_vlm.predict(x, PROMPTS, num_samples=S, seed=0)
    dec = decompose_uncertainty(pred)
    for name, expected in (("entropy", dec.total_entropy), ("aleatoric", dec.aleatoric),
                           ("epistemic", dec.epistemic)):
        got = UncertaintyAttribution(tiny_vlm, name, num_samples=S, seed=0).target_values(x, PROMPTS)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)
    probit = UncertaintyAttribution(tiny_vlm, "entropy", predictive="probit").target_values(x, PROMPTS)
    torch.testing.assert_close(probit, _entropy(pred.predictive("probit")), rtol=1e-5, atol=0)
    for name, field in (("mean", "mean"), ("text_variance", "var_text"), ("variance", "var")):
        got = UncertaintyAttribution(tiny_vlm, name).target_values(x, PROMPTS, prompt_index=1)
        torch.testing.assert_close(got, getattr(pred, field)[:, 1], rtol=1e-5, atol=1e-7)


def test_ig_epistemic_is_complete(tiny_vlm):
    x = random_images(tiny_vlm, 2, seed=11)
    res = UncertaintyAttribution(tiny_vlm, "epistemic", num_samples=S).attribute(x, PROMPTS, n_steps=24)
    _assert_complete(res)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "smoothgrad", "occlusion"])
def test_image_independent_targets_get_exactly_zero_attribution(tiny_vlm, method):
    """Two targets that provably do not depend on the pixels.

    * Entropy and mutual information of a softmax over ONE prompt: the predictive is identically 1 for
      every logit draw, so both are 0 for every image (the gradient of log_softmax of one logit is 0).
    * A text-only quantity (the scaled prompt embeddings) passed as a custom target.
    """
    x = random_images(tiny_vlm, 1)
    for target in ("entropy", "epistemic"):
        res = UncertaintyAttribution(tiny_vlm, target, num_samples=64).attribute(x, PROMPTS[:1], method=method,
                                                                                 n_steps=8)
        assert torch.count_nonzero(res.attributions) == 0, (target, method)
        assert torch.count_nonzero(res.target_values) == 0

    def text_only(m):
        return m.txt_mean_scaled.sum().expand(m.mean.shape[0])

    res = UncertaintyAttribution(tiny_vlm, text_only).attribute(x, PROMPTS, method=method, n_steps=8)
    assert torch.count_nonzero(res.attributions) == 0
    assert res.target == "text_only"


def test_text_variance_does_depend_on_the_image(tiny_vlm):
    """var_text = w_txt[n]·t̂_c: the prompt part t̂_c is fixed, but w_txt = τ² μ_nᵀΣ_tμ_n / E||u_n||²."""
    x = random_images(tiny_vlm, 2)
    res = UncertaintyAttribution(tiny_vlm, "text_variance").attribute(x, PROMPTS, prompt_index=0,
                                                                      method="saliency")
    assert res.attributions.abs().amax(dim=(1, 2, 3)).min() > 0


def test_saliency_is_the_gradient_and_parameters_stay_frozen(tiny_vlm):
    x = random_images(tiny_vlm, 2)
    ua = UncertaintyAttribution(tiny_vlm, "epistemic", num_samples=S)
    param = next(tiny_vlm.model.parameters())
    param.requires_grad_(True)  # trainable parameters (the default): attribution must not train or leak grads
    try:
        res = ua.attribute(x, PROMPTS, method="saliency")
        assert param.requires_grad and param.grad is None
    finally:
        param.requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    out = ua.target_function(PROMPTS)(xx)
    (grad,) = torch.autograd.grad(out.sum(), xx)
    torch.testing.assert_close(res.attributions, grad.float(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(res.target_values, out.detach())
    assert all(p.grad is None for p in tiny_vlm.model.parameters())  # nothing accumulated in the model
    absolute = ua.attribute(x, PROMPTS, method="saliency", abs=True)
    torch.testing.assert_close(absolute.attributions, grad.abs().float(), rtol=1e-5, atol=1e-8)


def test_occlusion_of_the_whole_image_is_the_target_change(tiny_vlm):
    x = random_images(tiny_vlm, 2)
    ua = UncertaintyAttribution(tiny_vlm, "image_variance")
    res = ua.attribute(x, PROMPTS, prompt_index=1, method="occlusion", baselines=0.5,
                       sliding_window=x.shape[-1], strides=1)
    change = res.target_values - ua.target_values(torch.full_like(x, 0.5), PROMPTS, 1)
    expected = change[:, None, None, None].float().expand_as(x)
    torch.testing.assert_close(res.attributions, expected, rtol=1e-4, atol=1e-7)
    # default window: one ViT patch, so each patch's attributions are constant per pixel
    res = ua.attribute(x, PROMPTS, prompt_index=1, method="occlusion")
    assert res.settings["sliding_window"] == (8, 8)
    per_patch = res.attributions[:, :, :8, :8]
    torch.testing.assert_close(per_patch, per_patch[:, :1, :1, :1].expand_as(per_patch))


def test_smoothgrad_is_seeded_and_tends_to_saliency(tiny_vlm):
    x = random_images(tiny_vlm, 2)
    ua = UncertaintyAttribution(tiny_vlm, "image_variance")
    a = ua.attribute(x, PROMPTS, method="smoothgrad", nt_samples=4)
    b = ua.attribute(x, PROMPTS, method="smoothgrad", nt_samples=4)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)
    assert a.settings["nt_samples"] == 4 and a.settings["stdevs"] > 0
    tiny = ua.attribute(x, PROMPTS, method="smoothgrad", nt_samples=2, stdevs=1e-6)
    sal = ua.attribute(x, PROMPTS, method="saliency")
    torch.testing.assert_close(tiny.attributions, sal.attributions, rtol=1e-2, atol=1e-6)


def test_patch_aggregation(tiny_vlm, tiny_siglip):
    assert model_patch_size(tiny_vlm.model) == (8, 8)
    assert model_patch_size(tiny_siglip.model) == (16, 16)
    a = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patch_sum(a, (2, 3))
    assert p.shape == (2, 2, 2)
    assert p[0, 0, 0] == a[0, :, :2, :3].sum() and p[1, 1, 1] == a[1, :, 2:, 3:].sum()
    with pytest.raises(ValueError, match="whole number of 4x4 patches"):
        patch_sum(a, 4)
    x = random_images(tiny_vlm, 2)
    res = UncertaintyAttribution(tiny_vlm, "mean").attribute(x, PROMPTS, method="saliency")
    grid = res.patches()
    assert grid.shape == (2, 4, 4)
    torch.testing.assert_close(grid.sum(dim=(1, 2)), res.attributions.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    assert res.patches(16).shape == (2, 2, 2) and res.heatmap().shape == (2, 32, 32)


def test_batched_ig_equals_unbatched_and_baselines_broadcast(tiny_vlm):
    x = random_images(tiny_vlm, 2)
    ua = UncertaintyAttribution(tiny_vlm, "image_variance")
    base = torch.full((1, 3, 32, 32), -0.3)
    full = ua.attribute(x, PROMPTS, n_steps=16, baselines=base)
    small = ua.attribute(x, PROMPTS, n_steps=16, baselines=base[0], internal_batch_size=2)
    torch.testing.assert_close(full.attributions, small.attributions, rtol=1e-4, atol=1e-7)


def test_ig_end_values_from_the_callers_encoding_and_the_baseline_cache(tiny_vlm, monkeypatch):
    """IG's end values need no pass of the image tower when the caller passes the images' encoding and the
    grey baseline is cached; the results equal the uncached ones, and an edited weight re-encodes the grey."""
    from bayesvlm_explain.explain.attribution import BaselineCache

    x = random_images(tiny_vlm, 2, seed=5)
    plain = UncertaintyAttribution(tiny_vlm, "image_variance").attribute(x, PROMPTS, prompt_index=1, n_steps=16)
    tower = tiny_vlm.adapter.image
    calls: list[int] = []
    original = type(tower).features
    monkeypatch.setattr(type(tower), "features", lambda self, inp, *a, **k: calls.append(inp.shape[0])
                        or original(self, inp, *a, **k))
    cache = BaselineCache()
    ua = UncertaintyAttribution(tiny_vlm, "image_variance", baseline_cache=cache)
    feats = tiny_vlm.encode_images(x)
    calls.clear()
    first = ua.attribute(x, PROMPTS, prompt_index=1, n_steps=16, features=feats)
    assert calls == [32, 1]  # the 16 steps of both images in one pass, then the grey image once
    calls.clear()
    again = ua.attribute(x, PROMPTS, prompt_index=1, n_steps=16, features=feats)
    assert calls == [32] and len(cache) == 1  # only the integration: both end values without the tower
    for res in (first, again):
        torch.testing.assert_close(res.attributions, plain.attributions, rtol=0, atol=0)
        torch.testing.assert_close(res.target_values, plain.target_values, rtol=1e-6, atol=0)
        torch.testing.assert_close(res.baseline_values, plain.baseline_values, rtol=1e-6, atol=0)
        _assert_complete(res)
    # another model state (an in-place edit of a weight) is another cache entry, encoded afresh
    param = next(tiny_vlm.model.visual.parameters())
    saved = param.detach().clone()
    with torch.no_grad():
        param.mul_(1.5)
    try:
        calls.clear()
        edited = ua.attribute(x, PROMPTS, prompt_index=1, n_steps=16)
        assert calls == [32, 2, 1] and len(cache) == 2  # integration, the inputs (no encoding given), the grey
        assert not torch.allclose(edited.baseline_values, plain.baseline_values, rtol=1e-4, atol=0)
        _assert_complete(edited)
    finally:
        with torch.no_grad():
            param.copy_(saved)
    with pytest.raises(ValueError, match="features of 2 images given for 1 images"):
        ua.attribute(x[:1], PROMPTS, features=feats)


def test_input_validation(tiny_vlm):
    x = random_images(tiny_vlm, 1)
    with pytest.raises(ValueError, match="unknown target"):
        UncertaintyAttribution(tiny_vlm, "confidence")
    with pytest.raises(ValueError, match="unknown method"):
        UncertaintyAttribution(tiny_vlm).attribute(x, PROMPTS, method="gradcam")
    with pytest.raises(IndexError, match="prompt_index 9 out of range"):
        UncertaintyAttribution(tiny_vlm).attribute(x, PROMPTS, prompt_index=9)
    with pytest.raises(ValueError, match="Monte Carlo"):
        UncertaintyAttribution(tiny_vlm, "epistemic", predictive="probit").target_values(x, PROMPTS)
    with pytest.raises(ValueError, match="do not match"):
        UncertaintyAttribution(tiny_vlm).attribute(x, PROMPTS, baselines=torch.zeros(1, 3, 8, 8))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        UncertaintyAttribution(tiny_vlm).attribute(x, PROMPTS)


def test_works_after_inference_mode_prediction(tiny_vlm):
    """Posterior factors and prompt features cached under inference_mode must not break autograd."""
    x = random_images(tiny_vlm, 1)
    prompts = ["an unseen prompt for the cache"] + PROMPTS
    with torch.inference_mode():
        tiny_vlm.predict(x, prompts)
    res = UncertaintyAttribution(tiny_vlm, "image_variance").attribute(x, prompts, method="saliency")
    assert torch.isfinite(res.attributions).all()


# -- decomposition -----------------------------------------------------------------------------------------
def test_decomposition_parts_and_entropy_split(tiny_vlm):
    x = random_images(tiny_vlm, 4)
    pred = tiny_vlm.predict(x, PROMPTS, num_samples=S, seed=5)
    dec = decompose_uncertainty(pred)
    torch.testing.assert_close(dec.share_image + dec.share_text + dec.share_interaction,
                               torch.ones(4, len(PROMPTS), dtype=torch.float64))
    torch.testing.assert_close(dec.var, pred.var)
    torch.testing.assert_close(dec.total_entropy, _entropy(pred.predictive("mc")), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dec.aleatoric + dec.epistemic, dec.total_entropy)
    assert (dec.epistemic >= 0).all() and (dec.total_entropy <= torch.log(torch.tensor(4.0)) + 1e-9).all()
    torch.testing.assert_close(dec.variance_contribution.sum(-1), torch.ones(4, dtype=torch.float64))
    assert dec.num_samples == S and dec.seed == 5


def test_leave_one_out_scores_match_brute_force(tiny_vlm):
    x = random_images(tiny_vlm, 3, seed=2)
    pred = tiny_vlm.predict(x, PROMPTS, num_samples=S, seed=1)
    dec = decompose_uncertainty(pred)
    samples = pred.sample(S, torch.Generator().manual_seed(1))
    total, _, mi = entropy_terms(samples)
    for c in range(len(PROMPTS)):
        keep = [j for j in range(len(PROMPTS)) if j != c]
        t_c, _, mi_c = entropy_terms(samples[..., keep])
        torch.testing.assert_close(dec.entropy_drop[:, c], total - t_c, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(dec.epistemic_drop[:, c], mi - mi_c, rtol=1e-9, atol=1e-12)
    assert torch.equal(dec.ranking, torch.argsort(dec.epistemic_drop, dim=-1, descending=True, stable=True))
    top = dec.top_prompts(0, k=2)
    assert top[0][0] == PROMPTS[int(dec.ranking[0, 0])] and len(top) == 2
    by_var = decompose_uncertainty(pred, rank_by="variance", leave_one_out=False)
    assert by_var.epistemic_drop is None
    assert torch.equal(by_var.ranking, torch.argsort(pred.var, dim=-1, descending=True, stable=True))
    with pytest.raises(ValueError, match="needs leave_one_out=True"):
        decompose_uncertainty(pred, rank_by="entropy_drop", leave_one_out=False)


def test_decomposition_single_prompt_and_sigmoid_link(tiny_vlm, tiny_siglip):
    x = random_images(tiny_vlm, 2)
    one = decompose_uncertainty(tiny_vlm.predict(x, PROMPTS[:1], num_samples=S))
    assert torch.count_nonzero(one.total_entropy) == 0 and torch.count_nonzero(one.epistemic_drop) == 0
    xs = random_images(tiny_siglip, 2)
    pred = tiny_siglip.predict(xs, PROMPTS, link="sigmoid", num_samples=S)
    dec = decompose_uncertainty(pred)
    p = pred.predictive("mc")
    bern = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
    torch.testing.assert_close(dec.total_entropy, bern.sum(-1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dec.entropy_drop, bern, rtol=1e-9, atol=1e-12)  # independent Bernoullis
    torch.testing.assert_close(dec.epistemic_drop.sum(-1), dec.epistemic, rtol=1e-9, atol=1e-12)
    res = UncertaintyAttribution(tiny_siglip, "epistemic", link="sigmoid", num_samples=S).target_values(
        xs, PROMPTS)
    torch.testing.assert_close(res, dec.epistemic, rtol=1e-5, atol=1e-9)


# -- token attributions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_vlm", "tiny_siglip"])
@pytest.mark.parametrize("target,field", [("text_variance", "var_text"), ("mean", "mean")])
def test_token_attribution_one_score_per_token_and_complete(fixture, target, field, request):
    vlm = request.getfixturevalue(fixture)
    image = random_images(vlm, 1)
    prompt = "a photo of a striped cat"
    res = TokenAttribution(vlm, target=target).attribute(image, prompt, n_steps=32)
    n_tokens = len(vlm.tokenizer.encode(prompt)) + 2
    assert len(res.tokens) == len(res.token_ids) == len(res.special) == res.scores.shape[0] == n_tokens
    assert res.special[0] and res.special[-1] and not any(res.special[1:-1])
    assert res.tokens[1:-1] == ["a", "photo", "of", "a", "striped", "cat"]
    assert res.scores[0] == 0 and res.scores[-1] == 0  # kept positions: no path, no attribution
    pred = vlm.predict(image, [prompt])
    assert res.target_value == pytest.approx(float(getattr(pred, field)[0, 0]), rel=1e-5)
    gap = res.target_value - res.baseline_value
    assert abs(gap) > 1e-6 and abs(res.delta) <= 0.05 * abs(gap)
    assert float(res.scores.sum()) == pytest.approx(gap, rel=0.05)
    assert [t for t, _ in res.pairs()] == res.tokens[1:-1]


@pytest.mark.parametrize("fixture,cut", [("tiny_vlm", True), ("tiny_siglip", False)])
def test_token_attribution_cut_after_end_token_equals_full_context(fixture, cut, request, monkeypatch):
    """The fast path (padding cut off, causal CLIP tower) gives the full-context scores; a tower whose
    pooled feature sees the padding (SigLIP here: no causal mask, pooled at the last position) is not cut."""
    from bayesvlm_explain.explain import tokens as tokens_module

    vlm = request.getfixturevalue(fixture)
    image = random_images(vlm, 1)
    prompt = "a photo of a striped cat"
    fast = TokenAttribution(vlm).attribute(vlm.encode_images(image), prompt, n_steps=16)
    n_tokens, context = len(fast.tokens), vlm.tokenize([prompt]).shape[1]
    assert fast.positions == (n_tokens if cut else context) and n_tokens < context
    monkeypatch.setattr(vlm.encoder, "pad_cut_exact", None)  # no verdict yet: checked on the call
    checked = TokenAttribution(vlm).attribute(image, prompt, n_steps=16)
    assert checked.positions == fast.positions
    torch.testing.assert_close(checked.scores, fast.scores, rtol=1e-6, atol=1e-9 * float(fast.scores.abs().max()))
    monkeypatch.setattr(tokens_module, "_cut_ends", lambda *args: None)  # the full-context path
    full = TokenAttribution(vlm).attribute(image, prompt, n_steps=16)
    assert full.positions == context and full.tokens == fast.tokens
    torch.testing.assert_close(fast.scores, full.scores, rtol=1e-4, atol=1e-6 * float(full.scores.abs().max()))
    assert fast.target_value == full.target_value
    assert fast.baseline_value == pytest.approx(full.baseline_value, rel=1e-6)


@pytest.mark.parametrize("verdict", [True, None, False])
def test_token_attribution_passes_of_the_text_tower(tiny_vlm, monkeypatch, verdict):
    """On the CPU the prompt's value is the encoder's cached encoding, so the ends cost one pass, for the
    baseline: on the prompt's own tokens where the encoder found the padding cut exact; else on the full
    context, then (no verdict yet) the cut ends checked in one pass of both; then the integration."""
    image = tiny_vlm.encode_images(random_images(tiny_vlm, 1))
    prompt = "a photo of a striped cat"
    tiny_vlm.encode_prompts([prompt])  # cached, as after the prediction
    assert tiny_vlm.encoder.pad_cut_exact is True  # the tiny CLIP tower is causal, pooled at the end token
    monkeypatch.setattr(tiny_vlm.encoder, "pad_cut_exact", verdict)
    tower = tiny_vlm.adapter.text
    calls: list[tuple[int, ...]] = []
    original = type(tower).features
    monkeypatch.setattr(type(tower), "features", lambda self, inp, *a, **k: calls.append(tuple(inp.shape))
                        or original(self, inp, *a, **k))
    res = TokenAttribution(tiny_vlm).attribute(image, prompt, n_steps=8)
    context, n = tiny_vlm.tokenize([prompt]).shape[1], len(res.tokens)
    expected = {True: [(1, n), (8, n)], None: [(1, context), (2, n), (8, n)], False: [(1, context), (8, context)]}
    assert calls == expected[verdict]
    assert res.positions == (context if verdict is False else n)
    pred = tiny_vlm.predict_features(image, tiny_vlm.encode_prompts([prompt]), [prompt])
    assert res.target_value == float(pred.var_text[0, 0])


def test_token_attribution_validation(tiny_vlm):
    with pytest.raises(ValueError, match="unknown target 'entropy'"):
        TokenAttribution(tiny_vlm, target="entropy")
    with pytest.raises(ValueError, match="one image"):
        TokenAttribution(tiny_vlm).attribute(random_images(tiny_vlm, 2), "a cat")


def _wordpiece_vlm(tmp_path):
    """A tiny CLIP shaped like the bundled model: HF WordPiece tokenizer ([CLS] … [SEP], pad 0) and
    ``pool_type="eos"`` on the [SEP] token."""
    import open_clip
    from conftest import TINY_CLIP, random_posterior
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    import bayesvlm_explain as bx

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(["a red cat", "a blue dog", "a smiling face", "an emoji of a truck"] * 3,
                            trainer=trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(tmp_path))
    text_cfg = dict(context_length=12, vocab_size=tok.get_vocab_size(), width=24, heads=2, layers=2,
                    pool_type="eos", eos_id=3, pad_id=0)
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=text_cfg)
    vlm = bx.BayesVLM(model, open_clip.tokenizer.HFTokenizer(str(tmp_path), context_length=12),
                      open_clip.image_transform(32, is_train=False), device="cpu", name="tiny-wordpiece")
    vlm.posterior = random_posterior(vlm)
    return vlm


def test_token_attribution_with_wordpiece_tokenizer_and_eos_pooling(tmp_path):
    vlm = _wordpiece_vlm(tmp_path)
    image = random_images(vlm, 1)
    res = TokenAttribution(vlm, target="text_variance").attribute(image, "a red cat", n_steps=32)
    assert res.tokens == ["[CLS]", "a", "red", "cat", "[SEP]"] and res.scores.shape == (5,)
    assert res.special == [True, False, False, False, True]
    assert res.scores[0] == 0 and res.scores[-1] == 0
    pred = vlm.predict(image, ["a red cat"])
    assert res.target_value == pytest.approx(float(pred.var_text[0, 0]), rel=1e-5)
    gap = res.target_value - res.baseline_value
    assert abs(gap) > 1e-6 and abs(res.delta) <= 0.05 * abs(gap)
