"""Every string option of the public API, defined once and validated where it enters.

Each option is a ``str`` :class:`~enum.Enum` (``class X(str, Enum)``, Python 3.10 compatible) with a docstring
per member; a member *is* its string (``PredictiveKind.PROBIT == "probit"``), so functions take either.
:data:`OPTIONS` maps an option's parameter name to its enum and :func:`check_option` validates a value.
The ``Literal`` aliases (``Predictive``, ``Link``, ...) spell the same values for type checkers
(``tests/test_options.py`` checks that both agree).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal


class _Option(str, Enum):  # noqa: UP042 (enum.StrEnum is Python 3.11+)
    """A string option: a member compares and hashes as its value (``PredictiveKind.MC == "mc"``, also as a
    dictionary key, ``str`` coming first in the bases); ``str(member)`` is the value."""

    def __str__(self) -> str:
        return str(self.value)


class PredictiveKind(_Option):
    """How class probabilities are formed from the Gaussian logits (method.md §4)."""

    PROBIT = "probit"
    """MacKay's probit approximation ``softmax_c(m_c / sqrt(1 + π/8 · v_c))`` (default; no sampling)."""
    MC = "mc"
    """The average softmax over Monte Carlo logit draws with the full class covariance (recommended)."""
    MAP = "map"
    """The deterministic model, ``softmax(τ·cos_MAP + b)``: no posterior."""


class LinkKind(_Option):
    """How logits over the prompts of one image become probabilities in :class:`~bayesvlm_explain.Prediction`."""

    SOFTMAX = "softmax"
    """A softmax over the prompts: zero-shot classification."""
    SIGMOID = "sigmoid"
    """An independent sigmoid per image-prompt pair: is this prompt a match?"""
    NORMALIZED_SIGMOID = "normalized_sigmoid"
    """The per-pair sigmoids renormalised over the prompts: a sigmoid (SigLIP) model's class probabilities."""


class VarianceKind(_Option):
    """How the variance of a cosine is approximated (:mod:`bayesvlm_explain.probcos`)."""

    PROJECTED = "projected"
    """Variance of the cosine projected onto the tangent of both unit spheres (default; closest to sampling)."""
    EXPECTED_NORM = "expected_norm"
    """The paper's normalisation by the expected norms of the image and text embeddings."""
    EXACT = "exact"
    """The former name of ``expected_norm`` (kept as an alias)."""
    DIAGONAL = "diagonal"
    """The reference implementation's diagonal ``B̃⁻¹`` (for comparison only)."""


class MargLikKind(_Option):
    """How the marginal likelihood chooses the prior precision ``λ`` (method.md §2.5)."""

    EXACT = "exact"
    """The exact log-determinant of the Kronecker posterior from the factors' eigenvalues (default)."""
    REFERENCE = "reference"
    """The reference implementation's formula, kept to reproduce its ``λ``."""


class LikelihoodKind(_Option):
    """The contrastive likelihood of a model, which fixes its Hessian and its class probabilities."""

    INFONCE = "infonce"
    """CLIP's InfoNCE: a softmax over the candidates; class probabilities are the softmax of the logits."""
    SIGMOID = "sigmoid"
    """SigLIP's pairwise sigmoid; class probabilities are the per-class sigmoids renormalised over the classes."""


class TargetKind(_Option):
    """What an explanation attributes: a logit moment or a part of the predictive entropy (method.md §5)."""

    MEAN = "mean"
    """The logit mean ``τ·cos`` of the image with the chosen prompt."""
    IMAGE_VARIANCE = "image_variance"
    """The part of the logit variance from the image projection."""
    TEXT_VARIANCE = "text_variance"
    """The part of the logit variance from the text projection."""
    VARIANCE = "variance"
    """The whole logit variance (image, text and interaction parts)."""
    ENTROPY = "entropy"
    """The entropy of the predictive (total uncertainty, nats)."""
    ALEATORIC = "aleatoric"
    """The expected entropy under posterior draws (data uncertainty, nats)."""
    EPISTEMIC = "epistemic"
    """Entropy minus aleatoric: the mutual information between label and weights (nats)."""


class PixelMethodKind(_Option):
    """The captum attribution method of a pixel explanation."""

    INTEGRATED_GRADIENTS = "integrated_gradients"
    """Integrated gradients from a black baseline (complete: attributions sum to the change)."""
    SALIENCY = "saliency"
    """The absolute gradient (fast, noisy)."""
    SMOOTHGRAD = "smoothgrad"
    """The gradient averaged over noisy copies of the image."""
    OCCLUSION = "occlusion"
    """The change when patches are greyed out (no gradient)."""


class ObjectiveKind(_Option):
    """What :func:`~bayesvlm_explain.evaluation.calibrate_posterior` minimises over the pseudo-count grid."""

    NLL = "nll"
    """The mean negative log predictive probability of the true class (nats)."""
    ECE = "ece"
    """The expected calibration error (equal-width bins)."""


class StrategyKind(_Option):
    """How active learning picks the next labels from the pool (method.md §6)."""

    RANDOM = "random"
    """Uniformly at random (the baseline)."""
    MAP_ENTROPY = "map_entropy"
    """The highest entropy of the MAP (deterministic) softmax: the paper's "Entropy" baseline."""
    ENTROPY = "entropy"
    """The highest posterior predictive entropy (Monte Carlo over posterior draws)."""
    BALD = "bald"
    """The highest mutual information between label and weights."""
    EPIG = "epig"
    """The highest expected information gained about the labels of the target inputs."""
    TARGETED_MAP_ENTROPY = "targeted_map_entropy"
    """The paper's "Entropy (targeted)": the target inputs with the highest MAP entropy, each mapped to its
    nearest unlabelled pool input."""


class RankByKind(_Option):
    """How :func:`~bayesvlm_explain.explain.decompose_uncertainty` ranks the prompts."""

    EPISTEMIC_DROP = "epistemic_drop"
    """How much epistemic uncertainty leaves when the prompt is removed (default)."""
    ENTROPY_DROP = "entropy_drop"
    """How much total entropy leaves when the prompt is removed."""
    VARIANCE = "variance"
    """The prompt's logit variance."""


OPTIONS: dict[str, type[_Option]] = {
    "predictive": PredictiveKind,
    "link": LinkKind,
    "variance": VarianceKind,
    "mode": MargLikKind,
    "likelihood": LikelihoodKind,
    "target": TargetKind,
    "method": PixelMethodKind,
    "objective": ObjectiveKind,
    "strategy": StrategyKind,
    "rank_by": RankByKind,
}
"""Parameter name -> the enum of its values."""

CHOICES: dict[str, tuple[str, ...]] = {name: tuple(m.value for m in kind) for name, kind in OPTIONS.items()}
"""Parameter name -> its allowed strings, in declaration order."""
MOMENT_TARGETS: tuple[str, ...] = tuple(t.value for t in TargetKind)[:4]
ENTROPY_TARGETS: tuple[str, ...] = tuple(t.value for t in TargetKind)[4:]

Predictive = Literal["probit", "mc", "map"]
Link = Literal["softmax", "sigmoid", "normalized_sigmoid"]
Variance = Literal["projected", "expected_norm", "exact", "diagonal"]
MargLikMode = Literal["exact", "reference"]
Likelihood = Literal["infonce", "sigmoid"]
MomentTarget = Literal["mean", "image_variance", "text_variance", "variance"]
EntropyTarget = Literal["entropy", "aleatoric", "epistemic"]
PixelMethod = Literal["integrated_gradients", "saliency", "smoothgrad", "occlusion"]
Objective = Literal["nll", "ece"]
Strategy = Literal["random", "map_entropy", "entropy", "bald", "epig", "targeted_map_entropy"]
RankBy = Literal["epistemic_drop", "entropy_drop", "variance"]


def check_option(name: str, value: object, choices: tuple[str, ...] | None = None) -> str:
    """Return ``value`` as a plain string if it is one of the choices of option ``name`` (a string or an
    enum member); else a ``ValueError`` naming them."""
    allowed = CHOICES[name] if choices is None else choices
    text = value.value if isinstance(value, _Option) else value
    if not isinstance(text, str) or text not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return text


def variance_mode(variance: str) -> str:
    """The canonical name of a variance mode (``"exact"`` -> ``"expected_norm"``)."""
    return "expected_norm" if variance == "exact" else variance
