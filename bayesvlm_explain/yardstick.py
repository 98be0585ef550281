"""A yardstick for one image's uncertainty: where it falls among the model's own in-domain images.

A logit std of 0.4 or an epistemic part of 0.03 nats means nothing on its own. The yardstick stores, for a
fitted posterior, the quantiles of three per-image figures over reference images the model knows (its
in-domain data), and places a new image's figures as percentiles of them:

* ``epistemic``: the mutual information between the prediction and the projection weights (BALD, nats),
  over the yardstick's own label set, Monte Carlo with the full class covariance (method.md §4);
* ``input_scale``: the image-side input scale ``f̃ᵀÃ⁻¹f̃`` (dimensionless; method.md §3.2), which does not
  depend on any prompt;
* ``entropy``: the total predictive entropy over the yardstick's label set (nats).

Entropy and BALD depend on the candidate prompts, so they are always measured against the label set stored
with the yardstick, never against whatever prompts a user typed. An image is flagged out of domain when the
figure chosen on a shift benchmark (:func:`choose_out_of_domain_rule`) reaches the chosen percentile.

The yardstick is stored as ``yardstick.json`` beside ``posterior.json`` (:meth:`Yardstick.save`) and loaded
into ``vlm.assets`` by ``BayesVLM.from_pretrained``. ``bayesvlm-explain yardstick`` builds one for any model
and posterior from labelled in-domain images (:func:`build_from_data`); the bundled model's shipped one was
built with :func:`build_yardstick` on the shift benchmark's in-domain calibration split, its rule chosen by
:func:`choose_out_of_domain_rule` on the held-out in-domain split and every shift style (build tools).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .adapters import Features

if TYPE_CHECKING:
    from .model import BayesVLM

FIGURES = ("epistemic", "input_scale", "entropy")
"""The per-image figures a yardstick places, in the order shown."""
FILE_NAME = "yardstick.json"
LEVELS = np.linspace(0.0, 100.0, 101)  # the stored quantile levels, in percent
FORMAT_VERSION = 1


class YardstickError(ValueError):
    """A yardstick file that cannot be used (missing, malformed, or made for another posterior)."""


@dataclass
class OutOfDomainRule:
    """Flag an image when ``figure``'s percentile is at least ``percentile``.

    ``flag_rates`` maps a split name (``in_domain`` and each shift style) to the fraction flagged there.
    """

    figure: str
    percentile: float
    flag_rates: dict[str, float] = field(default_factory=dict)


@dataclass
class Yardstick:
    """Reference quantiles of the per-image figures (:data:`FIGURES`) for one model and posterior.

    Attributes:
        prompts: the label set entropy and BALD are measured against.
        quantiles: figure -> 101 values, the 0th..100th percentiles over the reference images.
        num_samples / seed: the Monte Carlo draws used for entropy and BALD.
        variance: the logit-variance mode of the predictions (``BayesVLM.predict``'s ``variance``).
        posterior: what the figures depend on (``model``, ``prior_precision`` per side, ``pseudo_count``);
            :meth:`check` refuses another posterior.
        reference: a description of the reference images (source and count).
        rule: the out-of-domain rule, when one was chosen.
    """

    prompts: list[str]
    quantiles: dict[str, list[float]]
    num_samples: int
    seed: int
    posterior: dict[str, Any]
    reference: str
    variance: str = "projected"
    rule: OutOfDomainRule | None = None

    # -- measuring --------------------------------------------------------------------------------------
    def measure(self, vlm: BayesVLM, images: Any | Features) -> dict[str, torch.Tensor]:
        """The figures [N] of images (anything ``vlm.encode_images`` takes, or their :class:`Features`)."""
        return measure_figures(vlm, images, self.prompts, self.num_samples, self.seed, self.variance)

    def percentiles(self, figures: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Each figure's percentile (0..100) among the reference images; monotone in the figure."""
        return {name: percentile_of(self.quantiles[name], figures[name]) for name in FIGURES if name in figures}

    def out_of_domain(self, percentiles: Mapping[str, Any]) -> np.ndarray:
        """Boolean [N]: the rule's figure at or above its percentile (all False without a rule)."""
        if self.rule is None:
            return np.zeros(np.shape(percentiles[FIGURES[0]]), dtype=bool)
        return np.asarray(_rule_score(percentiles, self.rule.figure)) >= self.rule.percentile

    def verdict(self, percentiles: Mapping[str, float]) -> str:
        """One plain sentence about one image (its percentiles as floats)."""
        unusual = float(max(percentiles["epistemic"], percentiles["input_scale"]))
        shown = ">99" if unusual >= 99.5 else f"{unusual:.0f}"
        flagged = bool(self.out_of_domain({k: np.asarray(v) for k, v in percentiles.items()}))
        if flagged:
            return (f"More unusual for this model than {shown}% of its in-domain images: probably outside what "
                    "it knows; treat the answer with care.")
        if unusual >= 75:
            return f"Less familiar to this model than {shown}% of its in-domain images: check the answer."
        return f"Familiar to this model: more unusual than only {shown}% of its in-domain images."

    # -- storage ----------------------------------------------------------------------------------------
    def check(self, vlm: BayesVLM) -> None:
        """Raise :class:`YardstickError` unless the yardstick was made for ``vlm``'s model and posterior."""
        now = posterior_signature(vlm)
        for key, value in self.posterior.items():
            if key not in now:
                continue
            same = (math.isclose(value, now[key], rel_tol=1e-9) if isinstance(value, float | int)
                    and isinstance(now[key], float | int) else value == now[key])
            if not same:
                raise YardstickError(f"the yardstick was made for {key}={value!r}; this model has {now[key]!r}")

    def save(self, directory: str | Path) -> Path:
        """Write ``yardstick.json`` into ``directory`` (usually the posterior's); returns its path."""
        payload = {"format_version": FORMAT_VERSION, **asdict(self)}
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Yardstick:
        """Read ``yardstick.json`` from ``directory``; :class:`YardstickError` names the field at fault."""
        path = Path(directory) / FILE_NAME
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise YardstickError(f"no {FILE_NAME} in {directory}") from err
        except (OSError, ValueError) as err:
            raise YardstickError(f"{FILE_NAME} is not readable JSON ({err.__class__.__name__})") from err
        if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
            raise YardstickError(f"{FILE_NAME}: format_version must be {FORMAT_VERSION}")
        quantiles = payload.get("quantiles")
        if not isinstance(quantiles, dict) or set(quantiles) != set(FIGURES):
            raise YardstickError(f"{FILE_NAME}: 'quantiles' must hold {FIGURES}")
        for name, values in quantiles.items():
            arr = np.asarray(values, dtype=float) if isinstance(values, list) else np.zeros(0)
            if arr.shape != LEVELS.shape or not np.isfinite(arr).all() or (np.diff(arr) < 0).any():
                raise YardstickError(f"{FILE_NAME}: quantiles[{name!r}] must be {len(LEVELS)} finite "
                                     "non-decreasing numbers")
        prompts = payload.get("prompts")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise YardstickError(f"{FILE_NAME}: 'prompts' must be a non-empty list of strings")
        rule = payload.get("rule")
        try:
            return cls(prompts=prompts, quantiles={k: list(map(float, v)) for k, v in quantiles.items()},
                       num_samples=int(payload["num_samples"]), seed=int(payload["seed"]),
                       posterior=dict(payload["posterior"]), reference=str(payload["reference"]),
                       variance=str(payload.get("variance", "projected")),
                       rule=OutOfDomainRule(**rule) if rule else None)
        except (KeyError, TypeError, ValueError) as err:
            raise YardstickError(f"{FILE_NAME}: malformed field ({err})") from err


def posterior_signature(vlm: BayesVLM) -> dict[str, Any]:
    """What the figures depend on besides the images: model name, prior precisions, pseudo-count."""
    post = vlm.require_posterior()
    return {"model": vlm.name, "prior_precision_image": float(post.image.prior_precision),
            "prior_precision_text": float(post.text.prior_precision),
            "pseudo_count": float(post.image.pseudo_count)}


def measure_figures(vlm: BayesVLM, images: Any | Features, prompts: Sequence[str], num_samples: int = 1000,
                    seed: int = 0, variance: str = "projected") -> dict[str, torch.Tensor]:
    """``epistemic`` and ``entropy`` (nats, over ``prompts``) and ``input_scale`` per image, each [N]."""
    from .explain import decompose_uncertainty

    img = images if isinstance(images, Features) else vlm.encode_images(images)
    pred = vlm.predict_features(img, vlm.encode_prompts(list(prompts)), list(prompts), predictive="mc",
                                num_samples=num_samples, seed=seed, variance=variance)
    dec = decompose_uncertainty(pred, leave_one_out=False, rank_by="variance")
    scale = vlm.require_posterior().image.input_scales(vlm.adapter.image.augment(img.activations))
    return {"epistemic": dec.epistemic.detach(), "input_scale": scale.detach().reshape(-1),
            "entropy": dec.total_entropy.detach()}


def percentile_of(quantiles: Sequence[float], values: Any) -> np.ndarray:
    """Percentile (0..100) of ``values`` among the reference distribution given by its 101 ``quantiles``.

    Linear between stored quantiles; ties (several levels at one value) take their mean level, so the map
    is a non-decreasing function of the value; below the minimum 0, above the maximum 100.
    """
    q = np.asarray(quantiles, dtype=float)
    uniq, inverse = np.unique(q, return_inverse=True)
    levels = np.bincount(inverse, weights=LEVELS) / np.bincount(inverse)
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
    if len(uniq) == 1:
        return np.where(x < uniq[0], 0.0, np.where(x > uniq[0], 100.0, 50.0))
    out = np.interp(x, uniq, levels)
    return np.where(x < uniq[0], 0.0, np.where(x > uniq[-1], 100.0, out))


def build_yardstick(vlm: BayesVLM, images: Any | Features, prompts: Sequence[str], *, num_samples: int = 1000,
                    seed: int = 0, reference: str = "", variance: str = "projected") -> Yardstick:
    """Quantiles of the figures over reference ``images`` (the model's in-domain data) for ``vlm``'s posterior."""
    figures = measure_figures(vlm, images, prompts, num_samples, seed, variance)
    n = int(figures["epistemic"].shape[0])
    if n < 2:
        raise YardstickError("a yardstick needs at least 2 reference images")
    quantiles = {k: np.quantile(v.numpy(), LEVELS / 100.0).tolist() for k, v in figures.items()}
    return Yardstick(prompts=list(prompts), quantiles=quantiles, num_samples=num_samples, seed=seed,
                     posterior=posterior_signature(vlm), reference=f"{reference} ({n} images)".strip(),
                     variance=variance)


def _rule_score(percentiles: Mapping[str, Any], figure: str) -> Any:
    if figure == "max(epistemic, input_scale)":
        return np.maximum(percentiles["epistemic"], percentiles["input_scale"])
    return percentiles[figure]


RULE_FIGURES = ("epistemic", "input_scale", "entropy", "max(epistemic, input_scale)")
RULE_PERCENTILES = (80.0, 85.0, 90.0, 95.0, 97.5, 99.0)


def choose_out_of_domain_rule(yardstick: Yardstick, in_domain: Mapping[str, Any],
                              shifted: Mapping[str, Mapping[str, Any]], max_in_domain_rate: float = 0.1
                              ) -> OutOfDomainRule:
    """The (figure, percentile) flagging the most shifted images on average while flagging at most
    ``max_in_domain_rate`` of held-out in-domain images.

    Args:
        in_domain: figure -> values [N] of held-out in-domain images (not the reference images).
        shifted: split name -> figure -> values of that shift style's images.
    """
    pct_in = yardstick.percentiles(in_domain)
    pct_shift = {name: yardstick.percentiles(f) for name, f in shifted.items()}
    best: tuple[float, OutOfDomainRule] | None = None
    for figure in RULE_FIGURES:
        for level in RULE_PERCENTILES:
            rate_in = float(np.mean(_rule_score(pct_in, figure) >= level))
            if rate_in > max_in_domain_rate:
                continue
            rates = {name: float(np.mean(_rule_score(p, figure) >= level)) for name, p in pct_shift.items()}
            gain = float(np.mean(list(rates.values()))) - rate_in
            if best is None or gain > best[0]:
                best = (gain, OutOfDomainRule(figure, level, {"in_domain": rate_in, **rates}))
    if best is None:
        raise YardstickError(f"no rule flags at most {max_in_domain_rate:.0%} of the in-domain images")
    return best[1]


def build_from_data(vlm: BayesVLM, data: Any, *, classnames: Sequence[str] | None = None, template: str | None = None,
                    cache_dir: str | Path | None = None, num_samples: int = 1000, seed: int = 0,
                    flag_percentile: float | None = 95.0, held_out: float = 0.2, batch_size: int = 64,
                    progress: bool = True) -> Yardstick:
    """A yardstick for ``vlm``'s posterior from labelled in-domain images ``data`` (image folder with one
    sub-folder per class, labels CSV/JSONL, or tar shards), streamed through the encoder with a progress bar
    and the evaluation feature cache in ``cache_dir``.

    The label set is ``classnames`` (default: the data's classes), each written with ``template``
    (default: ``vlm.assets.template``, else ``"a photo of a {}."``). A seeded ``held_out`` share of the
    images is kept out of the reference to measure the in-domain flag rate of the out-of-domain rule
    ``max(epistemic, input_scale)`` percentile >= ``flag_percentile`` (``None``: no rule).
    """
    from .evaluation.evaluate import DEFAULT_TEMPLATE, class_prompts, encode_labeled, open_labeled

    labelled = open_labeled(data, list(classnames) if classnames else None)
    enc = encode_labeled(vlm, labelled, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    assets = getattr(vlm, "assets", None)
    prompts = class_prompts(labelled.classnames, template or getattr(assets, "template", None) or DEFAULT_TEMPLATE)
    n = enc.features.activations.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = int(n * held_out) if flag_percentile is not None and n * held_out >= 2 else 0
    ref, out = order[n_out:], order[:n_out]
    ys = build_yardstick(vlm, _rows(enc.features, ref), prompts, num_samples=num_samples, seed=seed,
                         reference=f"in-domain images {Path(str(data)).name}")  # no server path shown
    if flag_percentile is not None:
        rates = {}
        if n_out:
            pct = ys.percentiles({k: v.numpy() for k, v in ys.measure(vlm, _rows(enc.features, out)).items()})
            rates["in_domain"] = float(np.mean(_rule_score(pct, RULE_FIGURES[-1]) >= flag_percentile))
        ys.rule = OutOfDomainRule(RULE_FIGURES[-1], float(flag_percentile), rates)
    return ys


def _rows(feats: Features, index: torch.Tensor) -> Features:
    return Features(feats.activations[index], feats.embeddings[index])
