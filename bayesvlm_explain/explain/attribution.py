"""Pixel attributions of the model's *uncertainty* (not only its similarity), with captum.

The attributed quantity is a differentiable function of the preprocessed image batch ``x`` [B, 3, H, W]:
the image tower runs with autograd (gradients w.r.t. the pixels only; the model is never edited, so
predictions in other threads are unaffected), the prompts' features are fixed, and the logit
moments come from the posterior algebra of :mod:`.targets` (float64, the formulas of
:meth:`BayesVLM.predict_features`). Entropy targets use a fixed set of Gaussian draws (common random
numbers, the same draws as ``Prediction.predictive("mc")``), so they are deterministic and smooth in ``x``.

Example::

    ua = UncertaintyAttribution(vlm, target="epistemic")
    res = ua.attribute(images, prompts, method="integrated_gradients", n_steps=32)
    res.attributions      # [N, 3, H, W], same units as the target (nats here)
    res.delta             # IG completeness gap per image
    res.patches()         # [N, H/P, W/P] summed over each patch of the image tower's grid
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..adapters import Features, adapter_for
from ..inputs import check_prompts
from ..options import CHOICES, ENTROPY_TARGETS, MOMENT_TARGETS, Link, PixelMethod, check_option
from ..predictive import class_link
from .targets import CustomTarget, check_grad_mode, evaluate_target, standard_draws

if TYPE_CHECKING:
    from ..model import BayesVLM

PixelTarget = Literal["image_variance", "text_variance", "variance", "mean", "entropy", "aleatoric", "epistemic"]
PIXEL_METHODS: tuple[str, ...] = CHOICES["method"]


def model_patch_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """Pixels per cell ``(ph, pw)`` of the model's image-tower grid (ViT patch, ResNet output stride), or None."""
    return adapter_for(model).patch_size


def patch_sum(attributions: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Sum attributions over channels and non-overlapping ``ph × pw`` patches.

    Args:
        attributions: [N, 3, H, W] (or [N, H, W], already summed over channels).
        patch_size: ``P`` or ``(ph, pw)``; H and W must be multiples.
    Returns:
        [N, H/ph, W/pw]; its total equals the total of ``attributions``.
    """
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    a = attributions.sum(1) if attributions.ndim == 4 else attributions
    if a.ndim != 3:
        raise ValueError(f"attributions must be [N, 3, H, W] or [N, H, W], got {tuple(attributions.shape)}")
    n, h, w = a.shape
    if h % ph or w % pw:
        raise ValueError(f"image {h}x{w} is not a whole number of {ph}x{pw} patches")
    return a.reshape(n, h // ph, ph, w // pw, pw).sum(dim=(2, 4))


@dataclass
class AttributionResult:
    """Pixel attributions of one target for N images.

    attributions: [N, 3, H, W] (float32, CPU), in the target's units per input element (e.g. nats for
        entropy targets, squared logits for variances); for IG they sum to ``target(x) − target(baseline)``.
    target_values: [N] the target at the input (float64).
    delta: [N] IG completeness gap ``Σ attributions − (target(x) − target(baseline))``; None otherwise.
    baseline_values: [N] the target at the baseline (IG only).
    """

    attributions: torch.Tensor
    target_values: torch.Tensor
    delta: torch.Tensor | None
    baseline_values: torch.Tensor | None
    target: str
    method: str
    prompts: list[str]
    prompt_index: int | None
    patch_size: tuple[int, int] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def heatmap(self) -> torch.Tensor:
        """Channel-summed attribution map [N, H, W]."""
        return self.attributions.sum(1)

    def patches(self, patch_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Attributions summed over each ``patch_size`` patch (default: the tower's grid cell) -> [N, h, w]."""
        size = patch_size or self.patch_size
        if size is None:
            raise ValueError("the model has no known patch size; pass patch_size")
        return patch_sum(self.attributions, size)


