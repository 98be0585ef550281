"""Domain-shift calibration benchmark on the bundled emoji model (``bayesvlm-explain benchmark-shift``).

Zero-shot classification over the committed label space (:func:`bayesvlm_explain.data.labels.load_label_space`), on
in-domain renders (training styles, fresh seeded augmentations) and on every shift style (artwork the
model never saw, same augmentation). Methods, all from the same features:

* ``deterministic``: ``softmax(τ·cos)``;
* ``temperature``: the deterministic logits divided by a temperature fitted on an in-domain
  calibration split;
* ``bayes_probit`` / ``bayes_mc``: the Laplace predictive (probit, and Monte Carlo with the full class
  covariance), with the pseudo-count ``n`` chosen on the same in-domain calibration split (λ re-optimised
  by marginal likelihood for each ``n``). Nothing is tuned on a shift style.

Metrics: accuracy, ECE (20 equal-width bins), NLPD (nats), Brier.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._build import emoji
from .._build.augment import augment, load_images, normalise
from ..data.labels import LabelSpace, load_label_space
from .metrics import calibration_metrics, fit_temperature

METHODS = ("deterministic", "temperature", "bayes_probit", "bayes_mc")
PSEUDO_COUNTS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclass
class Split:
    """Images of one split as CLIP-normalised floats [N, 3, S, S] with class labels [N]."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor


def render_splits(size: int, cache_dir: Any = None, repeats: int = 2, seed: int = 0) -> dict[str, Split]:
    """In-domain calibration and test splits plus one split per shift style (rendered into the cache)."""
    classes = load_label_space()
    concepts = {c.key: c for c in emoji.load_concepts(cache_dir)}
    chosen = [concepts[k] for k in classes.keys]
    index = {k: i for i, k in enumerate(classes.keys)}
    build = emoji.build_dataset(emoji.TRAIN_STYLES + emoji.SHIFT_STYLES, size, cache_dir, chosen,
                                write_manifest=False)
    by_style: dict[str, list[emoji.EmojiRecord]] = {}
    for r in build.records:
        by_style.setdefault(r.style, []).append(r)
    splits: dict[str, Split] = {}

    def make(name: str, records: list[emoji.EmojiRecord], split_seed: int) -> Split:
        raw = load_images(records)
        gen = torch.Generator().manual_seed(split_seed)
        x = torch.cat([normalise(augment(raw, gen)) for _ in range(repeats)])
        y = torch.tensor([index[r.key] for r in records] * repeats)
        return Split(name, x, y)

    in_domain = [r for s in emoji.TRAIN_STYLES for r in by_style.get(s, [])]
    splits["calibration"] = make("calibration", in_domain, seed + 1_000)
    splits["in_domain"] = make("in_domain", in_domain, seed + 2_000)
    for i, style in enumerate(emoji.SHIFT_STYLES):
        if by_style.get(style):
            splits[style] = make(style, by_style[style], seed + 3_000 + i)
    return splits


def choose_pseudo_count(vlm: Any, img: Any, txt: Any, prompts: list[str], labels: torch.Tensor,
                        grid: tuple[float, ...] = PSEUDO_COUNTS) -> tuple[float, dict[float, float]]:
    """The ``n`` (λ re-optimised by marginal likelihood for each) minimising in-domain probit NLPD."""
    scores = {}
    for n in grid:
        vlm.optimize_prior_precision(pseudo_count=n)
        scores[n] = calibration_metrics(vlm.predict_features(img, txt, prompts).probs, labels)["nlpd"]
    best = min(scores, key=scores.get)
    vlm.optimize_prior_precision(pseudo_count=best)
    return best, scores


def posterior_uncertainty(vlm: Any, feats: dict[str, Any], txt: Any, prompts: list[str],
                          num_samples: int) -> dict[str, dict[str, float]]:
    """Per split, with the posterior as it is: mean BALD, predictive entropy (nats), logit variance and
    image input scale ``f̃ᵀÃ⁻¹f̃``, i.e. how much the posterior itself registers the shift."""
    from ..explain import decompose_uncertainty

    out = {}
    for name, img in feats.items():
        pred = vlm.predict_features(img, txt, prompts, num_samples=num_samples)
        dec = decompose_uncertainty(pred, num_samples=num_samples, seed=0, leave_one_out=False, rank_by="variance")
        scale = vlm.posterior.image.input_scales(vlm.adapter.image.augment(img.activations))
        out[name] = {"bald": float(dec.epistemic.mean()), "entropy": float(dec.total_entropy.mean()),
                     "logit_variance": float(pred.var.mean()), "image_input_scale": float(scale.mean()),
                     "pseudo_count": vlm.posterior.image.pseudo_count}
    return out


