"""State that must follow the model, and calls that must not disturb each other (the studio runs several).

Each test here failed on the 0.1.0 core: a prompt cache keyed by the string alone, an unlocked LRU, an
adapter that set ``visual.proj = None`` during each forward, token attributions that hooked the shared
token embedding, and attributions that toggled the shared model's ``requires_grad`` flags.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from conftest import PROMPTS, TINY_CLIP, TINY_SIGLIP, build_tiny, random_images, random_posterior

from bayesvlm_explain import TokenAttribution, UncertaintyAttribution


def _run_threads(jobs: list[Callable[[], None]]) -> list[BaseException]:
    """Run each job in its own thread; return the exceptions raised."""
    errors: list[BaseException] = []

    def wrap(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - collected and asserted on
            errors.append(err)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def _fresh(vlm, prompts: list[str]) -> torch.Tensor:
    """Prompt embeddings computed now, bypassing the cache."""
    return vlm.encoder.token_features(vlm.tokenize(prompts)).embeddings


@pytest.fixture
def own_vlm():
    vlm = build_tiny(TINY_CLIP, seed=11)
    vlm.posterior = random_posterior(vlm, seed=11)
    return vlm


@pytest.mark.parametrize("edit", ["mul_", "load_state_dict", "reassign", "optimizer_step"])
def test_prompt_cache_follows_text_weight_changes(own_vlm, edit):
    vlm = own_vlm
    x = random_images(vlm, 2)
    before = vlm.predict(x, PROMPTS).mean
    model = vlm.model
    if edit == "mul_":
        with torch.no_grad():
            model.text_projection.mul_(1.7)
    elif edit == "load_state_dict":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["ln_final.bias"] = state["ln_final.bias"] + 0.5
        model.load_state_dict(state)
    elif edit == "reassign":
        model.text_projection = torch.nn.Parameter(model.text_projection.detach() * -1.0)
    else:
        opt = torch.optim.SGD([model.text_projection], lr=1.0)
        model.encode_text(vlm.tokenize(PROMPTS)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    after = vlm.predict(x, PROMPTS)
    assert (after.mean - before).abs().max() > 1e-3, "the edit should change the logits"
    torch.testing.assert_close(vlm.encode_prompts(PROMPTS).embeddings, _fresh(vlm, PROMPTS))


def test_prompt_cache_survives_concurrent_eviction(own_vlm):
    """4 threads x 25 predicts against a 16-entry cache: no errors, every result equal to the solo call."""
    vlm = own_vlm
    vlm.encoder.prompt_cache.size = 16
    x = random_images(vlm, 2)
    prompt_sets = [[f"a photo of thing {i} {j}" for j in range(6)] for i in range(40)]
    solo = {i: vlm.predict(x, ps).mean for i, ps in enumerate(prompt_sets)}
    mismatches: list[int] = []

    def job(offset: int) -> Callable[[], None]:
        def run() -> None:
            for k in range(25):
                i = (offset * 7 + k) % len(prompt_sets)
                if not torch.allclose(vlm.predict(x, prompt_sets[i]).mean, solo[i], rtol=1e-6, atol=1e-9):
                    mismatches.append(i)
        return run

    errors = _run_threads([job(t) for t in range(4)])
    assert errors == [] and mismatches == []
    assert len(vlm.encoder.prompt_cache) <= 16


@pytest.mark.parametrize("cfg", ["clip", "siglip"])
def test_feature_extraction_never_edits_the_model(cfg):
    """A thread calling ``model.encode_image`` while the adapter extracts activations always gets
    projected embeddings (the 0.1.0 adapter set ``visual.proj = None`` meanwhile)."""
    vlm = build_tiny(TINY_CLIP if cfg == "clip" else TINY_SIGLIP, custom_text=cfg == "siglip", seed=2)
    x = random_images(vlm, 2)
    with torch.no_grad():
        expected = vlm.model.encode_image(x)
    bad: list[tuple[int, ...]] = []

    def user() -> None:
        for _ in range(60):
            with torch.no_grad():
                out = vlm.model.encode_image(x)
            if out.shape != expected.shape or not torch.allclose(out, expected, atol=1e-5):
                bad.append(tuple(out.shape))

    def adapter() -> None:
        for _ in range(60):
            feats = vlm.adapter.image.features(x)
            torch.testing.assert_close(feats.embeddings, expected, atol=1e-5, rtol=1e-5)

    assert _run_threads([user, adapter]) == [] and bad == []


def test_predict_beside_explain_is_isolated(own_vlm):
    """Predictions with new prompts beside pixel and token attributions: no errors, every prediction
    equal to the same call made alone, every cache entry equal to a fresh encoding, and the user's
    ``requires_grad`` flags untouched."""
    vlm = own_vlm
    x = random_images(vlm, 2)
    prompt_sets = [[f"an emoji of item {i} {j}" for j in range(5)] for i in range(12)]
    flags = {n: p.requires_grad for n, p in vlm.model.named_parameters()}
    solo_vlm = build_tiny(TINY_CLIP, seed=11)
    solo_vlm.posterior = vlm.posterior
    solo = [solo_vlm.predict(x, ps).mean for ps in prompt_sets]
    wrong: list[int] = []
    stop = threading.Event()

    def predictor() -> None:
        try:
            for i, ps in enumerate(prompt_sets):
                if not torch.allclose(vlm.predict(x, ps).mean, solo[i], rtol=1e-6, atol=1e-9):
                    wrong.append(i)
        finally:
            stop.set()

    def explainer() -> None:
        ua = UncertaintyAttribution(vlm, "image_variance")
        ta = TokenAttribution(vlm, "text_variance")
        while not stop.is_set():
            ua.attribute(x[:1], PROMPTS, prompt_index=1, n_steps=4)
            ta.attribute(x[:1], PROMPTS[1], n_steps=4)

    errors = _run_threads([predictor, explainer, explainer])
    assert errors == [] and wrong == []
    cached = sorted({p for ps in prompt_sets for p in ps})
    # float32 towers: a batch of 5 and one of 60 round differently (~3e-7); a wrong entry is off by O(1)
    torch.testing.assert_close(vlm.encode_prompts(cached).embeddings, _fresh(vlm, cached), rtol=1e-5, atol=1e-6)
    assert {n: p.requires_grad for n, p in vlm.model.named_parameters()} == flags


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_preprocessed_tensor_of_another_dtype_is_cast(tiny_vlm, dtype):
    x = random_images(tiny_vlm, 2)
    ref = tiny_vlm.predict(x, PROMPTS)
    other = tiny_vlm.predict(x.to(dtype), PROMPTS)
    tol = 1e-6 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(other.mean, ref.mean, rtol=tol, atol=tol)
