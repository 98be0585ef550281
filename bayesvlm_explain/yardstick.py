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
with the yardstick, never against whatever prompts a user typed. A fourth, derived figure ``joint`` combines
the epistemic part and the input scale (Fisher's rule on their tail probabilities) and has its own reference
quantiles, so its percentile is calibrated like the others.

An image is flagged out of domain when its rule figure's percentile reaches ``100·(1 − false_alarm)``: the
in-domain false-alarm rate is fixed in advance (10 % by default), and only the figure is chosen, on a shift
benchmark (:func:`choose_out_of_domain_rule`), never on the images the flag is later judged on.

The yardstick is stored as ``yardstick.json`` beside ``posterior.json`` (:meth:`Yardstick.save`) and loaded
into ``vlm.assets`` by ``BayesVLM.from_pretrained``. ``bayesvlm-explain yardstick`` builds one for any model
and posterior from labelled in-domain images (:func:`build_from_data`); the bundled model's shipped one is
built by ``python -m tools.bundled_yardstick`` (reference: the shift benchmark's in-domain calibration split
in 10 augmentations; figure chosen on the emoji shift styles; false alarms measured on the in-domain test split).
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
"""The per-image figures a yardstick measures, in the order shown."""
JOINT = "joint"
"""The derived figure: Fisher's combination of the epistemic and input-scale percentiles (:func:`joint_score`)."""
FILE_NAME = "yardstick.json"
LEVELS = np.linspace(0.0, 100.0, 101)  # the stored quantile levels, in percent
REFERENCE_DTYPE = torch.float64  # the head's precision for yardstick figures (docs/numerics.md)
FORMAT_VERSION = 2  # 2: optional 'joint' quantiles; rules at a fixed false-alarm rate


class YardstickError(ValueError):
    """A yardstick file that cannot be used (missing, malformed, or made for another posterior)."""


@dataclass
class OutOfDomainRule:
    """Flag an image when ``figure``'s percentile is at least ``percentile`` (``100·(1 − false alarm rate)``).

    ``flag_rates`` maps a split name (``in_domain``: held-out in-domain images, and each shift style) to the
    fraction flagged there.
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
        """Each figure's percentile (0..100) among the reference images; monotone in the figure. ``joint``
        is added when the yardstick has its quantiles and both of its parts are given."""
        out = {name: percentile_of(self.quantiles[name], figures[name]) for name in FIGURES if name in figures}
        if JOINT in self.quantiles and "epistemic" in out and "input_scale" in out:
            out[JOINT] = percentile_of(self.quantiles[JOINT], joint_score(out))
        return out

    def out_of_domain(self, percentiles: Mapping[str, Any]) -> np.ndarray:
        """Boolean [N]: the rule's figure at or above its percentile (all False without a rule)."""
        if self.rule is None:
            return np.zeros(np.shape(percentiles[FIGURES[0]]), dtype=bool)
        return np.asarray(_rule_score(percentiles, self.rule.figure)) >= self.rule.percentile

    def unusualness(self, percentiles: Mapping[str, Any]) -> Any:
        """The percentile the verdict reports: the rule's figure's, or without a rule the larger of the
        epistemic and input-scale percentiles."""
        if self.rule is not None:
            return _rule_score(percentiles, self.rule.figure)
        return np.maximum(percentiles["epistemic"], percentiles["input_scale"])

    def verdict(self, percentiles: Mapping[str, float]) -> str:
        """One plain sentence about one image (its percentiles as floats)."""
        arrays = {k: np.asarray(v) for k, v in percentiles.items()}
        unusual = float(self.unusualness(arrays))
        shown = ">99" if unusual >= 99.5 else f"{unusual:.0f}"
        flagged = bool(self.out_of_domain(arrays))
        if flagged:
            return (f"Probably outside what this model knows: more unusual for it than {shown}% of its "
                    "in-domain images. Treat the answer with care.")
        if unusual >= 75:
            return (f"Less familiar than most: more unusual for this model than {shown}% of its in-domain "
                    "images. Check the answer.")
        return f"Not flagged: within the range of this model's own in-domain images ({ordinal(unusual)} percentile)."

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
        if not isinstance(payload, dict) or payload.get("format_version") not in (1, FORMAT_VERSION):
            raise YardstickError(f"{FILE_NAME}: format_version must be 1 or {FORMAT_VERSION}")
        quantiles = payload.get("quantiles")
        if not isinstance(quantiles, dict) or not set(FIGURES) <= set(quantiles) <= {*FIGURES, JOINT}:
            raise YardstickError(f"{FILE_NAME}: 'quantiles' must hold {FIGURES} (and optionally {JOINT!r})")
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


def ordinal(x: float) -> str:
    """``x`` rounded, as an English ordinal: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 33rd, 63rd..."""
    n = int(round(x))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def posterior_signature(vlm: BayesVLM) -> dict[str, Any]:
    """What the figures depend on besides the images: model name, prior precisions, pseudo-count."""
    post = vlm.require_posterior()
    return {"model": vlm.name, "prior_precision_image": float(post.image.prior_precision),
            "prior_precision_text": float(post.text.prior_precision),
            "pseudo_count": float(post.image.pseudo_count)}


def measure_figures(vlm: BayesVLM, images: Any | Features, prompts: Sequence[str], num_samples: int = 1000,
                    seed: int = 0, variance: str = "projected") -> dict[str, torch.Tensor]:
    """``epistemic`` and ``entropy`` (nats, over ``prompts``) and ``input_scale`` per image, each [N].

    Always in float64 (:data:`REFERENCE_DTYPE`): a yardstick's quantiles are reference figures, and an image is
    measured the way its reference was."""
    from .explain import decompose_uncertainty

    img = images if isinstance(images, Features) else vlm.encode_images(images)
    pred = vlm.predict_features(img, vlm.encode_prompts(list(prompts)), list(prompts), predictive="mc",
                                num_samples=num_samples, seed=seed, variance=variance, dtype=REFERENCE_DTYPE)
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


def joint_score(percentiles: Mapping[str, Any]) -> np.ndarray:
    """Fisher's combination ``−ln(1 − p_e) − ln(1 − p_s)`` of the epistemic and input-scale percentiles
    (as tail probabilities, floored at 0.5 %): large when either part is in its upper tail, larger when both are."""
    tails = [np.clip(1.0 - np.asarray(percentiles[k], dtype=float) / 100.0, 0.005, 1.0)
             for k in ("epistemic", "input_scale")]
    return -np.log(tails[0]) - np.log(tails[1])


def build_yardstick(vlm: BayesVLM, images: Any | Features, prompts: Sequence[str], *, num_samples: int = 1000,
                    seed: int = 0, reference: str = "", variance: str = "projected") -> Yardstick:
    """Quantiles of the figures (and of ``joint``) over reference ``images`` (the model's in-domain data)
    for ``vlm``'s posterior."""
    figures = measure_figures(vlm, images, prompts, num_samples, seed, variance)
    return yardstick_from_figures(vlm, figures, prompts, num_samples=num_samples, seed=seed, reference=reference,
                                  variance=variance)


def yardstick_from_figures(vlm: BayesVLM, figures: Mapping[str, torch.Tensor], prompts: Sequence[str], *,
                           num_samples: int, seed: int, reference: str = "", variance: str = "projected"
                           ) -> Yardstick:
    """:func:`build_yardstick` from the reference images' figures already measured (:func:`measure_figures`
    with the same ``prompts``, ``num_samples``, ``seed`` and ``variance``)."""
    n = int(figures["epistemic"].shape[0])
    if n < 2:
        raise YardstickError("a yardstick needs at least 2 reference images")
    quantiles = {k: np.quantile(v.numpy(), LEVELS / 100.0).tolist() for k, v in figures.items()}
    ys = Yardstick(prompts=list(prompts), quantiles=quantiles, num_samples=num_samples, seed=seed,
                   posterior=posterior_signature(vlm), reference=f"{reference} ({n} images)".strip(),
                   variance=variance)
    joint = joint_score(ys.percentiles({k: v.numpy() for k, v in figures.items()}))
    ys.quantiles[JOINT] = np.quantile(joint, LEVELS / 100.0).tolist()
    return ys


def _rule_score(percentiles: Mapping[str, Any], figure: str) -> Any:
    if figure == "max(epistemic, input_scale)":  # the rule of format-1 yardsticks
        return np.maximum(percentiles["epistemic"], percentiles["input_scale"])
    return percentiles[figure]


RULE_FIGURES = ("epistemic", "input_scale", "entropy", JOINT)
"""The figures a rule may use."""


def choose_out_of_domain_rule(yardstick: Yardstick, shifted: Mapping[str, Mapping[str, Any]],
                              false_alarm: float = 0.1, in_domain: Mapping[str, Any] | None = None
                              ) -> OutOfDomainRule:
    """The rule at percentile ``100·(1 − false_alarm)`` whose figure flags the most shifted images on average.

    The false-alarm rate is fixed in advance (the reference images are in-domain, so a new in-domain image
    exceeds that percentile with probability ``false_alarm``); only the figure is chosen, on ``shifted``.

    Args:
        shifted: split name -> figure -> values [N] of that shift style's images.
        false_alarm: the in-domain flag rate allowed, in (0, 1).
        in_domain: figure -> values of held-out in-domain images (not the reference), only to *report*
            their flag rate as ``flag_rates["in_domain"]``; it does not take part in the choice.
    """
    if not 0.0 < false_alarm < 1.0:
        raise YardstickError(f"false_alarm must be in (0, 1), got {false_alarm}")
    level = 100.0 * (1.0 - false_alarm)
    pct_shift = {name: yardstick.percentiles(f) for name, f in shifted.items()}
    figures = [f for f in RULE_FIGURES if f in yardstick.quantiles]
    if not pct_shift or not figures:
        raise YardstickError("choosing a rule needs shifted images and a yardstick with figures")
    rates = {f: {name: float(np.mean(_rule_score(p, f) >= level)) for name, p in pct_shift.items()}
             for f in figures}
    best = max(figures, key=lambda f: float(np.mean(list(rates[f].values()))))
    flag_rates = dict(rates[best])
    if in_domain is not None:
        flag_rates = {"in_domain": float(np.mean(_rule_score(yardstick.percentiles(in_domain), best) >= level)),
                      **flag_rates}
    return OutOfDomainRule(best, level, flag_rates)


def build_from_data(vlm: BayesVLM, data: Any, *, classnames: Sequence[str] | None = None, template: str | None = None,
                    cache_dir: str | Path | None = None, num_samples: int = 1000, seed: int = 0,
                    false_alarm: float | None = 0.1, held_out: float = 0.2, batch_size: int = 64,
                    progress: bool = True) -> Yardstick:
    """A yardstick for ``vlm``'s posterior from labelled in-domain images ``data`` (image folder with one
    sub-folder per class, labels CSV/JSONL, or tar shards), streamed through the encoder with a progress bar
    and the evaluation feature cache in ``cache_dir``.

    The label set is ``classnames`` (default: the data's classes), each written with ``template``
    (default: ``vlm.assets.template``, else ``"a photo of a {}."``). The out-of-domain rule flags the
    ``joint`` figure at percentile ``100·(1 − false_alarm)`` (``None``: no rule); a seeded ``held_out``
    share of the images is kept out of the reference to measure its in-domain flag rate.
    """
    from .evaluation.evaluate import DEFAULT_TEMPLATE, class_prompts, encode_labeled, open_labeled

    labelled = open_labeled(data, list(classnames) if classnames else None)
    enc = encode_labeled(vlm, labelled, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    assets = getattr(vlm, "assets", None)
    prompts = class_prompts(labelled.classnames, template or getattr(assets, "template", None) or DEFAULT_TEMPLATE)
    n = enc.features.activations.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = int(n * held_out) if false_alarm is not None and n * held_out >= 2 else 0
    ref, out = order[n_out:], order[:n_out]
    ys = build_yardstick(vlm, _rows(enc.features, ref), prompts, num_samples=num_samples, seed=seed,
                         reference=f"in-domain images {Path(str(data)).name}")  # no server path shown
    if false_alarm is not None:
        if not 0.0 < false_alarm < 1.0:
            raise YardstickError(f"false_alarm must be in (0, 1), got {false_alarm}")
        ys.rule = OutOfDomainRule(JOINT, 100.0 * (1.0 - false_alarm))
        if n_out:
            pct = ys.percentiles({k: v.numpy() for k, v in ys.measure(vlm, _rows(enc.features, out)).items()})
            ys.rule.flag_rates["in_domain"] = float(np.mean(ys.out_of_domain(pct)))
    return ys


def _rows(feats: Features, index: torch.Tensor) -> Features:
    return Features(feats.activations[index], feats.embeddings[index])
