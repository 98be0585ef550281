"""The reliability diagram of an evaluation (matplotlib's object API, no ``pyplot``: nothing to close)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .metrics import expected_calibration_error


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Top-label calibration in ``n_bins`` equal-width confidence bins ``[lo, hi)`` on [0, 1] (for drawing).

    Args:
        probs: [N, C] predictive probabilities; labels: [N] true class indices.
    Returns:
        ``edges`` [B+1], ``confidence``/``accuracy`` [B] (NaN for empty bins), ``count`` [B] and ``ece``
        (the L1 expected calibration error, by :func:`.metrics.expected_calibration_error`).
    """
    p = (probs.detach().to("cpu", torch.float64).numpy() if isinstance(probs, torch.Tensor)
         else np.asarray(probs, dtype=np.float64))
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(int)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be [N, C] and labels [N]; got {p.shape} and {y.shape}")
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=hit, minlength=n_bins) / count
        mconf = np.bincount(which, weights=conf, minlength=n_bins) / count
    ece = expected_calibration_error(torch.from_numpy(p), torch.from_numpy(y), n_bins) if len(y) else 0.0
    return {"edges": edges, "confidence": mconf, "accuracy": acc, "count": count, "ece": ece}


def reliability_diagram(probs: Any | Mapping[str, Any], labels: Any, *, n_bins: int = 15,
                        title: str | None = None) -> Figure:
    """Accuracy vs confidence per equal-width bin (top) and the confidence histogram (bottom).

    ``probs`` is one [N, C] array or a mapping ``name -> [N, C]`` (e.g. probit vs MAP) drawn together; each
    legend entry reports the model's ECE. Drawn at 4.2 x 4.8 inches with 10-11 pt text, so that its text
    stays at least 10 px high when shown down to ~340 px wide (a phone).
    """
    sets = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    fig = Figure(figsize=(4.2, 4.8), layout="constrained")
    ax, ax_h = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="perfect calibration")
    width = 1.0 / n_bins / max(1, len(sets))
    for j, (name, pr) in enumerate(sets.items()):
        b = reliability_bins(pr, labels, n_bins)
        centers = 0.5 * (b["edges"][1:] + b["edges"][:-1])
        filled = b["count"] > 0
        line = ax.plot(b["confidence"][filled], b["accuracy"][filled], marker="o",
                       label=f"{name} (ECE {b['ece']:.3f})")[0]
        offset = (j - (len(sets) - 1) / 2) * width
        ax_h.bar(centers + offset, b["count"], width=width, color=line.get_color(), alpha=0.7)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.03, 1.05)  # markers at accuracy 0 or 1 stay whole
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=10)
    ax.set_title(title or f"reliability ({n_bins} equal-width bins, top label)", fontsize=11)
    for a in (ax, ax_h):
        a.tick_params(labelsize=10)
    ax_h.set_xlabel("confidence (top-label probability)")
    ax_h.set_ylabel("count")
    return fig