def model_state(model: torch.nn.Module) -> tuple[Hashable, ...]:
    """A cheap key that changes whenever a parameter or buffer of ``model`` is edited, replaced or reloaded:
    identity, storage pointer and in-place version counter of each tensor (no data is read)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))


class BaselineCache:
    """Image-tower features of constant baseline images (integrated gradients' default grey image), kept per
    model state, so that ``target(baseline)`` for IG's completeness gap costs no pass of the image tower once
    a baseline of that size and value has been encoded.

    Owned by its caller (the studio's Explain page keeps one; pass it to :class:`UncertaintyAttribution`);
    nothing is cached globally. The key holds :func:`model_state`, so edited or reloaded weights are never
    served stale features; the posterior and prompts are not part of the features, so the target is always
    computed afresh from them. Thread-safe; keeps the ``size`` most recent entries.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Hashable, ...], Features] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def features(self, model: torch.nn.Module, baseline: torch.Tensor,
                 encode: Callable[[torch.Tensor], Features]) -> Features:
        """``encode(baseline)`` [1, ...] for one constant baseline image [1, C, H, W], cached."""
        key = (model_state(model), tuple(baseline.shape), baseline.dtype, str(baseline.device),
               float(baseline.flatten()[0]))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        feats = encode(baseline)
        with self._lock:
            self._entries[key] = feats
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return feats


