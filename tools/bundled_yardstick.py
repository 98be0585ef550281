"""Calibrate the bundled posterior's scale, rebuild its yardstick and report the out-of-domain flag
(``python -m tools.bundled_yardstick [--photos DIR] [--report DIR]``).

1. **Scale**: the pseudo-count ``n`` is chosen on the shift benchmark's in-domain calibration split exactly
   as the benchmark does (:func:`~bayesvlm_explain.evaluation.calibrate.calibrate_posterior`, MC NLL, ``λ``
   by marginal likelihood for each ``n``) and stored in the shipped ``posterior.json`` (with the choice in
   its ``calibration`` metadata): the studio and the library start from it.
2. **Yardstick**: reference = the calibration split in :data:`REFERENCE_REPEATS` seeded augmentations;
   the out-of-domain rule flags at the 90th percentile (false alarms fixed at 10 % in advance) of the figure
   that flags most of the emoji shift styles (:func:`~bayesvlm_explain.yardstick.choose_out_of_domain_rule`);
   the in-domain test split only *measures* the false-alarm rate. Written beside the posterior.
3. **Report** (``--report``): per figure, shift detection AUROC and flag rates per split, the bootstrap spread
   of the threshold (renders resampled), and, with ``--photos`` (``python -m tools.photos``), the same on real
   photographs, which never take part in any choice.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bayesvlm_explain.evaluation.calibrate import LabeledFeatures, calibrate_posterior
from bayesvlm_explain.evaluation.metrics import auroc
from bayesvlm_explain.model import BayesVLM
from bayesvlm_explain.pretrained.registry import BUNDLED, asset_spec
from bayesvlm_explain.yardstick import (
    FIGURES,
    JOINT,
    RULE_FIGURES,
    Yardstick,
    choose_out_of_domain_rule,
    joint_score,
    measure_figures,
    yardstick_from_figures,
)

from .shift_benchmark import Split, render_splits

REFERENCE_REPEATS = 10
FALSE_ALARM = 0.1
BOOTSTRAP = 500
PHOTOS_KEY = "real photographs"


def calibrate_scale(vlm: BayesVLM, splits: dict[str, Split], num_samples: int) -> dict[str, Any]:
    """Choose ``n`` on the calibration split as the shift benchmark does; ``vlm``'s posterior is set to it."""
    prompts = vlm.assets.prompts() or []
    txt = vlm.encode_prompts(prompts)
    cal = splits["calibration"]
    chosen = calibrate_posterior(vlm, LabeledFeatures(vlm.encode_images(cal.images), prompts, txt, cal.labels),
                                 "nll", predictive="mc", num_samples=num_samples)
    meta = vlm.require_posterior().metadata["calibration"]
    meta.update(chosen_on="bundled shift benchmark, in-domain calibration split (python -m tools.bundled_yardstick)",
                grid=[row["pseudo_count"] for row in chosen.curve])
    return chosen.to_dict()


def _images_of(folder: Path) -> tuple[list[Image.Image], list[str]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return [Image.open(p).convert("RGB") for p in paths], [p.name for p in paths]


def _threshold_spread(ys: Yardstick, figures: dict[str, np.ndarray], renders: list[str], figure: str,
                      level: float, seed: int = 0) -> list[float]:
    """95 % bootstrap interval (renders resampled with all their augmentations) of the reference's
    ``level``-th percentile of ``figure``, in the percentiles of the shipped quantiles."""
    pct = ys.percentiles(figures)[figure]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(renders):
        groups.setdefault(r, []).append(i)
    keys = list(groups)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP):
        rows = [i for k in rng.choice(keys, len(keys)) for i in groups[k]]
        values.append(float(np.percentile(pct[rows], level)))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def report(ys: Yardstick, figures: dict[str, dict[str, np.ndarray]], photo_names: list[str],
           reference_spread: dict[str, list[float]]) -> dict[str, Any]:
    """Per figure: flag rate per split at the rule's level, and AUROC (on the raw figure; ``joint`` on its
    score) of each split against in-domain test."""
    assert ys.rule is not None
    pct = {name: ys.percentiles(f) for name, f in figures.items()}
    raw = {name: {**f, JOINT: joint_score(pct[name])} for name, f in figures.items()}
    level = ys.rule.percentile
    rows = []
    for fig in RULE_FIGURES:
        inside = raw["in_domain"][fig]
        row: dict[str, Any] = {"figure": fig, "chosen": fig == ys.rule.figure,
                               "threshold_spread": reference_spread[fig], "flag_rate": {}, "auroc": {}}
        for name, p in pct.items():
            row["flag_rate"][name] = float(np.mean(p[fig] >= level))
            if name != "in_domain":
                labels = torch.cat([torch.zeros(len(inside)), torch.ones(len(p[fig]))])
                row["auroc"][name] = auroc(torch.tensor(np.r_[inside, raw[name][fig]]), labels)
        rows.append(row)
    flagged = ({name: bool(v) for name, v in zip(photo_names, ys.out_of_domain(pct["photos"]), strict=True)}
               if photo_names else {})
    return {"rule": {"figure": ys.rule.figure, "percentile": level, "false_alarm_fixed": FALSE_ALARM},
            "reference": ys.reference, "posterior": ys.posterior, "rows": rows, "photos_flagged": flagged}


