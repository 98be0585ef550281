"""Domain-shift benchmark of the bundled emoji model (``python -m tools.shift_benchmark [--out DIR]``).

Zero-shot classification over the committed label space (:func:`bayesvlm_explain.data.labels.load_label_space`).
The splits are the ones fixed before training (:mod:`tools.emoji.splits`, recorded in the
model's ``training.json``): per class one training-style render was held out, to **calibration** or to
**test** (``in_domain`` here); the model and its posterior never saw either. Each shift style is artwork
never used in training. Every render appears in ``repeats`` seeded augmentations.

Methods, all from the same features:

* ``deterministic``: ``softmax(τ·cos)``;
* ``temperature``: deterministic logits divided by a temperature fitted on calibration;
* ``bayes_mc`` / ``bayes_probit``: the Laplace predictive (Monte Carlo with the full class covariance and
  the projected variance, the library's recommended one; and the probit), with the pseudo-count ``n``
  chosen on calibration by :func:`~bayesvlm_explain.evaluation.calibrate.calibrate_posterior` (MC NLL,
  λ re-optimised by marginal likelihood for each ``n``). Nothing is tuned on a shift style or on test.

Reported: accuracy, ECE (20 equal-width bins), NLPD (nats), Brier per split; misclassification AUROC and
selective accuracy at 50 % / 80 % coverage per confidence score; shift detection (in-domain test vs each
style) per score; Bayes-minus-baseline differences with 95 % bootstrap intervals that resample whole
emoji (all augmentations and styles of a concept together); and the trade-off of the posterior scale
(in-domain NLPD vs mean shift ECE over ``n``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bayesvlm_explain.bundled import bundled_dir
from bayesvlm_explain.data.labels import load_label_space
from bayesvlm_explain.evaluation.calibrate import PSEUDO_COUNTS, LabeledFeatures, calibrate_posterior
from bayesvlm_explain.evaluation.metrics import (
    auroc,
    bootstrap_interval,
    calibration_metrics,
    cluster_resamples,
    expected_calibration_error,
    fit_temperature,
    misclassification_auroc,
    selective_accuracy,
)
from bayesvlm_explain.numerics import categorical_entropy

from . import emoji
from .augment import augment, load_images, normalise

METHODS = ("deterministic", "temperature", "bayes_probit", "bayes_mc")
CONFIDENCE_SCORES = ("max_softmax", "temperature", "bayes_max_prob", "bayes_entropy", "bald")
OOD_SCORES = ("max_softmax", "map_entropy", "entropy", "bald", "input_scale")
REFERENCE_DTYPE = torch.float64  # the shipped figures are float64-head reference figures (docs/numerics.md)
SCORE_MEANING = {
    "max_softmax": "deterministic model's top probability",
    "temperature": "temperature-scaled top probability",
    "bayes_max_prob": "top probability of the MC predictive",
    "bayes_entropy": "entropy of the MC predictive (low = confident)",
    "map_entropy": "entropy of the deterministic softmax",
    "entropy": "entropy of the MC predictive",
    "bald": "mutual information between label and projections (BALD, MC)",
    "input_scale": "image input scale f̃ᵀÃ⁻¹f̃ of the posterior",
}
BOOTSTRAP = 1000


@dataclass
class Split:
    """One split: CLIP-normalised images [N, 3, S, S], class labels [N], the emoji key of each row [N]
    (the bootstrap cluster) and the render ids it draws from."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    renders: list[str]


def model_splits(model_dir: Path | None = None) -> dict[str, Any]:
    """The splits the model was trained with, from its ``training.json`` (``seed``, ``held_out``, ``train``).

    Raises :class:`~tools.emoji.SplitError` when the file records none or when its
    held-out renders are not the ones :func:`~tools.emoji.held_out_renders` gives: an
    in-domain test on training images is refused, not reported.
    """
    path = (model_dir or bundled_dir()) / "training.json"
    splits = json.loads(path.read_text(encoding="utf-8")).get("splits") if path.is_file() else None
    if not splits:
        raise emoji.SplitError(f"{path} records no train/calibration/test splits: its in-domain test would be "
                               "training images; retrain with scripts/train_bundled.py")
    expected = emoji.held_out_renders(load_label_space().keys, seed=splits["seed"])
    if splits["held_out"] != expected or set(splits["train"]) & {r for ids in expected.values() for r in ids}:
        raise emoji.SplitError(f"{path}: the held-out renders do not match the label space's split "
                               f"(seed {splits['seed']}) or were trained on")
    return splits