class UncertaintyAttribution:
    """Attribute an uncertainty target of a :class:`BayesVLM` to input pixels.

    Args:
        vlm: a ``BayesVLM`` with a posterior.
        target: ``"image_variance"`` (logit variance from the image projection's posterior, prompt
            ``prompt_index``), ``"text_variance"``, ``"variance"`` (total), ``"mean"`` (the logit, for
            contrast), ``"entropy"`` (total predictive entropy over all prompts), ``"aleatoric"``
            (expected entropy), ``"epistemic"`` (mutual information, BALD); or a callable
            ``CosineMoments -> [B]``.
        predictive: ``"mc"`` (default) or ``"probit"`` (only for ``"entropy"``).
        num_samples: Gaussian logit draws of the MC predictive (common random numbers).
        seed: seed of those draws.
        link: ``None`` (default): the model's own class link (softmax for CLIP, renormalised sigmoids for
            SigLIP); or ``"softmax"``, ``"normalized_sigmoid"``, ``"sigmoid"`` per prompt.
        variance: ``"projected"``, ``"expected_norm"`` or ``"diagonal"`` moments, as in ``BayesVLM.predict``.
        internal_batch_size: images per forward/backward pass in the attribution methods
            (default ``vlm.batch_size``).
        baseline_cache: a :class:`BaselineCache` the caller keeps across calls (the image-tower features of
            IG's constant baselines); default a fresh one per instance.
    """

    def __init__(
        self,
        vlm: BayesVLM,
        target: PixelTarget | CustomTarget = "image_variance",
        *,
        predictive: Literal["mc", "probit"] = "mc",
        num_samples: int = 1000,
        seed: int | None = 0,
        link: Link | None = None,
        variance: str = "projected",
        internal_batch_size: int | None = None,
        baseline_cache: BaselineCache | None = None,
    ) -> None:
        if not callable(target):
            check_option("target", target)
        check_option("predictive", predictive, ("mc", "probit"))
        link = class_link(vlm.adapter.likelihood) if link is None else link
        check_option("link", link)
        check_option("variance", variance)
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        self.vlm = vlm
        self.target = target
        self.predictive = predictive
        self.num_samples = num_samples
        self.seed = seed
        self.link = link
        self.variance = variance
        self.internal_batch_size = internal_batch_size or vlm.batch_size
        self.baseline_cache = BaselineCache() if baseline_cache is None else baseline_cache

    @property
    def target_name(self) -> str:
        return self.target if isinstance(self.target, str) else getattr(self.target, "__name__", "custom")

    def _uses_prompt_index(self) -> bool:
        return isinstance(self.target, str) and self.target in MOMENT_TARGETS

    # -- the target as a function of pixels ----------------------------------------------------------
    def target_function(self, prompts: str | Sequence[str], prompt_index: int = 0) -> Callable[[torch.Tensor],
                                                                                                 torch.Tensor]:
        """The target as a differentiable map: preprocessed images [B, 3, H, W] -> values [B] (float64).

        Rows are independent (row b depends only on image b), as the captum methods require.
        """
        return _through_tower(self.vlm, self.feature_target(prompts, prompt_index))

    def feature_target(self, prompts: str | Sequence[str], prompt_index: int = 0) -> Callable[[Features],
                                                                                               torch.Tensor]:
        """The target as a map of image-tower features (:class:`Features` of B images) -> values [B]
        (float64): :meth:`target_function` after the tower."""
        prompts = check_prompts(prompts)
        if self._uses_prompt_index() and not 0 <= prompt_index < len(prompts):
            raise IndexError(f"prompt_index {prompt_index} out of range for {len(prompts)} prompts")
        vlm = self.vlm
        head = vlm.head(self.variance, vlm.device)
        txt_mean, txt_act = head.text_inputs(vlm.encode_prompts(prompts))
        noise = None
        if isinstance(self.target, str) and self.target in ENTROPY_TARGETS and self.predictive == "mc":
            noise = standard_draws(head, txt_mean, txt_act, self.num_samples, self.seed)
        target, k = self.target, prompt_index if self._uses_prompt_index() else None

        def of_features(feats: Features) -> torch.Tensor:
            img_mean, img_scale = head.image_inputs(feats)
            m = head.moments(img_mean, img_scale, txt_mean, txt_act)
            out = evaluate_target(target, m, k, noise=noise, predictive=self.predictive, link=self.link)
            rows = feats.embeddings.shape[0]
            if out.shape != (rows,):
                raise ValueError(f"target returned shape {tuple(out.shape)}; expected [{rows}]")
            if torch.is_grad_enabled() and not out.requires_grad:  # image-independent: exact zero gradient
                out = out + 0.0 * img_mean.sum(-1)
            return out

        return of_features

    # -- attribution ---------------------------------------------------------------------------------
    def attribute(
        self,
        images: Any,
        prompts: str | Sequence[str],
        prompt_index: int = 0,
        method: PixelMethod = "integrated_gradients",
        n_steps: int = 32,
        baselines: torch.Tensor | float | None = None,
        *,
        internal_batch_size: int | None = None,
        nt_samples: int = 8,
        stdevs: float | None = None,
        noise_seed: int = 0,
        sliding_window: int | tuple[int, int] | None = None,
        strides: int | tuple[int, int] | None = None,
        abs: bool = False,
        features: Features | None = None,
    ) -> AttributionResult:
        """Attribute the target of each image to its preprocessed pixels.

        Args:
            images: PIL images / paths / bytes, or a preprocessed [N, 3, H, W] tensor.
            prompts: the C prompts (classes); the prompt features are held fixed.
            prompt_index: the prompt ``k`` of the moment targets (ignored by entropy targets).
            method: ``"integrated_gradients"`` (Gauss-Legendre, ``n_steps`` points, batched),
                ``"saliency"`` (the gradient), ``"smoothgrad"`` (NoiseTunnel over Saliency, ``nt_samples``
                noisy copies with noise std ``stdevs``, default 15% of the batch's value range) or
                ``"occlusion"`` (patches of ``sliding_window`` pixels, default the tower's grid cell, moved by
                ``strides``, default the window, replaced by the baseline).
            n_steps: IG integration points.
            baselines: IG/occlusion reference in preprocessed space: None (zeros, i.e. the normalisation
                mean colour), a float, or a tensor [N or 1, 3, H, W].
            abs: absolute gradients for saliency/smoothgrad (default: signed).
            features: the images' encoding (``vlm.encode_images`` of the same images) when the caller has it:
                the target at the input is then computed from it, without another pass of the image tower.
                Used on the CPU only, where the encoder runs the tower in float32 as the attribution does
                (on CUDA it runs under float16 autocast, whose rounding would enter ``delta``).
        Returns:
            an :class:`AttributionResult` with ``attributions`` [N, 3, H, W].
        """
        check_option("method", method)
        if n_steps < 1:
            raise ValueError("n_steps must be at least 1")
        check_grad_mode()
        prompts = check_prompts(prompts)
        vlm = self.vlm
        x = vlm.preprocess_images(images).to(vlm.device).clone()
        if features is not None and features.embeddings.shape[0] != x.shape[0]:
            raise ValueError(f"features of {features.embeddings.shape[0]} images given for {x.shape[0]} images")
        ibs = internal_batch_size or self.internal_batch_size
        patch = vlm.adapter.patch_size
        of_features = self.feature_target(prompts, prompt_index)
        with torch.enable_grad():
            run = _Run(_through_tower(vlm, of_features), x, self._baselines(baselines, x), ibs,
                       max(1, ibs // x.shape[0]), of_features,
                       features if vlm.device.type == "cpu" else None,
                       self.baseline_cache if baselines is None or isinstance(baselines, int | float) else None,
                       vlm)
            if method == "integrated_gradients":
                attr, target_values, extra = _integrated_gradients(run, n_steps)
            elif method == "saliency":
                attr, target_values, extra = _saliency(run, abs)
            elif method == "smoothgrad":
                attr, target_values, extra = _smoothgrad(run, nt_samples, stdevs, noise_seed, abs)
            else:
                window = _pair(sliding_window) if sliding_window is not None else (patch or (16, 16))
                attr, target_values, extra = _occlusion(run, window, _pair(strides) if strides is not None else window)
        delta, baseline_values = extra.pop("delta", None), extra.pop("baseline_values", None)
        return AttributionResult(
            attributions=attr.detach().to("cpu", torch.float32),
            target_values=target_values.detach().cpu(),
            delta=None if delta is None else delta.detach().cpu(),
            baseline_values=None if baseline_values is None else baseline_values.detach().cpu(),
            target=self.target_name,
            method=method,
            prompts=prompts,
            prompt_index=prompt_index if self._uses_prompt_index() else None,
            patch_size=patch,
            settings=extra,
        )

    def target_values(self, images: Any, prompts: str | Sequence[str], prompt_index: int = 0) -> torch.Tensor:
        """The target [N] (float64, CPU) at the given images, without attribution."""
        check_grad_mode()
        vlm = self.vlm
        x = vlm.preprocess_images(images).to(vlm.device)
        with torch.no_grad():
            return _batched(self.target_function(prompts, prompt_index), x, self.internal_batch_size).cpu()

    @staticmethod
    def _baselines(baselines: torch.Tensor | float | None, x: torch.Tensor) -> torch.Tensor:
        if baselines is None:
            return torch.zeros_like(x)
        if isinstance(baselines, int | float):
            return torch.full_like(x, float(baselines))
        b = baselines.to(x.device, x.dtype).clone()
        if b.ndim == 3:
            b = b[None]
        if b.shape[1:] != x.shape[1:] or b.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"baselines of shape {tuple(baselines.shape)} do not match inputs {tuple(x.shape)}")
        return b.expand_as(x).contiguous()