def markdown(rep: dict[str, Any]) -> str:
    """The report as Markdown tables (flag rates at the rule's level, AUROC vs in-domain test)."""
    splits = list(rep["rows"][0]["flag_rate"])
    lines = [f"Rule: **{rep['rule']['figure']}** percentile ≥ {rep['rule']['percentile']:.0f} (in-domain false "
             f"alarms fixed at {rep['rule']['false_alarm_fixed']:.0%} in advance). Reference: {rep['reference']}. "
             f"Posterior: n = {rep['posterior']['pseudo_count']:g}.", "",
             "Flag rate at that percentile (`in_domain` = held-out test renders, never used in any choice; "
             "`photos` = real photographs, never used in any choice):", "",
             "| figure | threshold 95% interval (pct.) | " + " | ".join(splits) + " |",
             "|---|---|" + "---|" * len(splits)]
    for row in rep["rows"]:
        name = f"**{row['figure']}** (chosen)" if row["chosen"] else row["figure"]
        lo, hi = row["threshold_spread"]
        lines.append(f"| {name} | [{lo:.1f}, {hi:.1f}] | "
                     + " | ".join(f"{row['flag_rate'][s]:.0%}" for s in splits) + " |")
    others = [s for s in splits if s != "in_domain"]
    lines += ["", "AUROC against the in-domain test renders:", "",
              "| figure | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for row in rep["rows"]:
        lines.append(f"| {row['figure']} | " + " | ".join(f"{row['auroc'][s]:.3f}" for s in others) + " |")
    if rep["photos_flagged"]:
        missed = sorted(k for k, v in rep["photos_flagged"].items() if not v)
        lines += ["", f"Photographs not flagged ({len(missed)} of {len(rep['photos_flagged'])}): "
                  + ", ".join(f"`{m}`" for m in missed)]
    return "\n".join(lines) + "\n"


def build_bundled(num_samples: int = 1000, cache_dir: Any = None, photos: Path | None = None,
                  calibrate: bool = True) -> tuple[BayesVLM, Yardstick, dict[str, Any], dict[str, Any] | None]:
    """Calibrated bundled model, its yardstick, the calibration and the report (``None`` without photos)."""
    vlm = BayesVLM.from_pretrained(BUNDLED, device="cpu")
    size = vlm.image_size[0] if vlm.image_size else 64
    splits = render_splits(size, cache_dir)  # the benchmark's splits (2 augmentations)
    calibration = calibrate_scale(vlm, splits, num_samples) if calibrate else {}
    reference = render_splits(size, cache_dir, repeats=REFERENCE_REPEATS)["calibration"]
    prompts = vlm.assets.prompts() or []
    reference_figures = measure_figures(vlm, reference.images, prompts, num_samples)
    ys = yardstick_from_figures(vlm, reference_figures, prompts, num_samples=num_samples, seed=0,
                                reference=f"bundled shift benchmark, in-domain calibration split, "
                                          f"{REFERENCE_REPEATS} augmentations per render")
    figures = {name: {k: v.numpy() for k, v in ys.measure(vlm, s.images).items()}
               for name, s in splits.items() if name != "calibration"}
    in_domain = figures["in_domain"]
    shifted = {k: v for k, v in figures.items() if k != "in_domain"}
    ys.rule = choose_out_of_domain_rule(ys, shifted, FALSE_ALARM, in_domain=in_domain)
    names: list[str] = []
    if photos is not None:
        images, names = _images_of(photos)
        figures["photos"] = {k: v.numpy() for k, v in ys.measure(vlm, images).items()}
    ref_figures = {k: v.numpy() for k, v in reference_figures.items()}
    renders = reference.renders * REFERENCE_REPEATS
    spread = {f: _threshold_spread(ys, ref_figures, renders, f, ys.rule.percentile)
              for f in (*FIGURES, JOINT)}
    if photos is not None:  # reported beside the rule (the studio shows it); the choice was made without them
        flagged = ys.out_of_domain(ys.percentiles(figures["photos"]))
        ys.rule.flag_rates[PHOTOS_KEY] = float(np.mean(flagged))
    return vlm, ys, calibration, report(ys, figures, names, spread)


def main(argv: Sequence[str] | None = None) -> int:
    """Calibrate the bundled posterior's scale, rebuild its yardstick, write both beside the model."""
    parser = argparse.ArgumentParser(prog="python -m tools.bundled_yardstick", description=main.__doc__)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--cache-dir", default=None, help="emoji render cache (default: the user cache)")
    parser.add_argument("--photos", type=Path, default=None, help="photographs (python -m tools.photos)")
    parser.add_argument("--report", type=Path, default=None, help="folder for ood.json and ood.md")
    parser.add_argument("--keep-scale", action="store_true", help="keep the shipped posterior's n")
    args = parser.parse_args(argv)
    vlm, ys, calibration, rep = build_bundled(args.num_samples, args.cache_dir, args.photos,
                                              calibrate=not args.keep_scale)
    spec = asset_spec(BUNDLED)
    assert spec is not None and spec.posterior_dir is not None  # the registry's bundled entry
    folder = spec.posterior_dir()
    if calibration:
        vlm.require_posterior().save(folder)
        print(f"posterior scale n = {calibration['pseudo_count']:g}, λ = {calibration['prior_precision']}")
    print(f"wrote {ys.save(folder)}")
    assert ys.rule is not None  # set by build_bundled
    print(f"out-of-domain rule: {ys.rule.figure} percentile >= {ys.rule.percentile}")
    if args.report is not None and rep is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "ood.json").write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        (args.report / "ood.md").write_text(markdown(rep), encoding="utf-8")
        print(markdown(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
