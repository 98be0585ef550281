"""Every string option of the public API, defined once and validated where it enters."""

from __future__ import annotations

from typing import Literal

Predictive = Literal["probit", "mc", "map"]
Link = Literal["softmax", "sigmoid"]
Variance = Literal["projected", "expected_norm", "exact", "diagonal"]
MargLikMode = Literal["exact", "reference"]
MomentTarget = Literal["mean", "image_variance", "text_variance", "variance"]
EntropyTarget = Literal["entropy", "aleatoric", "epistemic"]
PixelMethod = Literal["integrated_gradients", "saliency", "smoothgrad", "occlusion"]

CHOICES: dict[str, tuple[str, ...]] = {
    "predictive": ("probit", "mc", "map"),
    "link": ("softmax", "sigmoid"),
    # "exact" is the former name of "expected_norm" (kept as an alias)
    "variance": ("projected", "expected_norm", "exact", "diagonal"),
    "mode": ("exact", "reference"),
    "target": ("mean", "image_variance", "text_variance", "variance", "entropy", "aleatoric", "epistemic"),
    "method": ("integrated_gradients", "saliency", "smoothgrad", "occlusion"),
}
MOMENT_TARGETS: tuple[str, ...] = ("mean", "image_variance", "text_variance", "variance")
ENTROPY_TARGETS: tuple[str, ...] = ("entropy", "aleatoric", "epistemic")


def check_option(name: str, value: object, choices: tuple[str, ...] | None = None) -> str:
    """Return ``value`` if it is one of the choices of option ``name``; else a ``ValueError`` naming them."""
    allowed = CHOICES[name] if choices is None else choices
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return value


def variance_mode(variance: str) -> str:
    """The canonical name of a variance mode (``"exact"`` -> ``"expected_norm"``)."""
    return "expected_norm" if variance == "exact" else variance