def _through_tower(vlm: BayesVLM, of_features: Callable[[Features], torch.Tensor]) -> Callable[[torch.Tensor],
                                                                                               torch.Tensor]:
    """``of_features`` after the image tower: preprocessed images [B, 3, H, W] -> values [B]."""
    image_proj = vlm.adapter.image

    def forward(x: torch.Tensor) -> torch.Tensor:
        return of_features(image_proj.features(x))

    return forward


@dataclass
class _Run:
    """One attribution call: the target map (of pixels and of features), inputs [N, 3, H, W], baselines,
    batch sizes, and where the end values come from (the caller's encoding, the baseline cache)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    base: torch.Tensor
    batch: int  # images per target evaluation
    per_eval: int  # perturbed copies per evaluation (SmoothGrad, occlusion)
    of_features: Callable[[Features], torch.Tensor]
    features: Features | None  # the inputs' encoding, if the caller has it (CPU)
    cache: BaselineCache | None  # for a constant baseline
    vlm: BayesVLM

    def values(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _batched(self.forward, inputs, self.batch)

    def input_values(self) -> torch.Tensor:
        """The target [N] at the inputs: from the caller's encoding if given, else one pass of the tower."""
        if self.features is None:
            return self.values(self.x)
        with torch.no_grad():
            return self.of_features(self.features)

    def baseline_values(self) -> torch.Tensor:
        """The target [N] at the baselines; a constant baseline is encoded once (per model state) in the cache."""
        if self.cache is None:
            return self.values(self.base)
        tower = self.vlm.adapter.image

        def encode(b: torch.Tensor) -> Features:
            with torch.no_grad():
                return tower.features(b)

        feats = self.cache.features(self.vlm.model, self.base[:1], encode)
        with torch.no_grad():
            return self.of_features(feats).expand(self.x.shape[0]).clone()


