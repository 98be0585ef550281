"""Posterior scale: choose the pseudo-count ``n`` (and with it ``λ``) on held-out labelled data.

The pseudo-count scales both Kronecker factors (``Ã = √n A + √λ I``, ``B̃ = √n B + √λ I``, method.md
§2.4) and moves the logit standard deviations by orders of magnitude, far more than any detail of the
predictive. :func:`calibrate_posterior` scans a grid of ``n`` (default 0.001…1000); for each it
re-optimises ``λ`` by the marginal likelihood (:meth:`BayesVLM.optimize_prior_precision`, method.md
§2.5), scores the chosen predictive on the labelled data (NLL or ECE) and leaves the posterior at the best ``(n, λ)``.

``labeled_data`` is ``(images, labels, prompts)`` (a tuple, or a mapping with those keys):

* ``images``: anything :meth:`BayesVLM.encode_images` takes (PIL images, paths, a preprocessed
  ``[N, 3, H, W]`` tensor) or already-encoded image :class:`~bayesvlm_explain.adapters.Features`;
* ``labels``: ``N`` class indices (a sequence of ints or an integer tensor) into ``prompts``;
* ``prompts``: the ``C >= 2`` class prompts (strings), e.g. ``["a photo of a cat.", ...]``.

The data must be held out from what the posterior was fitted on, and should come from the domain the
model is meant for: never choose ``n`` on the shifted data you want to be robust to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..adapters import Features
from ..options import Objective, Predictive, check_option
from .metrics import calibration_metrics

if TYPE_CHECKING:
    from ..model import BayesVLM

__all__ = [
    "PSEUDO_COUNTS",
    "CalibrationDataError",
    "LabeledFeatures",
    "PosteriorCalibration",
    "calibrate_posterior",
    "prepare_labeled_data",
]

PSEUDO_COUNTS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
"""Default grid of pseudo-counts (logit std from broad to nearly deterministic on the bundled model)."""


class CalibrationDataError(ValueError):
    """Labelled data that cannot be used for calibration (the message names the field and the cause)."""


@dataclass(frozen=True)
class LabeledFeatures:
    """Validated labelled data: image features (N rows), class prompts (C) and their features, labels [N]."""

    images: Features
    prompts: list[str]
    prompt_features: Features
    labels: torch.Tensor


@dataclass
class PosteriorCalibration:
    """Result of :func:`calibrate_posterior`.

    ``curve`` has one entry per grid value: ``pseudo_count``, ``lambda_image``, ``lambda_text`` and the
    predictive's ``accuracy``, ``ece``, ``nlpd`` (nats) and ``brier`` on the labelled data.
    ``at_grid_edge``: the choice is the smallest or largest grid value (widen the grid to be sure).
    """

    pseudo_count: float
    prior_precision: dict[str, float]
    objective: str
    predictive: str
    curve: list[dict[str, float]] = field(default_factory=list)
    at_grid_edge: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"pseudo_count": self.pseudo_count, "prior_precision": dict(self.prior_precision),
                "objective": self.objective, "predictive": self.predictive, "curve": list(self.curve),
                "at_grid_edge": self.at_grid_edge}


def _labels(labels: Any, num_classes: int) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise CalibrationDataError(f"labels must be integer class indices, got a {labels.dtype} tensor")
        out = labels.long().reshape(-1) if labels.ndim <= 1 else None
        if out is None:
            raise CalibrationDataError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    else:
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise CalibrationDataError(f"labels must be a sequence of class indices, got {type(labels).__name__}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise CalibrationDataError("labels must be integer class indices (not floats, strings or booleans)")
        out = torch.tensor(list(labels), dtype=torch.long)
    if out.numel() == 0:
        raise CalibrationDataError("labels: no labelled examples")
    if int(out.min()) < 0 or int(out.max()) >= num_classes:
        raise CalibrationDataError(f"labels must lie in [0, {num_classes}) (one per prompt), "
                                   f"got {int(out.min())}..{int(out.max())}")
    return out


def prepare_labeled_data(vlm: BayesVLM, labeled_data: Any) -> LabeledFeatures:
    """Validate ``(images, labels, prompts)`` (tuple or mapping) and encode what is not encoded yet."""
    if isinstance(labeled_data, LabeledFeatures):
        return labeled_data
    if isinstance(labeled_data, Mapping):
        missing = {"images", "labels", "prompts"} - set(labeled_data)
        if missing:
            raise CalibrationDataError(f"labeled_data lacks {sorted(missing)} (needs images, labels, prompts)")
        images, labels, prompts = labeled_data["images"], labeled_data["labels"], labeled_data["prompts"]
    elif isinstance(labeled_data, tuple) and len(labeled_data) == 3:
        images, labels, prompts = labeled_data
    else:
        raise CalibrationDataError("labeled_data must be (images, labels, prompts) or a mapping with those keys")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise CalibrationDataError("prompts must be a list of class prompt strings")
    if len(prompts) < 2:
        raise CalibrationDataError(f"prompts: need at least 2 classes, got {len(prompts)}")
    y = _labels(labels, len(prompts))
    img = images if isinstance(images, Features) else vlm.encode_images(images)
    if img.embeddings.shape[0] != y.shape[0]:
        raise CalibrationDataError(f"images and labels differ in length: {img.embeddings.shape[0]} vs {y.shape[0]}")
    return LabeledFeatures(img, list(prompts), vlm.encode_prompts(list(prompts)), y)


def calibrate_posterior(vlm: BayesVLM, labeled_data: Any, objective: Objective = "nll", *,
                        predictive: Predictive = "mc", pseudo_counts: Sequence[float] = PSEUDO_COUNTS,
                        num_samples: int = 1000, variance: str = "projected", n_bins: int = 20,
                        seed: int = 0) -> PosteriorCalibration:
    """Choose the pseudo-count ``n`` (``λ`` by marginal likelihood for each) minimising ``objective``.

    Args:
        vlm: a :class:`~bayesvlm_explain.BayesVLM` with a posterior (changed in place to the chosen ``n``, ``λ``).
        labeled_data: ``(images, labels, prompts)``, see the module docstring.
        objective: ``"nll"`` (mean negative log predictive probability) or ``"ece"`` (``n_bins`` bins).
        predictive: ``"mc"`` (recommended), ``"probit"`` or ``"map"`` (then ``n`` does not matter).
        pseudo_counts: the grid searched; ties go to the earliest value.
        num_samples: Monte Carlo draws per ``n``.
        seed: their seed, so every ``n`` sees the same standard normals.
    Returns:
        a :class:`PosteriorCalibration`; the choice is also recorded in ``vlm.posterior.metadata["calibration"]``.
    """
    chosen = check_option("objective", objective)
    grid = [float(n) for n in pseudo_counts]
    if not grid or not all(math.isfinite(n) and n > 0 for n in grid):
        raise ValueError(f"pseudo_counts must be positive finite numbers, got {list(pseudo_counts)}")
    data = prepare_labeled_data(vlm, labeled_data)
    key = "nlpd" if chosen == "nll" else "ece"
    curve = []
    for n in grid:
        lam = vlm.optimize_prior_precision(pseudo_count=n)
        pred = vlm.predict_features(data.images, data.prompt_features, data.prompts, predictive=predictive,
                                    num_samples=num_samples, variance=variance, seed=seed)
        m = calibration_metrics(pred.probs, data.labels, n_bins)
        curve.append({"pseudo_count": n, "lambda_image": lam["image"], "lambda_text": lam["text"],
                      **{k: m[k] for k in ("accuracy", "ece", "nlpd", "brier")}})
    best = min(range(len(grid)), key=lambda i: curve[i][key])
    lam = vlm.optimize_prior_precision(pseudo_count=grid[best])
    edge = len(grid) > 1 and grid[best] in (min(grid), max(grid))
    result = PosteriorCalibration(grid[best], lam, chosen, predictive, curve, edge)
    vlm.require_posterior().metadata["calibration"] = {"pseudo_count": grid[best], "objective": chosen,
                                             "predictive": predictive, "variance": variance,
                                             "num_examples": int(data.labels.shape[0])}
    return result