def render_splits(size: int, cache_dir: Any = None, repeats: int = 2, seed: int = 0,
                  model_dir: Path | None = None) -> dict[str, Split]:
    """``calibration`` and ``in_domain`` (test) renders of the model's split, plus one split per shift style."""
    classes = load_label_space()
    held = model_splits(model_dir)["held_out"]
    concepts = {c.key: c for c in emoji.load_concepts(cache_dir)}
    chosen = [concepts[k] for k in classes.keys]
    index = {k: i for i, k in enumerate(classes.keys)}
    build = emoji.build_dataset(emoji.TRAIN_STYLES + emoji.SHIFT_STYLES, size, cache_dir, chosen,
                                write_manifest=False)
    by_id = {emoji.render_id(r.style, r.key): r for r in build.records}

    def make(name: str, records: list[emoji.EmojiRecord], split_seed: int) -> Split:
        raw = load_images(records)
        gen = torch.Generator().manual_seed(split_seed)
        x = torch.cat([normalise(augment(raw, gen)) for _ in range(repeats)])
        keys = [r.key for r in records] * repeats
        return Split(name, x, torch.tensor([index[k] for k in keys]), keys,
                     [emoji.render_id(r.style, r.key) for r in records])

    splits = {"calibration": make("calibration", [by_id[i] for i in held["calibration"]], seed + 1_000),
              "in_domain": make("in_domain", [by_id[i] for i in held["test"]], seed + 2_000)}
    for i, style in enumerate(emoji.SHIFT_STYLES):
        records = [r for r in build.records if r.style == style]
        if records:
            splits[style] = make(style, records, seed + 3_000 + i)
    return splits


def posterior_uncertainty(vlm: Any, feats: dict[str, Any], txt: Any, prompts: list[str],
                          num_samples: int) -> dict[str, dict[str, float]]:
    """Per split, with the posterior as it is: mean BALD, predictive entropy (nats), logit variance and
    image input scale ``f̃ᵀÃ⁻¹f̃``, i.e. how much the posterior itself registers the shift."""
    out = {}
    for name, img in feats.items():
        pred = vlm.predict_features(img, txt, prompts, num_samples=num_samples, dtype=REFERENCE_DTYPE)
        s = _scores(vlm, pred, img, num_samples)
        out[name] = {"bald": float(s["bald"].mean()), "entropy": float(s["entropy"].mean()),
                     "logit_variance": s["logit_variance"], "image_input_scale": float(s["input_scale"].mean()),
                     "pseudo_count": vlm.posterior.image.pseudo_count}
    return out


def _scores(vlm: Any, pred: Any, img: Any, num_samples: int) -> dict[str, Any]:
    """MC predictive and its entropies from one set of seeded draws, plus the image input scale."""
    from bayesvlm_explain.explain import decompose_uncertainty

    dec = decompose_uncertainty(pred, num_samples=num_samples, seed=0, leave_one_out=False, rank_by="variance")
    return {"mc": pred.predictive("mc"), "entropy": dec.total_entropy, "bald": dec.epistemic,
            "input_scale": vlm.posterior.image.input_scales(vlm.adapter.image.augment(img.activations)),
            "logit_variance": float(pred.var.mean())}