def _batched(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int) -> torch.Tensor:
    """``forward`` over chunks of ``size`` rows of ``x``, concatenated."""
    return torch.cat([forward(chunk) for chunk in x.split(max(1, size))])


Computed = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]  # attributions, target values, settings/extras


def _integrated_gradients(run: _Run, n_steps: int) -> Computed:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(run.forward, multiply_by_inputs=True)
    attr = ig.attribute(run.x, baselines=run.base, n_steps=n_steps, method="gausslegendre",
                        internal_batch_size=max(run.batch, run.x.shape[0]))
    values, base_values = run.input_values(), run.baseline_values()  # no pass of the tower where cached/given
    delta = attr.to(values.dtype).sum(dim=(1, 2, 3)) - (values - base_values)
    return attr, values, {"n_steps": n_steps, "delta": delta, "baseline_values": base_values}


def _saliency(run: _Run, abs: bool) -> Computed:
    from captum.attr import Saliency

    captured: list[torch.Tensor] = []

    def recording(inp: torch.Tensor) -> torch.Tensor:
        out = run.forward(inp)
        captured.append(out.detach())
        return out

    attr = Saliency(recording).attribute(run.x.requires_grad_(), abs=abs)
    return attr, captured[-1], {}


def _smoothgrad(run: _Run, nt_samples: int, stdevs: float | None, noise_seed: int, abs: bool) -> Computed:
    from captum.attr import NoiseTunnel, Saliency

    x = run.x
    std = stdevs if stdevs is not None else 0.15 * float(x.max() - x.min())
    with torch.random.fork_rng(devices=_rng_devices(x.device)):
        torch.manual_seed(noise_seed)
        attr = NoiseTunnel(Saliency(run.forward)).attribute(
            x.requires_grad_(), nt_type="smoothgrad", nt_samples=nt_samples, nt_samples_batch_size=run.per_eval,
            stdevs=std, abs=abs)
    return attr, run.input_values(), {"nt_samples": nt_samples, "stdevs": std, "noise_seed": noise_seed}


def _occlusion(run: _Run, window: tuple[int, int], stride: tuple[int, int]) -> Computed:
    from captum.attr import Occlusion

    with torch.no_grad():
        attr = Occlusion(run.forward).attribute(
            run.x, sliding_window_shapes=(run.x.shape[1], *window), strides=(run.x.shape[1], *stride),
            baselines=run.base, perturbations_per_eval=run.per_eval)
    return attr, run.input_values(), {"sliding_window": window, "strides": stride}


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []
