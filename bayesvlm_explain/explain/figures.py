"""Figures for the studio: every function builds and returns a :class:`matplotlib.figure.Figure`.

Only matplotlib's object API is used (no ``pyplot``), so no global figure state is created and nothing
needs closing: render with ``fig.savefig(buffer, format="png")`` and drop the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..predictive import Prediction
from .attribution import patch_sum
from .decomposition import UncertaintyDecomposition
from .tokens import TokenAttributionResult

PART_COLORS = {"image": "#4C72B0", "text": "#DD8452", "interaction": "#8172B3"}
DIVERGING = "RdBu_r"


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _order(values: np.ndarray, top_k: int | None, sort: bool) -> np.ndarray:
    idx = np.argsort(-values, kind="stable") if sort else np.arange(len(values))
    return idx[:top_k] if top_k else idx


def _height(rows: int) -> float:
    return 1.6 + 0.32 * rows


# -- per-class mean ± std and probabilities ----------------------------------------------------------
def class_uncertainty_figure(pred: Prediction, image_index: int = 0, *, top_k: int | None = 10,
                             sort: bool = True, title: str | None = None) -> Figure:
    """Logit mean ± std per prompt (left) and probit vs deterministic (MAP) probabilities (right).

    Prompts are sorted by probit probability (``sort``) and the ``top_k`` first are shown.
    """
    mean, std = _np(pred.mean[image_index]), _np(pred.std[image_index])
    probit = _np(pred.predictive("probit")[image_index])
    det = _np(pred.map_probs[image_index])
    idx = _order(probit, top_k, sort)
    labels = [_short(pred.prompts[i]) for i in idx]
    y = np.arange(len(idx))
    fig = Figure(figsize=(10, _height(len(idx))), layout="constrained")
    ax_l, ax_p = fig.subplots(1, 2, sharey=True)
    ax_l.errorbar(mean[idx], y, xerr=2 * std[idx], fmt="none", ecolor="#9ecae1", elinewidth=6, alpha=0.8,
                  label="± 2 std")
    ax_l.errorbar(mean[idx], y, xerr=std[idx], fmt="o", color="#08519c", capsize=3, label="mean ± std")
    ax_l.set_yticks(y, labels)
    ax_l.invert_yaxis()
    ax_l.set_xlabel("logit (scaled cosine)")
    ax_l.set_title("probabilistic logits")
    ax_l.legend(loc="best", fontsize="small")
    h = 0.4
    ax_p.barh(y - h / 2, probit[idx], height=h, color="#3182bd", label="BayesVLM (probit)")
    ax_p.barh(y + h / 2, det[idx], height=h, color="#bdbdbd", label="deterministic (MAP)")
    ax_p.set_xlim(0, 1)
    ax_p.set_xlabel("probability")
    ax_p.set_title("predictive")
    ax_p.legend(loc="lower right", fontsize="small")
    fig.suptitle(title or f"image {image_index}: per-prompt uncertainty")
    return fig


# -- variance decomposition -----------------------------------------------------------------------------
def decomposition_figure(parts: UncertaintyDecomposition | Prediction, image_index: int = 0, *,
                         normalize: bool = False, top_k: int | None = None, sort: bool = True,
                         title: str | None = None) -> Figure:
    """Stacked bars of each prompt's logit variance: image, text and interaction parts.

    ``normalize`` shows shares (summing to 1) instead of squared logits. With an
    :class:`UncertaintyDecomposition` the title reports the entropy split (total = aleatoric + epistemic).
    """
    vi, vt, vx = (_np(getattr(parts, k)[image_index]) for k in ("var_image", "var_text", "var_interaction"))
    total = vi + vt + vx
    idx = _order(total, top_k, sort)
    if normalize:
        vi, vt, vx = vi / total, vt / total, vx / total
    y = np.arange(len(idx))
    fig = Figure(figsize=(8, _height(len(idx))), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(idx))
    for name, v in (("image", vi), ("text", vt), ("interaction", vx)):
        ax.barh(y, v[idx], left=left, color=PART_COLORS[name], label=name)
        left = left + v[idx]
    ax.set_yticks(y, [_short(parts.prompts[i]) for i in idx])
    ax.invert_yaxis()
    ax.set_xlabel("share of logit variance" if normalize else "logit variance (squared logits)")
    ax.legend(loc="lower right", fontsize="small", title="posterior of")
    heading = title or f"image {image_index}: where the logit variance comes from"
    if isinstance(parts, UncertaintyDecomposition):
        heading += (f"\nentropy {float(parts.total_entropy[image_index]):.3f} nats = aleatoric "
                    f"{float(parts.aleatoric[image_index]):.3f} + epistemic {float(parts.epistemic[image_index]):.3f}")
    ax.set_title(heading)
    return fig


# -- heatmap overlay ---------------------------------------------------------------------------------------
def _display_image(image: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """An image as [H, W, 3] floats in [0, 1] (a preprocessed tensor is un-normalised or min-max scaled)."""
    if isinstance(image, torch.Tensor):
        arr = _np(image[0] if image.ndim == 4 else image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        if mean is not None and std is not None:
            arr = arr * np.asarray(std) + np.asarray(mean)
        else:
            lo, hi = arr.min(), arr.max()
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
        if arr.max() > 1.0:
            arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def attribution_overlay_figure(image: Any, attributions: Any, *, patch_size: int | tuple[int, int] | None = None,
                               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                               alpha: float = 0.55, title: str | None = None, label: str = "attribution") -> Figure:
    """The image (left) and the attribution heatmap over it (right), on a diverging scale centred at 0.

    Args:
        image: a preprocessed tensor [3, H, W] (shown un-normalised with ``mean``/``std``, else min-max
            scaled), an [H, W, 3] array, or a PIL image.
        attributions: [3, H, W] or [H, W] per pixel, or a patch grid [h, w] (stretched over the image).
        patch_size: sum per-pixel attributions over ViT patches before showing them.
    """
    img = _display_image(image, mean, std)
    att = _np(attributions)
    if att.ndim == 3:
        att = att.sum(0)
    if patch_size is not None and att.shape[:2] == img.shape[:2]:
        att = _np(patch_sum(torch.as_tensor(att)[None], patch_size)[0])
    h, w = img.shape[:2]
    vmax = float(np.abs(att).max()) or 1.0
    fig = Figure(figsize=(9, 4.4), layout="constrained")
    ax_i, ax_a = fig.subplots(1, 2)
    ax_i.imshow(img, extent=(0, w, h, 0))
    ax_i.set_title("input")
    ax_a.imshow(img, extent=(0, w, h, 0))
    ax_a.imshow(img.mean(-1), cmap="gray", extent=(0, w, h, 0), alpha=0.5)
    im = ax_a.imshow(att, cmap=DIVERGING, vmin=-vmax, vmax=vmax, alpha=alpha, extent=(0, w, h, 0),
                     interpolation="nearest")
    ax_a.set_title(title or label)
    for ax in (ax_i, ax_a):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=ax_a, shrink=0.85, label=label)
    return fig


def attribution_panels_figure(image: Any, attributions: Any, *, patch_size: int | tuple[int, int] | None = None,
                              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                              unit: str = "target units", dpi: int = 90) -> Figure:
    """The studio's compact heatmap: per-pixel attribution over the greyed image (top) and, for a ViT, the
    per-patch sums (below), each with a labelled colour bar; one column, so it stays legible on a phone.

    The pixel scale is symmetric and clipped at the 99th percentile of ``|attribution|`` (so a few extreme
    pixels do not wash the map out); the patch scale is not clipped. Shapes as in
    :func:`attribution_overlay_figure`; ``unit`` names the target's unit (e.g. ``"nats"``).
    """
    img = _display_image(image, mean, std)
    att = _np(attributions)
    if att.ndim == 3:
        att = att.sum(0)
    h, w = img.shape[:2]
    maps = [("pixel", att, float(np.quantile(np.abs(att), 0.99)) or float(np.abs(att).max()) or 1.0)]
    if patch_size is not None:
        grid = _np(patch_sum(torch.as_tensor(att)[None], patch_size)[0])
        maps.append(("patch", grid, float(np.abs(grid).max()) or 1.0))
    # A fixed layout (inches, no layout engine: it would double the time to render the PNG): panels of
    # 2.9 in from the top, each a 2.45 in square image box at its foot with the title above it and a colour
    # bar at its right (room for its labels), and 0.3 in below the last.
    width, height = 3.6, 0.3 + 2.9 * len(maps)
    fig = Figure(figsize=(width, height), dpi=dpi)
    for i, (per, values, vmax) in enumerate(maps):
        bottom = height - 2.9 * (i + 1)
        ax = fig.add_axes((0.08 / width, bottom / height, 2.45 / width, 2.45 / height))
        cax = fig.add_axes((2.63 / width, (bottom + 0.1) / height, 0.12 / width, 2.25 / height))
        ax.imshow(img.mean(-1), cmap="gray", extent=(0, w, h, 0), vmin=0, vmax=1)
        im = ax.imshow(values, cmap=DIVERGING, vmin=-vmax, vmax=vmax, alpha=0.8, extent=(0, w, h, 0),
                       interpolation="nearest")
        ax.set_title(f"per {per}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = fig.colorbar(im, cax=cax, format="{x:.2g}")  # no offset text above the bar, over the image
        bar.set_label(f"{unit} / {per}", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return fig


def crop_box(size: tuple[int, int], transform: Any) -> tuple[float, float, float, float]:
    """The box ``(left, top, right, bottom)``, in pixels of an image of ``size = (W, H)``, that the model's
    preprocessing turns into its input.

    Understands torchvision's ``Resize`` (an int: the shorter side, or ``(h, w)``) followed by ``CenterCrop``
    (open_clip's evaluation transform); anything else is taken to use the whole image.
    """
    w, h = float(size[0]), float(size[1])
    scale_w = scale_h = 1.0  # input pixels per image pixel
    box = (0.0, 0.0, w, h)
    for t in getattr(transform, "transforms", []):
        name, target = type(t).__name__, getattr(t, "size", None)
        if name == "Resize" and target is not None:
            if isinstance(target, int) or len(target) == 1:
                side = target if isinstance(target, int) else target[0]
                scale_w = scale_h = side / min(w, h)
            else:
                scale_h, scale_w = target[0] / h, target[1] / w
        elif name == "CenterCrop" and target is not None:
            ch, cw = (target, target) if isinstance(target, int) else (target[0], target[-1])
            bw, bh = cw / scale_w, ch / scale_h
            box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
    return box


def attribution_overlay_image(image: Any, attributions: Any, *, patch_size: int | tuple[int, int] | None = None,
                              transform: Any = None, alpha: float = 0.7) -> Any:
    """The attribution heatmap blended into the image at the image's own resolution (a PIL RGB image).

    Args:
        image: the PIL image as uploaded (before preprocessing).
        attributions: [3, h, w] or [h, w] per input pixel of the model (after preprocessing).
        patch_size: sum over the tower's patches first (a smoother map); None: per pixel.
        transform: the model's preprocessing (:func:`crop_box` places the map over the part the model saw;
            the rest of the image is dimmed).
        alpha: opacity of the strongest colour; each pixel's opacity grows with ``|attribution|`` on a scale
            symmetric about 0 (red raises the quantity, blue lowers it).
    """
    from PIL import Image

    rgb = image.convert("RGB")
    att = _np(attributions)
    if att.ndim == 3:
        att = att.sum(0)
    if patch_size is not None:
        att = _np(patch_sum(torch.as_tensor(att)[None], patch_size)[0])
    vmax = float(np.quantile(np.abs(att), 0.99)) or float(np.abs(att).max()) or 1.0
    left, top, right, bottom = crop_box(rgb.size, transform)
    box = (round(left), round(top), round(right), round(bottom))
    size = (max(1, box[2] - box[0]), max(1, box[3] - box[1]))
    grid = Image.fromarray(np.clip(att / vmax, -1.0, 1.0).astype(np.float32))  # mode "F"
    heat = np.asarray(grid.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    colours = matplotlib.colormaps[DIVERGING](0.5 + 0.5 * heat)[..., :3]
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    out = base * 0.45  # outside the model's crop: dimmed
    x0, y0 = max(0, box[0]), max(0, box[1])
    x1, y1 = min(rgb.size[0], box[2]), min(rgb.size[1], box[3])
    part = base[y0:y1, x0:x1]
    a = (alpha * np.abs(heat))[y0 - box[1]:y1 - box[1], x0 - box[0]:x1 - box[0], None]
    out[y0:y1, x0:x1] = (1 - a) * part + a * colours[y0 - box[1]:y1 - box[1], x0 - box[0]:x1 - box[0]]
    return Image.fromarray(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))


# -- token strip -------------------------------------------------------------------------------------------
def token_scores_figure(result: TokenAttributionResult | None = None, *, tokens: Sequence[str] | None = None,
                        scores: Any = None, special: Sequence[bool] | None = None,
                        title: str | None = None) -> Figure:
    """The prompt's tokens in a row, each coloured by its score (diverging, centred at 0).

    Special tokens (start/end) are drawn in grey italics. Pass a :class:`TokenAttributionResult` or
    ``tokens``/``scores`` (and optionally ``special``).
    """
    if result is not None:
        tokens, scores, special = result.tokens, result.scores, result.special
        title = title or f"{result.target} of {_short(result.prompt, 60)!r} by token"
    if tokens is None or scores is None:
        raise ValueError("pass a TokenAttributionResult or tokens and scores")
    vals = _np(scores)
    if len(tokens) != len(vals):
        raise ValueError(f"{len(tokens)} tokens but {len(vals)} scores")
    special = list(special) if special is not None else [False] * len(tokens)
    vmax = float(np.abs(vals).max()) or 1.0
    norm, cmap = Normalize(-vmax, vmax), matplotlib.colormaps[DIVERGING]
    widths = np.array([max(2, len(t)) + 1.5 for t in tokens], dtype=float)
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    total = float(widths.sum())
    fig = Figure(figsize=(min(16.0, 1.5 + 0.14 * total), 2.2), layout="constrained")
    ax = fig.subplots()
    for tok, x0, wd, v, sp in zip(tokens, starts, widths, vals, special, strict=True):
        color = "#eeeeee" if sp else cmap(norm(v))
        ax.add_patch(Rectangle((x0 + 0.1, 0.15), wd - 0.2, 0.7, facecolor=color, edgecolor="#999999",
                               linewidth=0.5))
        ax.text(x0 + wd / 2, 0.5, tok, ha="center", va="center", fontsize=10,
                style="italic" if sp else "normal", color="#777777" if sp else "black")
        ax.text(x0 + wd / 2, -0.05, f"{v:+.2g}", ha="center", va="top", fontsize=8, color="#444444")
    ax.set_xlim(0, total)
    ax.set_ylim(-0.35, 1.0)
    ax.axis("off")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, orientation="vertical", shrink=0.8, label="score")
    ax.set_title(title or "token attribution")
    return fig


# -- prompt comparison -------------------------------------------------------------------------------------
def prompt_comparison_figure(pred: Prediction, image_index: int = 0, *,
                             decomposition: UncertaintyDecomposition | None = None, top_k: int | None = 20,
                             title: str | None = None) -> Figure:
    """Each prompt as a point: logit mean (x) against logit std (y), sized by probit probability.

    Colour: the prompt's uncertainty-driving score from ``decomposition`` (its ``rank_by``), else the image
    part's share of the prompt's variance. Shows at a glance which prompts are likely *and* uncertain.
    """
    mean, std = _np(pred.mean[image_index]), _np(pred.std[image_index])
    prob = _np(pred.predictive("probit")[image_index])
    if decomposition is not None:
        color, clabel = _np(decomposition.prompt_scores[image_index]), f"score ({decomposition.rank_by})"
        vmax = float(np.abs(color).max()) or 1.0
        norm, cmap = Normalize(-vmax, vmax), matplotlib.colormaps[DIVERGING]
    else:
        color, clabel = _np(pred.var_image[image_index] / pred.var[image_index]), "image share of variance"
        norm, cmap = Normalize(0, 1), matplotlib.colormaps["viridis"]
    idx = _order(prob, top_k, True)
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    sc = ax.scatter(mean[idx], std[idx], s=40 + 600 * prob[idx], c=color[idx], cmap=cmap, norm=norm,
                    edgecolors="black", linewidths=0.5, alpha=0.85)
    for i in idx:
        ax.annotate(_short(pred.prompts[i], 28), (mean[i], std[i]), xytext=(6, 4), textcoords="offset points",
                    fontsize=8)
    ax.set_xlabel("logit mean")
    ax.set_ylabel("logit std")
    ax.margins(0.15)
    fig.colorbar(sc, ax=ax, label=clabel)
    ax.set_title(title or f"image {image_index}: prompts compared (size = probit probability)")
    return fig


__all__ = [
    "attribution_overlay_figure",
    "attribution_overlay_image",
    "attribution_panels_figure",
    "class_uncertainty_figure",
    "crop_box",
    "decomposition_figure",
    "prompt_comparison_figure",
    "token_scores_figure",
]