def run_shift_benchmark(vlm: Any, splits: dict[str, Split], num_samples: int = 1000,
                        pseudo_counts: tuple[float, ...] = PSEUDO_COUNTS,
                        bootstrap: int = BOOTSTRAP) -> dict[str, Any]:
    """Every metric of every method on every split; returns the ``benchmark.json`` payload.

    ``pseudo_counts`` is the grid the calibration-split choice of ``n`` searches (one value fixes it).
    The model's posterior (``n``, ``λ``) is restored afterwards.
    """
    start = time.perf_counter()
    prompts = load_label_space().prompts()
    txt = vlm.encode_prompts(prompts)
    feats = {name: vlm.encode_images(s.images) for name, s in splits.items()}
    saved = [(side.pseudo_count, side.prior_precision) for side in (vlm.posterior.image, vlm.posterior.text)]
    try:
        payload = _evaluate(vlm, splits, feats, txt, prompts, num_samples, tuple(pseudo_counts), bootstrap)
    finally:
        for side, (n, lam) in zip((vlm.posterior.image, vlm.posterior.text), saved, strict=True):
            side.pseudo_count, side.prior_precision = n, lam
    payload["settings"]["seconds"] = time.perf_counter() - start
    return payload


def _scale_curve(vlm: Any, splits: dict[str, Split], feats: dict[str, Any], txt: Any, prompts: list[str],
                 grid: tuple[float, ...], num_samples: int) -> list[dict[str, Any]]:
    """Per ``n`` (λ by marginal likelihood): in-domain test NLPD / ECE / accuracy and each shift style's ECE."""
    shifts = [s for s in splits if s not in ("calibration", "in_domain")]
    curve = []
    for n in grid:
        lam = vlm.optimize_prior_precision(pseudo_count=n)
        point: dict[str, Any] = {"pseudo_count": n, "lambda_image": lam["image"], "lambda_text": lam["text"]}
        for name in ("in_domain", *shifts):
            probs = vlm.predict_features(feats[name], txt, prompts, predictive="mc",
                                         num_samples=num_samples, dtype=REFERENCE_DTYPE).probs
            m = calibration_metrics(probs, splits[name].labels)
            if name == "in_domain":
                point.update(in_domain_nlpd=m["nlpd"], in_domain_ece=m["ece"], in_domain_accuracy=m["accuracy"])
            else:
                point.setdefault("shift_ece", {})[name] = m["ece"]
        point["shift_ece_mean"] = sum(point["shift_ece"].values()) / max(1, len(shifts))
        curve.append(point)
    return curve


def _verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    if math.isnan(lo):
        return "n/a"
    better, worse = (lo > 0, hi < 0) if higher_is_better else (hi < 0, lo > 0)
    return "win" if better else "loss" if worse else "tie"


# statistics of (values, targets) pairs on the rows ix, for the point estimates and the bootstrap
def _accuracy(d: tuple[torch.Tensor, torch.Tensor], ix: torch.Tensor) -> float:
    return float((d[0][ix].argmax(-1) == d[1][ix]).double().mean())


def _ece(d: tuple[torch.Tensor, torch.Tensor], ix: torch.Tensor) -> float:
    return expected_calibration_error(d[0][ix], d[1][ix])


def _nlpd(d: tuple[torch.Tensor, torch.Tensor], ix: torch.Tensor) -> float:
    p, y = d[0][ix], d[1][ix]
    return float(-p.gather(1, y[:, None]).clamp_min(1e-12).log().mean())


def _misclassification(d: tuple[torch.Tensor, torch.Tensor], ix: torch.Tensor) -> float:
    return misclassification_auroc(d[0][ix], d[1][ix])


def _detection(d: tuple[torch.Tensor, torch.Tensor], ix: torch.Tensor) -> float:
    return auroc(d[0][ix], d[1][ix])


def _interval(stat: Callable[[Any, torch.Tensor], float], d: Any, resamples: list[torch.Tensor]) -> dict[str, float]:
    lo, hi = bootstrap_interval(lambda ix: stat(d, ix), resamples)
    return {"ci_low": lo, "ci_high": hi}


def _compare(stat: Callable[[Any, torch.Tensor], float], bayes: Any, base: Any, rows: int,
             resamples: list[torch.Tensor], higher_is_better: bool) -> dict[str, Any]:
    """``stat(bayes) − stat(base)`` on all rows, its paired clustered-bootstrap interval and the verdict."""
    everything = torch.arange(rows)
    delta = stat(bayes, everything) - stat(base, everything)
    lo, hi = bootstrap_interval(lambda ix: stat(bayes, ix) - stat(base, ix), resamples)
    return {"delta": delta, "ci_low": lo, "ci_high": hi, "verdict": _verdict(lo, hi, higher_is_better)}