def run_shift_benchmark(vlm: Any, splits: dict[str, Split], num_samples: int = 1000,
                        pseudo_counts: tuple[float, ...] = PSEUDO_COUNTS) -> dict[str, Any]:
    """Metrics of every method on every split; returns the ``benchmark.json`` payload.

    ``pseudo_counts`` is the grid the in-domain selection of ``n`` searches (one value fixes it).
    """
    start = time.perf_counter()
    classes = load_label_space()
    prompts = classes.prompts()
    txt = vlm.encode_prompts(prompts)
    feats = {name: vlm.encode_images(s.images) for name, s in splits.items()}
    cal = splits["calibration"]
    saved = [(side.pseudo_count, side.prior_precision) for side in (vlm.posterior.image, vlm.posterior.text)]
    try:
        return _evaluate(vlm, splits, feats, txt, classes, cal, num_samples, start, pseudo_counts)
    finally:  # leave the model's posterior as it was
        for side, (n, lam) in zip((vlm.posterior.image, vlm.posterior.text), saved, strict=True):
            side.pseudo_count, side.prior_precision = n, lam


def _evaluate(vlm: Any, splits: dict[str, Split], feats: dict[str, Any], txt: Any,
              classes: LabelSpace, cal: Split, num_samples: int, start: float,
              pseudo_counts: tuple[float, ...]) -> dict[str, Any]:
    prompts = classes.prompts()
    shipped = posterior_uncertainty(vlm, feats, txt, prompts, num_samples)
    n_best, n_scores = choose_pseudo_count(vlm, feats["calibration"], txt, prompts, cal.labels, pseudo_counts)
    temperature = fit_temperature(vlm.map_logits(feats["calibration"], txt), cal.labels)
    rows = []
    probs_for_figure: dict[str, dict[str, torch.Tensor]] = {}
    for name, split in splits.items():
        if name == "calibration":
            continue
        pred = vlm.predict_features(feats[name], txt, prompts, num_samples=num_samples)
        probs = {
            "deterministic": pred.map_probs,
            "temperature": torch.softmax(pred.map_logits / temperature, -1),
            "bayes_probit": pred.predictive("probit"),
            "bayes_mc": pred.predictive("mc"),
        }
        probs_for_figure[name] = probs
        for method in METHODS:
            rows.append({"split": name, "method": method, **calibration_metrics(probs[method], split.labels)})
    return {
        "rows": rows,
        "settings": {
            "classes": len(prompts), "template": classes.template, "pseudo_count": n_best,
            "pseudo_count_nlpd_in_domain": {str(k): v for k, v in n_scores.items()},
            "prior_precision": {"image": vlm.posterior.image.prior_precision,
                                "text": vlm.posterior.text.prior_precision},
            "temperature": temperature, "mc_samples": num_samples, "ece_bins": 20,
            "images": {name: int(s.labels.shape[0]) for name, s in splits.items()},
            "posterior_uncertainty_as_shipped": shipped,
            "seconds": time.perf_counter() - start,
        },
        "_probs": probs_for_figure,
    }


def summary_table(payload: dict[str, Any]) -> str:
    """A Markdown table of the rows (split × method)."""
    lines = ["| split | method | accuracy | ECE | NLPD | Brier | n |", "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['split']} | {r['method']} | {r['accuracy']:.3f} | {r['ece']:.3f} | "
                     f"{r['nlpd']:.3f} | {r['brier']:.3f} | {r['n']} |")
    return "\n".join(lines)


def write_results(payload: dict[str, Any], splits: dict[str, Split], out_dir: Path) -> None:
    """``benchmark.json``, ``benchmark.md`` and a reliability-diagram PNG per split."""
    from ..explain.figures import reliability_diagram

    out_dir.mkdir(parents=True, exist_ok=True)
    probs = payload.pop("_probs")
    (out_dir / "benchmark.json").write_text(json.dumps(payload, indent=2))
    (out_dir / "benchmark.md").write_text(summary_table(payload) + "\n")
    for name, by_method in probs.items():
        fig = reliability_diagram({m: by_method[m] for m in ("deterministic", "temperature", "bayes_probit")},
                                  splits[name].labels, n_bins=20, title=f"reliability: {name}")
        fig.savefig(out_dir / f"reliability_{name}.png", dpi=90)
