"""Every studio figure renders to PNG through matplotlib's object API and leaves no pyplot figure open."""

from __future__ import annotations

from io import BytesIO

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import PROMPTS, random_images
from matplotlib.figure import Figure
from PIL import Image

from bayesvlm_explain.evaluation.figures import reliability_bins, reliability_diagram
from bayesvlm_explain.explain import TokenAttribution, UncertaintyAttribution, decompose_uncertainty
from bayesvlm_explain.explain import figures as fx


@pytest.fixture(scope="module")
def explained(tiny_vlm):
    x = random_images(tiny_vlm, 3)
    pred = tiny_vlm.predict(x, PROMPTS, num_samples=200)
    dec = decompose_uncertainty(pred)
    attr = UncertaintyAttribution(tiny_vlm, "epistemic", num_samples=200).attribute(x, PROMPTS, method="saliency")
    tok = TokenAttribution(tiny_vlm).attribute(x[:1], PROMPTS[0], n_steps=8)
    return x, pred, dec, attr, tok


def _render(fig: Figure) -> bytes:
    assert isinstance(fig, Figure)
    buf = BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert plt.get_fignums() == []
    return data


def test_every_figure_renders_and_none_stays_open(explained):
    x, pred, dec, attr, tok = explained
    assert plt.get_fignums() == []
    labels = torch.tensor([0, 1, 2])
    figs = [
        fx.class_uncertainty_figure(pred, 1),
        fx.class_uncertainty_figure(pred, 0, top_k=2, sort=False, title="custom"),
        fx.decomposition_figure(dec, 0),
        fx.decomposition_figure(pred, 2, normalize=True),
        fx.attribution_overlay_figure(x[0], attr.attributions[0]),
        fx.attribution_overlay_figure(x[1], attr.attributions[1], patch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3),
        fx.attribution_overlay_figure(Image.new("RGB", (32, 32), "orange"), attr.patches()[2]),
        fx.token_scores_figure(tok),
        fx.token_scores_figure(tokens=["a", "cat"], scores=[0.3, -0.1]),
        reliability_diagram(pred.probs, labels),
        reliability_diagram({"probit": pred.probs, "MAP": pred.map_probs}, labels.numpy(), n_bins=5),
        fx.prompt_comparison_figure(pred, 0),
        fx.prompt_comparison_figure(pred, 1, decomposition=dec, top_k=3),
    ]
    for fig in figs:
        _render(fig)
    assert plt.get_fignums() == []


def test_reliability_bins_and_ece():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    b = reliability_bins(probs, labels, n_bins=4)
    # confidences 0.9, 0.8 -> bin 3 (acc 0.5); 0.7 -> bin 2 (acc 1); 0.55 -> bin 2 (acc 0)
    assert b["count"].tolist() == [0, 0, 2, 2]
    assert b["accuracy"][3] == pytest.approx(0.5) and b["confidence"][3] == pytest.approx(0.85)
    assert b["accuracy"][2] == pytest.approx(0.5) and b["confidence"][2] == pytest.approx(0.625)
    assert b["ece"] == pytest.approx(0.5 * 0.35 + 0.5 * 0.125)
    with pytest.raises(ValueError, match=r"probs must be \[N, C\] and labels \[N\]"):
        reliability_bins(probs, labels[:2])


def test_token_figure_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 tokens but 1 scores"):
        fx.token_scores_figure(tokens=["a", "b"], scores=[1.0])
    with pytest.raises(ValueError, match="pass a TokenAttributionResult or tokens and scores"):
        fx.token_scores_figure()
    assert plt.get_fignums() == []


def test_reliability_bins_agree_with_the_reported_ece():
    """The drawn bins (computed here) and the ECE in the legend (torchmetrics) describe the same binning."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 7, generator=gen), -1)
    labels = torch.randint(0, 7, (500,), generator=gen)
    for n_bins in (10, 20):
        b = reliability_bins(probs, labels, n_bins)
        filled = b["count"] > 0
        from_bins = (b["count"][filled] / 500 * np.abs(b["accuracy"][filled] - b["confidence"][filled])).sum()
        assert b["count"].sum() == 500
        assert b["ece"] == pytest.approx(from_bins, abs=1e-6)