def _evaluate(vlm: Any, splits: dict[str, Split], feats: dict[str, Any], txt: Any, prompts: list[str],
              num_samples: int, grid: tuple[float, ...], bootstrap: int) -> dict[str, Any]:
    shipped = posterior_uncertainty(vlm, feats, txt, prompts, num_samples)
    cal = splits["calibration"]
    scale_curve = _scale_curve(vlm, splits, feats, txt, prompts, grid, num_samples) if len(grid) > 1 else []
    chosen = calibrate_posterior(vlm, LabeledFeatures(feats["calibration"], prompts, txt, cal.labels), "nll",
                                 predictive="mc", pseudo_counts=grid, num_samples=num_samples)
    temperature = fit_temperature(vlm.map_logits(feats["calibration"], txt), cal.labels)
    evaluated = [name for name in splits if name != "calibration"]
    rows, selective_rows, ood_rows, comparisons = [], [], [], []
    probs_for_figure: dict[str, dict[str, torch.Tensor]] = {}
    scores_by_split: dict[str, dict[str, torch.Tensor]] = {}
    for name in evaluated:
        split = splits[name]
        pred = vlm.predict_features(feats[name], txt, prompts, num_samples=num_samples, dtype=REFERENCE_DTYPE)
        s = _scores(vlm, pred, feats[name], num_samples)
        probs = {"deterministic": pred.map_probs, "temperature": torch.softmax(pred.map_logits / temperature, -1),
                 "bayes_probit": pred.predictive("probit"), "bayes_mc": s["mc"]}
        probs_for_figure[name] = probs
        y = split.labels
        for method in METHODS:
            rows.append({"split": name, "method": method, **calibration_metrics(probs[method], y)})
        resamples = cluster_resamples(split.keys, bootstrap, seed=1)
        for metric, fn in (("accuracy", _accuracy), ("ece", _ece), ("nlpd", _nlpd)):
            for base in ("deterministic", "temperature"):
                comparisons.append({"split": name, "metric": metric, "method": "bayes_mc", "baseline": base,
                                    **_compare(fn, (probs["bayes_mc"], y), (probs[base], y), len(y), resamples,
                                               metric == "accuracy")})
        # confidence scores: (confidence [N], correct [N]) of the prediction each score accompanies
        map_ok = probs["deterministic"].argmax(-1) == y
        mc_ok = s["mc"].argmax(-1) == y
        conf = {"max_softmax": (probs["deterministic"].max(-1).values, map_ok),
                "temperature": (probs["temperature"].max(-1).values, map_ok),
                "bayes_max_prob": (s["mc"].max(-1).values, mc_ok),
                "bayes_entropy": (-s["entropy"], mc_ok), "bald": (-s["bald"], mc_ok)}
        for score in CONFIDENCE_SCORES:
            c, ok = conf[score]
            row = {"split": name, "score": score, "auroc": misclassification_auroc(c, ok),
                   **_interval(_misclassification, conf[score], resamples),
                   "selective_accuracy_50": selective_accuracy(c, ok, 0.5),
                   "selective_accuracy_80": selective_accuracy(c, ok, 0.8)}
            if score != "max_softmax":
                row["vs_max_softmax"] = _compare(_misclassification, conf[score], conf["max_softmax"], len(y),
                                                 resamples, True)
            selective_rows.append(row)
        scores_by_split[name] = {"max_softmax": -probs["deterministic"].max(-1).values,
                                 "map_entropy": categorical_entropy(probs["deterministic"]),
                                 "entropy": s["entropy"], "bald": s["bald"], "input_scale": s["input_scale"]}
    ind = splits["in_domain"]
    for name in evaluated:
        if name == "in_domain":
            continue
        both = {k: torch.cat([scores_by_split["in_domain"][k], scores_by_split[name][k]]) for k in OOD_SCORES}
        is_shift = torch.cat([torch.zeros(len(ind.labels), dtype=torch.bool),
                              torch.ones(len(splits[name].labels), dtype=torch.bool)])
        resamples = cluster_resamples(ind.keys + splits[name].keys, bootstrap, seed=2)
        for score in OOD_SCORES:
            row = {"split": name, "score": score, "auroc": auroc(both[score], is_shift),
                   **_interval(_detection, (both[score], is_shift), resamples)}
            if score != "max_softmax":
                row["vs_max_softmax"] = _compare(_detection, (both[score], is_shift), (both["max_softmax"], is_shift),
                                                 len(is_shift), resamples, True)
            ood_rows.append(row)
    return {
        "rows": rows,
        "selective_rows": selective_rows,
        "ood_rows": ood_rows,
        "comparisons": comparisons,
        "scale_curve": scale_curve,
        "splits": {},  # filled by write_results from the model's training.json and the splits
        "settings": {
            "classes": len(prompts), "template": load_label_space().template,
            "pseudo_count": chosen.pseudo_count, "chosen_on": "calibration split, MC predictive NLL",
            "pseudo_count_at_grid_edge": chosen.at_grid_edge,
            "calibration_curve": chosen.curve,
            "prior_precision": chosen.prior_precision,
            "temperature": temperature, "mc_samples": num_samples, "ece_bins": 20,
            "predictive": "mc with variance='projected' (bayes_mc); probit kept as bayes_probit",
            "bootstrap": {"replicates": bootstrap, "cluster": "emoji (concept key)", "level": 0.95},
            "scores": SCORE_MEANING,
            "images": {name: int(s.labels.shape[0]) for name, s in splits.items()},
            "renders": {name: len(s.renders) for name, s in splits.items()},
            "posterior_uncertainty_as_shipped": shipped,
        },
        "_probs": probs_for_figure,
    }


def summary_table(payload: dict[str, Any]) -> str:
    """Markdown tables: metrics (split × method), selective prediction, shift detection, Bayes vs baselines."""
    lines = ["| split | method | accuracy | ECE | NLPD | Brier | n |", "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['split']} | {r['method']} | {r['accuracy']:.3f} | {r['ece']:.3f} | "
                     f"{r['nlpd']:.3f} | {r['brier']:.3f} | {r['n']} |")

    def vs(r: dict[str, Any]) -> str:
        c = r.get("vs_max_softmax")
        return "" if c is None else f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] {c['verdict']}"

    lines += ["", "Misclassification AUROC (95% CI) and selective accuracy; Δ vs max_softmax with its CI:", "",
              "| split | score | AUROC | CI | acc@50% | acc@80% | Δ vs max_softmax |", "|---|---|---|---|---|---|---|"]
    for r in payload["selective_rows"]:
        lines.append(f"| {r['split']} | {r['score']} | {r['auroc']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['selective_accuracy_50']:.3f} | {r['selective_accuracy_80']:.3f} | {vs(r)} |")
    lines += ["", "Shift detection AUROC, in-domain test vs each style (95% CI):", "",
              "| style | score | AUROC | CI | Δ vs max_softmax |", "|---|---|---|---|---|"]
    for r in payload["ood_rows"]:
        lines.append(f"| {r['split']} | {r['score']} | {r['auroc']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{vs(r)} |")
    lines += ["", "Bayes (MC) minus baseline (95% CI); accuracy: higher is better, ECE and NLPD: lower:", "",
              "| split | metric | baseline | Δ | CI | verdict |", "|---|---|---|---|---|---|"]
    for c in payload["comparisons"]:
        lines.append(f"| {c['split']} | {c['metric']} | {c['baseline']} | {c['delta']:+.4f} | "
                     f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['verdict']} |")
    return "\n".join(lines)


