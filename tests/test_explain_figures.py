"""The Explain tab's pictures: the heatmap over the image at its own resolution, and legible figure text."""

from __future__ import annotations

import matplotlib.text
import numpy as np
import open_clip
import pytest
import torch
from conftest import PROMPTS, random_images
from PIL import Image

from bayesvlm_explain.explain import TokenAttribution, UncertaintyAttribution, decompose_uncertainty
from bayesvlm_explain.explain import figures as fx

MIN_PX = 10.0


def test_crop_box_maps_the_model_input_back_onto_the_image():
    tf = open_clip.image_transform(224, is_train=False)  # shorter side to 224, centre crop 224
    assert fx.crop_box((448, 224), tf) == (112.0, 0.0, 336.0, 224.0)
    assert fx.crop_box((300, 600), tf) == (0.0, 150.0, 300.0, 450.0)
    assert fx.crop_box((50, 80), None) == (0.0, 0.0, 50.0, 80.0)  # unknown preprocessing: the whole image
    # the box really is what the transform keeps: a marker inside it survives preprocessing, outside does not
    img = np.zeros((224, 448, 3), np.uint8)
    img[:, 112:116] = 255  # left edge of the box
    img[:, 100:104] = 255  # outside it
    x = tf(Image.fromarray(img))
    left_cols = x[0, :, :4].mean()
    assert left_cols > x[0, :, 10:].mean() + 1.0


def test_overlay_keeps_the_image_resolution_and_colours_where_the_map_is(tiny_vlm):
    w, h = 96, 64  # the model (32 px input) sees the central 64 x 64 square
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8))
    att = torch.zeros(3, 32, 32)
    att[:, :8, :8] = 1.0  # top-left patch raises the quantity
    att[:, 24:, 24:] = -1.0  # bottom-right patch lowers it
    out = fx.attribution_overlay_image(img, att, patch_size=tiny_vlm.adapter.patch_size, transform=tiny_vlm.preprocess)
    assert out.size == (w, h) and out.mode == "RGB"
    a, b = np.asarray(out, np.float64), np.asarray(img, np.float64)
    red, blue = a[4, 16 + 4], a[h - 4, 16 + 60]  # inside the two marked patches (box starts at x = 16)
    assert red[0] > red[2] + 30 and blue[2] > blue[0] + 30
    np.testing.assert_allclose(a[:, :16], np.round(0.45 * b[:, :16]), atol=1)  # outside the crop: dimmed
    middle = a[28:36, 40:56]  # zero attribution: the image itself
    np.testing.assert_allclose(middle, b[28:36, 40:56], atol=1)


def _figures(vlm):
    x = random_images(vlm, 2)
    pred = vlm.predict(x, PROMPTS, num_samples=100)
    dec = decompose_uncertainty(pred)
    attr = UncertaintyAttribution(vlm, "image_variance").attribute(x, PROMPTS, method="saliency")
    tok = TokenAttribution(vlm).attribute(x[:1], PROMPTS[0], n_steps=4)
    return {
        "panels": fx.attribution_panels_figure(x[0], attr.attributions[0], patch_size=attr.patch_size,
                                               unit="squared logits"),
        "overlay": fx.attribution_overlay_figure(x[0], attr.attributions[0], patch_size=attr.patch_size),
        "classes": fx.class_uncertainty_figure(pred),
        "decomposition": fx.decomposition_figure(dec),
        "tokens": fx.token_scores_figure(tok),
        "prompts": fx.prompt_comparison_figure(pred, decomposition=dec),
    }


def test_every_explain_figure_has_text_of_at_least_10_px(tiny_vlm):
    """At the figure's own size (the PNG the studio shows): font size in points × dpi / 72 ≥ 10 px."""
    for name, fig in _figures(tiny_vlm).items():
        fig.canvas.draw()  # creates the tick labels
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        assert len(texts) >= 3, name
        smallest = min(t.get_fontsize() * fig.dpi / 72 for t in texts)
        assert smallest >= MIN_PX, (name, smallest)


@pytest.mark.parametrize("bad", [torch.zeros(3, 30, 32)])
def test_overlay_rejects_a_map_off_the_patch_grid(tiny_vlm, bad):
    img = Image.new("RGB", (40, 40))
    with pytest.raises(ValueError, match="patches"):
        fx.attribution_overlay_image(img, bad, patch_size=tiny_vlm.adapter.patch_size, transform=tiny_vlm.preprocess)


def test_explain_view_returns_the_overlay_at_the_upload_size_and_its_timing(tiny_vlm, tmp_path):
    from bayesvlm_explain.ui.tabs.explain import FAST_STEPS, explain_prompt

    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(path)
    out = explain_prompt(tiny_vlm, str(path), "a cat\na dog", num_samples=100)
    assert out.overlay.size == (70, 40) and out.json["steps"] == FAST_STEPS
    sec = out.json["seconds"]
    assert 0 < sec["pixels"] < sec["total"] and 0 < sec["tokens"] < sec["total"]
    assert f"Computed in {sec['total']:.2f} s" in out.summary and f"{FAST_STEPS} steps" in out.summary
    a = out.json["attribution"]
    gap = abs(a["delta"]) / abs(a["sum"] - a["delta"])
    assert f"within {100 * gap:.2g}%" in out.summary


@pytest.mark.parametrize("patch_size", [(8, 8), None])
@pytest.mark.parametrize("scale", [1e-7, 1.0, 3e4])
def test_heatmap_panels_keep_every_label_inside_the_figure(patch_size, scale):
    """The panels' fixed layout (no layout engine) leaves room for the colour bars' ticks and labels at any
    magnitude of the map, with one panel or two, and keeps the image boxes apart."""
    att = scale * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    fig = fx.attribution_panels_figure(torch.rand(3, 32, 32), att, patch_size=patch_size, unit="squared logits")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the PNG renderer
    canvas.draw()
    renderer = canvas.get_renderer()
    inside = fig.bbox.padded(1)
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) >= 5
    for t in texts:
        box = t.get_window_extent(renderer)
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), t.get_text()
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == (2 if patch_size else 1)
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
