"""``BayesVLM``: a post-hoc Laplace head over any supported open_clip model (the library's entry point)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import Features, ModelAdapter
from .encoding import ALGEBRA_DTYPE, Encoder
from .head import HEAD_DTYPE, HeadDtype, MomentHead, map_logits
from .inputs import check_prompts
from .loading import load_open_clip
from .options import Link, MargLikMode, Objective, check_option
from .posterior import META_FILE, REFERENCE_JSON, Posterior, PosteriorError
from .predictive import Prediction, PredictiveMethod, class_link
from .pretrained.assets import ModelAssets, rescaled_assets
from .pretrained.registry import BUNDLED

__all__ = ["ALGEBRA_DTYPE", "BayesVLM", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class BayesVLM:
    """A CLIP-style model whose (image, prompt) logits carry a mean and a variance.

    Args:
        model: a built open_clip model (``CLIP``, ``CustomTextCLIP``) whose towers a registered family
            supports (:func:`~bayesvlm_explain.adapters.adapter_for`: ViT, ResNet or SigLIP image towers).
        tokenizer: the matching open_clip tokenizer.
        preprocess: the eval image transform (PIL image -> [3, H, W] tensor).
        posterior: a :class:`Posterior` (or a path to one); may be set later via ``vlm.posterior``.
        device: where the encoders run (default: CUDA if available, else CPU). On CUDA the encoders run
            under float16 autocast; the posterior factors are inverted in float64 on the CPU, and the head
            runs in float32 where that is within 1e-5 of float64, else float64 (``dtype=`` forces one,
            :meth:`predict`).
        batch_size: images/prompts per encoder call.
        prompt_cache_size: how many prompt encodings to keep (LRU).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        preprocess: Any,
        posterior: Posterior | str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        name: str | None = None,
        batch_size: int = 64,
        prompt_cache_size: int = 4096,
    ) -> None:
        self.device = resolve_device(device)
        self.encoder = Encoder(model.to(self.device).eval(), tokenizer, preprocess, self.device,
                               batch_size=batch_size, prompt_cache_size=prompt_cache_size)
        self.name = name or self.adapter.architecture
        self._posterior: Posterior | None = None
        self.assets = ModelAssets()
        """Label set, template, yardstick, examples (:class:`ModelAssets`; empty unless ``from_pretrained``)."""
        if posterior is not None:
            self.posterior = posterior

    @property
    def model(self) -> nn.Module:
        return self.encoder.model

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def preprocess(self) -> Any:
        return self.encoder.preprocess

    @property
    def adapter(self) -> ModelAdapter:
        return self.encoder.adapter

    @property
    def batch_size(self) -> int:
        return self.encoder.batch_size

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name: str = BUNDLED,
        pretrained: str | None = None,
        posterior: Posterior | str | Path | bool | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> BayesVLM:
        """Build from an open_clip name (``"ViT-B-32"`` + ``pretrained="laion2b_s34b_b79k"``), an
        ``"hf-hub:…"`` id, a ``"local-dir:…"`` checkpoint, or the offline model shipped with the package
        (:data:`~.pretrained.registry.BUNDLED`, the default). With ``posterior=None`` a model the registry
        knows gets its shipped posterior (:meth:`Posterior.from_pretrained`); ``posterior=False``: none.
        ``vlm.assets`` (:class:`~.pretrained.assets.ModelAssets`) holds the registry's label set, template
        and examples, and the ``yardstick.json`` found beside the posterior.
        Code shipped with a model is never run unless ``trust_remote_code=True``
        (see :mod:`~bayesvlm_explain.loading`)."""
        from .pretrained.assets import load_assets
        from .pretrained.registry import asset_spec

        dev = resolve_device(device)
        auto = posterior is None or posterior is True
        chosen: Posterior | str | Path | None = None if isinstance(posterior, bool) else posterior
        if model_name == BUNDLED:
            from .bundled import load_bundled

            model, tokenizer, preprocess = load_bundled(device=dev)
            name = BUNDLED
        else:
            model, tokenizer, preprocess = load_open_clip(model_name, pretrained, dev, trust_remote_code)
            name = model_name + (f"/{pretrained}" if pretrained else "")
        spec = asset_spec(model_name, pretrained)
        shipped = spec.posterior_dir() if spec is not None and spec.posterior_dir is not None else None
        if auto and shipped is not None and (shipped / META_FILE).is_file():
            chosen = shipped
        vlm = cls(model, tokenizer, preprocess, chosen, device=dev, name=name, **kwargs)
        folder = chosen if isinstance(chosen, str | Path) else (shipped if auto else None)
        vlm.assets = load_assets(vlm, model_name, pretrained, folder)
        return vlm

    # -- posterior -------------------------------------------------------------------------------
    @property
    def posterior(self) -> Posterior | None:
        return self._posterior

    @posterior.setter
    def posterior(self, value: Posterior | str | Path | None) -> None:
        if value is None:
            self._posterior = None
            return
        if isinstance(value, str | Path):
            path = Path(value)
            dims = {side: self.projection_dims(side) for side in ("image", "text")}  # checked from headers
            value = (Posterior.from_reference_dir(path, dims=dims) if (path / REFERENCE_JSON).is_file()
                     else Posterior.load(path, dims=dims))
        if not isinstance(value, Posterior):
            raise TypeError(f"posterior must be a Posterior or a path, not {type(value).__name__}")
        value.check_compatible(self.projection_dims("image"), self.projection_dims("text"), self.name)
        made_for = value.metadata.get("model")
        if made_for and made_for != self.name:
            warnings.warn(f"posterior was fitted for {made_for!r}, used with {self.name!r}", stacklevel=2)
        self._posterior = value

    def projection_dims(self, side: str) -> tuple[int, int]:
        """``(p, D)`` of the image or text projection, ``p`` counting a bias column."""
        proj = self.adapter.image if side == "image" else self.adapter.text
        return proj.dim_in, proj.dim_out

    def require_posterior(self) -> Posterior:
        """The posterior, or a :class:`PosteriorError` saying how to get one."""
        if self._posterior is None:
            raise PosteriorError(
                "this BayesVLM has no posterior: pass posterior=... (Posterior.load(dir) or "
                "Posterior.from_reference_dir(dir)) or fit one with vlm.fit(pairs)"
            )
        return self._posterior

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, pairs: Any, num_candidates: int = 32768, batch_size: int = 64, **kwargs: Any) -> Any:
        """Fit the posterior on image-text ``pairs`` (see :func:`~bayesvlm_explain.fitting.fit_posterior`).

        Sets ``vlm.posterior`` (factors ``A``/``B`` per side, ``λ`` by marginal likelihood unless
        ``prior_precision`` is given) and returns the :class:`~bayesvlm_explain.fitting.FitReport`.
        """
        from .fitting import fit_posterior

        posterior, report = fit_posterior(self, pairs, num_candidates=num_candidates, batch_size=batch_size,
                                          **kwargs)
        self.posterior = posterior
        return report

    def optimize_prior_precision(self, mode: MargLikMode = "exact",
                                 pseudo_count: float | None = None) -> dict[str, float]:
        """Set each side's prior precision ``λ`` by marginal likelihood (correct log-det; ``mode="reference"``
        for the authors' objective), optionally for a new pseudo-count ``n``; returns ``{side: λ}``."""
        from .fitting import optimize_posterior_prior

        post = self.require_posterior()
        curves = optimize_posterior_prior(self, post, mode=mode, pseudo_count=pseudo_count)
        post.metadata.update(marglik=mode, marglik_curves=curves)
        return {"image": post.image.prior_precision, "text": post.text.prior_precision}

    def with_pseudo_count(self, pseudo_count: float, mode: MargLikMode = "exact") -> BayesVLM:
        """A view of this model at another posterior scale: same encoders and caches, a copy of the
        posterior with pseudo-count ``n = pseudo_count`` and ``λ`` re-optimised by marginal likelihood.
        This model is unchanged; the view's yardstick is dropped (with a note) unless made for that posterior."""
        view = copy.copy(self)
        view._posterior = self.require_posterior().copy()
        view.optimize_prior_precision(mode, pseudo_count=float(pseudo_count))
        view.assets = rescaled_assets(view, self.assets)
        return view

    def calibrate_posterior(self, labeled_data: Any, objective: Objective = "nll", **kwargs: Any) -> Any:
        """Choose the pseudo-count ``n`` (``λ`` by marginal likelihood for each) on held-out labelled data
        ``(images, labels, prompts)``; see :func:`bayesvlm_explain.evaluation.calibrate.calibrate_posterior`."""
        from .evaluation.calibrate import calibrate_posterior

        return calibrate_posterior(self, labeled_data, objective, **kwargs)

    # -- encoders --------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.encoder.image_size

    @property
    def context_length(self) -> int:
        return self.encoder.context_length

    def preprocess_images(self, images: Any) -> torch.Tensor:
        """PIL images / paths / bytes / a tensor -> a validated batch [N, 3, H, W] in the tower's dtype (CPU)."""
        return self.encoder.preprocess_images(images)

    def tokenize(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Token ids [C, context]; prompts longer than the context are truncated with a warning."""
        return self.encoder.tokenize(prompts)

    def encode_images(self, images: Any) -> Features:
        """Activations [N, p] and mean embeddings [N, D] of the images (float64, CPU)."""
        return self.encoder.encode_images(images)

    def encode_prompts(self, prompts: str | Sequence[str]) -> Features:
        """Activations [C, p_t] and mean embeddings [C, D] of the prompts (float64, CPU; cached)."""
        return self.encoder.encode_prompts(prompts)

    def head(self, variance: str = "projected", device: torch.device | str = "cpu",
             dtype: HeadDtype = HEAD_DTYPE) -> MomentHead:
        """The posterior algebra (features -> logit moments) used by :meth:`predict` and the explanations
        (:class:`MomentHead`): ``"auto"`` (float32 where safe, results in float64) by default,
        ``dtype=torch.float64`` or ``torch.float32`` to force one."""
        return MomentHead(self.require_posterior(), self.adapter, variance=variance, device=device, dtype=dtype)

    # -- prediction ------------------------------------------------------------------------------
    def map_logits(self, img: Features, txt: Features) -> torch.Tensor:
        """Deterministic logits ``τ cos(μ_n, μ_c) + b`` [N, C]."""
        return map_logits(self.adapter, img, txt)

    def predict_features(
        self, img: Features, txt: Features, prompts: list[str], *,
        predictive: PredictiveMethod = "probit", num_samples: int = 1000, variance: str = "projected",
        link: Link | None = None, seed: int | None = 0, dtype: HeadDtype = HEAD_DTYPE,
    ) -> Prediction:
        """:meth:`predict` on already-encoded features (float64, CPU)."""
        check_option("predictive", predictive)
        link = class_link(self.adapter.likelihood) if link is None else link
        check_option("link", link)
        head = self.head(variance, dtype=dtype)
        return Prediction(head(img, txt), head.map_logits(img, txt), list(prompts), method=predictive,
                          num_samples=num_samples, link=link, seed=seed)

    def predict(
        self, images: Any, prompts: str | Sequence[str], *,
        predictive: PredictiveMethod = "probit", num_samples: int = 1000, variance: str = "projected",
        link: Link | None = None, seed: int | None = 0, dtype: HeadDtype = HEAD_DTYPE,
    ) -> Prediction:
        """Probabilistic logits and predictive probabilities of ``images`` against ``prompts``.

        Args:
            images: PIL images (or paths/bytes), or a preprocessed [N, 3, H, W] tensor.
            prompts: C strings (the classes).
            predictive: ``"probit"`` (default), ``"mc"`` (full class covariance, ``num_samples``
                draws) or ``"map"`` (deterministic); ``pred.probs`` follows it, and
                ``pred.predictive(method)`` gives the others.
            variance: ``"projected"`` (default: closest to the true cosine), ``"expected_norm"`` (the
                paper's normalisation; ``"exact"`` is its former name) or ``"diagonal"`` (the reference's
                diagonal ``B̃⁻¹``); see :mod:`bayesvlm_explain.probcos`.
            link: how logits become probabilities: ``None`` (default) the model's own class link (a
                softmax over prompts for CLIP, the sigmoids renormalised over prompts for SigLIP),
                ``"softmax"``, ``"normalized_sigmoid"``, or ``"sigmoid"`` per pair.
            dtype: the head's precision: ``"auto"`` (:data:`~bayesvlm_explain.head.HEAD_DTYPE`) by default
                computes the moments in float32 (within 1e-5 relative of float64) unless an image and a prompt
                embedding are nearly parallel (:data:`~bayesvlm_explain.head.AUTO_COSINE_LIMIT`), then in
                float64; its prediction's tensors (and Monte Carlo draws) are float64. ``torch.float64`` or
                ``torch.float32`` forces one, and the prediction's tensors then come in it (docs/numerics.md).
        Returns:
            a :class:`Prediction` with ``mean``, ``var``, ``cov`` and the three variance parts.
        """
        prompts = check_prompts(prompts)
        self.require_posterior()
        return self.predict_features(self.encode_images(images), self.encode_prompts(prompts), prompts,
                                     predictive=predictive, num_samples=num_samples, variance=variance,
                                     link=link, seed=seed, dtype=dtype)

    def sample_logits(
        self, images: Any, prompts: str | Sequence[str], num_samples: int = 256,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Exact logits ``τ cos(W_img f̃, W_txt g̃) + b`` under projections drawn from the posterior.

        Draws both projection matrices from their matrix-normal posteriors (method.md §3.5) and
        returns the logits [S, N, C]; a reference for the analytic moments.
        """
        prompts = check_prompts(prompts)
        return self.sample_logits_features(self.encode_images(images), self.encode_prompts(prompts),
                                           num_samples, generator)

    def sample_logits_features(
        self, img: Features, txt: Features, num_samples: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`sample_logits` on already-encoded features."""
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        post = self.require_posterior()
        u_draws = post.image.sample_outputs(self.adapter.image.augment(img.activations), img.embeddings,
                                            num_samples, generator)
        v_draws = post.text.sample_outputs(self.adapter.text.augment(txt.activations), txt.embeddings,
                                           num_samples, generator)
        cos = (torch.nn.functional.normalize(u_draws, dim=-1)
               @ torch.nn.functional.normalize(v_draws, dim=-1).transpose(1, 2))
        return self.adapter.logit_scale * cos + self.adapter.logit_bias

    def __repr__(self) -> str:
        return f"BayesVLM({self.name}, device={self.device}, posterior={self._posterior!r})"

