"""The one place where tower features and a posterior become logit moments (method.md §3).

``predict`` and every explanation target go through :class:`MomentHead`, so an attribution target
evaluated at the input equals the number ``predict`` reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F

from .adapters import Features, ModelAdapter
from .options import check_option
from .posterior import Posterior
from .probcos import CosineMoments, PromptTerms, cosine_moments, image_moments, prompt_terms

FLOAT32_ERROR = 1e-5
"""Bound on the relative error of the float32 head's logit variances, means and probit probabilities against
float64 (the measured worst case is about 1e-6: tests/test_head.py, docs/numerics.md)."""
AUTO_COSINE_LIMIT = 0.9
"""Above this largest ``|cos(μ_n, μ_c)|`` of a call the ``"auto"`` head computes in float64. The float32
projected variance loses about ``1e-6 / (1 − cos²)`` relative (its projection cancels for nearly parallel
embeddings): measured 3.9e-6 at cosine 0.9 and 4.9e-5 at 0.99 (tests/test_head.py), so 1e-5 is passed near
cosine 0.95; 0.9 leaves a factor 2.5. CLIP's image-prompt cosines are about 0.2–0.4."""
HeadDtype = torch.dtype | Literal["auto"]
"""``torch.float32``, ``torch.float64``, or ``"auto"`` (float32 arithmetic, redone in float64 for a projected-mode
call whose embeddings come closer than :data:`AUTO_COSINE_LIMIT`; results in float64 either way)."""
HEAD_DTYPE: HeadDtype = "auto"
"""The head's default precision (docs/numerics.md): float32 where it stays within :data:`FLOAT32_ERROR` of
float64, float64 above :data:`AUTO_COSINE_LIMIT`; ``dtype=torch.float64`` or ``torch.float32`` forces one."""

_T = TypeVar("_T")


def _cast(obj: _T, dtype: torch.dtype, known: dict[int, torch.Tensor] | None = None) -> _T:
    """A copy of a dataclass of tensors (e.g. :class:`CosineMoments`) with every floating tensor in ``dtype``;
    a tensor whose ``id`` is in ``known`` is replaced by that value instead (no copy)."""
    known = {} if known is None else known
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            changes[f.name] = known[id(value)] if id(value) in known else value.to(dtype)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = _cast(value, dtype, known)
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def near_parallel(mom: CosineMoments, inv_norm: torch.Tensor | None = None) -> bool:
    """True when projected-mode moments [N, C] pair an image and a prompt whose embeddings have
    ``|cos(μ_n, μ_c)|`` above :data:`AUTO_COSINE_LIMIT`: ``cos = ûᵀm̂_c / ||m̂_c||`` from the moments' own
    terms (O(N C); ``inv_norm`` [C] = ``1 / ||m̂_c||`` if already known, else O(C D) more). The other variance
    modes have no projection to cancel: always False."""
    if mom.projection is None:
        return False
    with torch.no_grad():
        inv = 1 / mom.txt_mean_scaled.norm(dim=-1) if inv_norm is None else inv_norm
        return bool(((mom.projection.alpha * inv).abs() > AUTO_COSINE_LIMIT).any())


class MomentHead:
    """The posterior algebra between tower features and logit moments, for one posterior and variance mode.

    Holds ``B̃_img⁻¹``, ``Ã_txt⁻¹`` and ``B̃_txt⁻¹`` (in each arithmetic dtype it may use, on ``device``). All
    maps are differentiable.

    Args:
        posterior: the two projections' posterior.
        adapter: the model's adapter (bias columns, logit scale and bias).
        variance: ``"projected"``, ``"expected_norm"`` (``"exact"``) or ``"diagonal"``.
        device: where the algebra runs.
        dtype: the algebra's precision: :data:`HEAD_DTYPE` (``"auto"``) by default: float32 arithmetic,
            redone in float64 for a call whose embeddings are nearly parallel (:func:`near_parallel`; projected
            mode only), results in float64
            (:attr:`dtype`). ``torch.float32`` or ``torch.float64`` forces one (results in it). The covariance
            factors are always inverted in float64 and then rounded; float32 then costs at most
            :data:`FLOAT32_ERROR` relative error in the logit moments where image and prompt embeddings are
            not nearly parallel (measured, tests/test_head.py, docs/numerics.md).

    Attributes:
        dtype: the dtype of everything the head returns (float64 for ``"auto"``).
        requested_dtype: the ``dtype`` argument.
        last_dtype: the arithmetic dtype of the latest moments call (``None`` before the first).
    """

    def __init__(self, posterior: Posterior, adapter: ModelAdapter, *, variance: str = "projected",
                 device: torch.device | str = "cpu", dtype: HeadDtype = HEAD_DTYPE) -> None:
        if not (dtype == "auto" or dtype in (torch.float32, torch.float64)):
            raise ValueError(f"dtype must be 'auto', torch.float32 or torch.float64, got {dtype}")
        self.variance = check_option("variance", variance)
        self.posterior = posterior
        self.adapter = adapter
        self.device = torch.device(device)
        self.requested_dtype: HeadDtype = dtype
        self.dtype: torch.dtype = torch.float64 if dtype == "auto" else dtype  # type: ignore[assignment]
        self.last_dtype: torch.dtype | None = None
        self._factors: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for dt in ((torch.float32, torch.float64) if dtype == "auto" else (self.dtype,)):
            _, b_inv_img = posterior.image.covariance_factors(self.device, dt)
            a_inv_txt, b_inv_txt = posterior.text.covariance_factors(self.device, dt)
            self._factors[dt] = (b_inv_img, b_inv_txt, a_inv_txt)
        self.b_inv_img, self.b_inv_txt, self.a_inv_txt = self._factors[self.dtype]
        # the latest float64 prompt terms, their float32 copy, its tensors' float64 originals by id, 1 / ||m̂_c||
        self._terms32: tuple[PromptTerms, PromptTerms, dict[int, torch.Tensor], torch.Tensor] | None = None
        self.logit_scale = adapter.logit_scale
        self.logit_bias = adapter.logit_bias

    def image_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_n [N, D], s_n [N])`` in the head's dtype from image-tower features."""
        act = self.adapter.image.augment(feats.activations.to(self.device, self.dtype))
        return feats.embeddings.to(self.device, self.dtype), self.posterior.image.input_scales(act)

    def text_inputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_c [C, D], g̃_c [C, p_t])`` in the head's dtype from text-tower features."""
        return (feats.embeddings.to(self.device, self.dtype),
                self.adapter.text.augment(feats.activations.to(self.device, self.dtype)))

    def _run(self, compute: Callable[[torch.dtype], CosineMoments], known: dict[int, torch.Tensor] | None = None,
             inv_norm: torch.Tensor | None = None) -> CosineMoments:
        """``compute(dtype)`` in the forced dtype, or (``"auto"``) in float32, again in float64 when
        :func:`near_parallel`; the result in :attr:`dtype` (float32 tensors found in ``known`` by id are
        replaced by their float64 originals), the arithmetic used in :attr:`last_dtype`; ``inv_norm``: as in
        :func:`near_parallel`."""
        if self.requested_dtype != "auto":
            self.last_dtype = self.dtype
            return compute(self.dtype)
        mom = compute(torch.float32)
        self.last_dtype = torch.float64 if near_parallel(mom, inv_norm) else torch.float32
        return compute(torch.float64) if self.last_dtype == torch.float64 else _cast(mom, torch.float64, known)

    def moments(self, img_mean: torch.Tensor, img_scale: torch.Tensor, txt_mean: torch.Tensor,
                txt_act: torch.Tensor) -> CosineMoments:
        """:func:`cosine_moments` of N images [N, D] against C prompts [C, D] with this posterior (in
        :attr:`dtype`)."""
        return self._run(lambda dt: cosine_moments(
            img_mean.to(dt), img_scale.to(dt), txt_mean.to(dt), txt_act.to(dt), *self._factors[dt],
            self.logit_scale, self.logit_bias, variance=self.variance))

    def prompt_terms(self, txt: Features) -> PromptTerms:
        """The prompt side of the moments for C prompts' features (compute once per label set)."""
        return prompt_terms(*self.text_inputs(txt), self.b_inv_img, self.b_inv_txt, self.a_inv_txt,
                            variance=self.variance)

    def image_moments(self, img: Features, terms: PromptTerms) -> CosineMoments:
        """Moments of N images' features against prompts already reduced by :meth:`prompt_terms` (in
        :attr:`dtype`; the ``"auto"`` head rounds the float64 terms to float32 once per label set)."""
        img_mean, img_scale = self.image_inputs(img)
        if terms.txt_mean.dtype != self.dtype:
            raise ValueError(f"prompt terms in {terms.txt_mean.dtype}, this head's are {self.dtype}")
        terms32, known, inv_norm = terms, None, None
        if self.requested_dtype == "auto":
            if self._terms32 is None or self._terms32[0] is not terms:
                copy = _cast(terms, torch.float32)
                originals = {id(getattr(copy, f.name)): getattr(terms, f.name) for f in dataclasses.fields(terms)
                             if isinstance(getattr(terms, f.name), torch.Tensor)}
                self._terms32 = (terms, copy, originals, 1 / copy.m_hat.norm(dim=-1))
            _, terms32, known, inv_norm = self._terms32

        def compute(dt: torch.dtype) -> CosineMoments:
            return image_moments(img_mean.to(dt), img_scale.to(dt), terms32 if dt == torch.float32 else terms,
                                 self.logit_scale, self.logit_bias)

        return self._run(compute, known, inv_norm)

    def __call__(self, img: Features, txt: Features) -> CosineMoments:
        """Moments of N images' features against C prompts' features."""
        return self.moments(*self.image_inputs(img), *self.text_inputs(txt))

    def map_logits(self, img: Features, txt: Features) -> torch.Tensor:
        """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C] in the head's dtype."""
        return map_logits(self.adapter, img, txt).to(self.dtype)


def map_logits(adapter: ModelAdapter, img: Features, txt: Features) -> torch.Tensor:
    """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C] of the mean embeddings (the plain model)."""
    cos = F.normalize(img.embeddings, dim=-1) @ F.normalize(txt.embeddings, dim=-1).T
    return adapter.logit_scale * cos + adapter.logit_bias