def scale_figure(payload: dict[str, Any]) -> Any:
    """In-domain test NLPD vs mean shift ECE over the pseudo-count ``n`` (chosen ``n`` marked)."""
    from matplotlib.figure import Figure

    curve = payload["scale_curve"]
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = [p["in_domain_nlpd"] for p in curve]
    y = [p["shift_ece_mean"] for p in curve]
    ax.plot(x, y, "o-", color="#4C72B0", label="Bayes MC, n from the grid")
    for p in curve:
        ax.annotate(f"n={p['pseudo_count']:g}", (p["in_domain_nlpd"], p["shift_ece_mean"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    n_best = payload["settings"]["pseudo_count"]
    best = next((p for p in curve if p["pseudo_count"] == n_best), None)
    if best is not None:
        ax.plot([best["in_domain_nlpd"]], [best["shift_ece_mean"]], "*", ms=14, color="#C44E52",
                label=f"chosen on calibration (n={n_best:g})")
    shifts = {r["split"] for r in payload["rows"]} - {"in_domain"}
    for method, marker in (("deterministic", "s"), ("temperature", "D")):
        ind = next(r for r in payload["rows"] if r["split"] == "in_domain" and r["method"] == method)
        ece = [r["ece"] for r in payload["rows"] if r["split"] in shifts and r["method"] == method]
        ax.plot([ind["nlpd"]], [sum(ece) / len(ece)], marker, color="0.3", label=method)
    ax.set_xlabel("in-domain test NLPD (nats)")
    ax.set_ylabel("mean ECE over the shift styles")
    ax.set_title("posterior scale: in-domain fit vs calibration under shift")
    ax.legend(fontsize=7)
    return fig


def write_results(payload: dict[str, Any], splits: dict[str, Split], out_dir: Path,
                  model_dir: Path | None = None) -> None:
    """``benchmark.json`` (with the split ids), ``benchmark.md``, reliability PNGs and ``posterior_scale.png``."""
    from bayesvlm_explain.evaluation.figures import reliability_diagram

    out_dir.mkdir(parents=True, exist_ok=True)
    probs = payload.pop("_probs")
    payload["splits"] = {"train": sorted(model_splits(model_dir)["train"]),
                         "calibration": sorted(splits["calibration"].renders),
                         "test": sorted(splits["in_domain"].renders)}
    (out_dir / "benchmark.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out_dir / "benchmark.md").write_text(summary_table(payload) + "\n")
    for name, by_method in probs.items():
        fig = reliability_diagram({m: by_method[m] for m in ("deterministic", "temperature", "bayes_mc")},
                                  splits[name].labels, n_bins=20, title=f"reliability: {name}")
        fig.savefig(out_dir / f"reliability_{name}.png", dpi=90)
    if payload["scale_curve"]:
        scale_figure(payload).savefig(out_dir / "posterior_scale.png", dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on the emoji splits and write ``benchmark.json``, ``benchmark.md`` and the figures."""
    from bayesvlm_explain.cli import _add_model_args, _load

    p = argparse.ArgumentParser(prog="python -m tools.shift_benchmark",
                                description="domain-shift calibration benchmark on the emoji styles")
    _add_model_args(p)
    p.add_argument("--out", default="assets/shift-benchmark", help="where benchmark.json and the figures go")
    p.add_argument("--cache", default=None, help="emoji data cache (default ~/.cache/bayesvlm_explain/emoji)")
    p.add_argument("--repeats", type=int, default=2, help="augmented draws per rendered image")
    p.add_argument("--mc-samples", type=int, default=1000)
    p.add_argument("--pseudo-count", type=float, default=None,
                   help="fix the posterior's n (default: chosen on in-domain data from a grid)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    vlm = _load(args)
    splits = render_splits(size=max(vlm.image_size or (64, 64)), cache_dir=args.cache, repeats=args.repeats,
                           seed=args.seed)
    grid = (args.pseudo_count,) if args.pseudo_count else PSEUDO_COUNTS
    payload = run_shift_benchmark(vlm, splits, num_samples=args.mc_samples, pseudo_counts=grid)
    write_results(payload, splits, Path(args.out))
    print(summary_table(payload))
    print(f"settings: {payload['settings']}")
    print(f"written to {args.out}/benchmark.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
