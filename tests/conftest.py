"""Shared fixtures: tiny open_clip models built from configs (random weights, no download)."""

from __future__ import annotations

import open_clip
import pytest
import torch

import bayesvlm_explain as bx

torch.set_num_threads(2)

TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=12, vocab_size=49408, width=24, heads=2, layers=2),
)

TINY_SIGLIP = dict(
    embed_dim=64,  # = the timm trunk width (no projection after the MAP head)
    init_logit_bias=-10.0,
    vision_cfg=dict(image_size=160, timm_model_name="test_vit", timm_model_pretrained=False,
                    timm_pool="map", timm_proj="none"),
    text_cfg=dict(context_length=12, vocab_size=49408, width=32, heads=2, layers=2, no_causal_mask=True,
                  proj_bias=True, pool_type="last"),
)


def random_spd(n: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A random, strongly non-diagonal symmetric positive-definite matrix [n, n] (float64)."""
    m = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
    return scale * (m @ m.T / n + 0.05 * torch.eye(n, dtype=torch.float64))


def random_posterior(vlm: bx.BayesVLM, prior_precision: float = 10.0, seed: int = 0,
                     scale: float = 1.0) -> bx.Posterior:
    gen = torch.Generator().manual_seed(seed)
    sides = {}
    for side in ("image", "text"):
        p, d = vlm.projection_dims(side)
        sides[side] = bx.KronPosterior(random_spd(p, gen, scale), random_spd(d, gen, scale),
                                       prior_precision=prior_precision)
    return bx.Posterior(sides["image"], sides["text"], {"model": vlm.name})


def build_tiny(cfg: dict, custom_text: bool = False, seed: int = 0) -> bx.BayesVLM:
    torch.manual_seed(seed)
    model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)
    pre = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    tok = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return bx.BayesVLM(model, tok, pre, device="cpu", name="tiny")


@pytest.fixture(scope="session")
def tiny_vlm() -> bx.BayesVLM:
    vlm = build_tiny(TINY_CLIP)
    vlm.posterior = random_posterior(vlm)
    return vlm


@pytest.fixture(scope="session")
def tiny_siglip() -> bx.BayesVLM:
    vlm = build_tiny(TINY_SIGLIP, custom_text=True)
    vlm.posterior = random_posterior(vlm)
    return vlm


def random_images(vlm: bx.BayesVLM, n: int = 5, seed: int = 1) -> torch.Tensor:
    """Preprocessed-looking random images [n, 3, H, W] at the model's input size."""
    return torch.randn(n, 3, *vlm.image_size, generator=torch.Generator().manual_seed(seed))


PROMPTS = ["a photo of a cat", "a photo of a dog", "a red truck", "an emoji of a smiling face"]
