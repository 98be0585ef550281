"""What the tabs share, without any web framework: prompt parsing, the recommended prediction, per-class and
per-image JSON, the yardstick's per-image figures, number formatting and the studio's limits.

Each tab (:mod:`.tabs`) computes its own result from these; every result is JSON-ready (floats, strings,
lists) plus what the page draws.
"""

from __future__ import annotations

import html
import math
import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

from ..adapters import Features
from ..inputs import InputError, check_prompts
from ..options import Predictive
from ..predictive import Prediction
from ..yardstick import Yardstick
from .archives import ArchiveError
from .uploads import open_upload

if TYPE_CHECKING:
    from ..model import BayesVLM

MAX_PROMPTS = 1000  # a real label set (ImageNet: 1000 classes); encodings are cached per prompt
MAX_SETS = 4
MAX_BATCH_IMAGES = 16
MAX_ARCHIVE_IMAGES = 1000  # images used from one zip (Calibrate, Select pool, Select targets)
SELECT_SAMPLES = 256  # joint posterior draws for the acquisition functions
MAX_EPIG_TARGETS = 64  # EPIG averages over at most this many targets (an evenly spaced subset)
SELECT_SHOWN = 20  # ranked picks shown per acquisition function (the CSV has every image)
SELECT_HEADERS = ["rank", "entropy: image", "entropy (nats)", "BALD: image", "BALD (nats)", "EPIG: image",
                  "EPIG (nats)", "MAP entropy: image", "MAP entropy (nats)"]
SELECT_CSV_HEADERS = ["image", "folder", "entropy", "bald", "epig", "map_entropy", "rank_entropy", "rank_bald",
                      "rank_epig", "rank_map_entropy"]
LEARNER_KNOBS = (0.01, 100, 0.01)
"""Select's learner by default, ``(prior weight, Adam steps, learning rate)``: the emoji experiment's choice on
its validation split (docs/evaluation.md, "Learner knobs")."""
LEARNER_LIMITS = {"prior weight": (0.0, 1000.0), "steps": (0, 1000), "lr": (1e-6, 1.0)}
"""Allowed ranges of the learner knobs (steps: whole numbers; 0 steps is the posterior update alone)."""
RECOMMENDED: Predictive = "mc"  # the predictive shown first; the deterministic one is shown beside it
NUM_SAMPLES = 1000
TABLE_HEADERS = ["prompt", "p (MC)", "p (det.)", "logit mean", "logit std", "image share", "text share",
                 "inter. share"]
"""Inspect's table: MC = the recommended Monte Carlo predictive, det. = the deterministic model; the shares
are the image, text and interaction parts of the logit variance."""
BATCH_HEADERS = ["image", "top prompt", "p (MC)", "p (det.)", "logit std", "entropy (nats)", "epistemic (nats)",
                 "unusual (percentile)", "out of domain"]
EXPLAIN_TARGETS = {"image-side variance of the prompt": "image_variance",
                   "epistemic uncertainty (BALD)": "epistemic",
                   "total predictive entropy": "entropy",
                   "logit mean of the prompt (contrast)": "mean"}
EXPLAIN_METHODS = {"integrated gradients": "integrated_gradients", "saliency": "saliency",
                   "SmoothGrad": "smoothgrad", "occlusion (one patch)": "occlusion"}
TARGET_UNITS = {"image_variance": "squared logits", "epistemic": "nats", "entropy": "nats", "mean": "logits"}


# -- prompts ---------------------------------------------------------------------------------------------
def clean_prompt(line: str, index: int) -> str:
    """A prompt line with control characters removed and outer blanks stripped; refuses lone surrogates."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in line):
        raise InputError(f"prompt {index + 1} contains an invalid character (a lone UTF-16 surrogate)")
    return "".join(ch for ch in line if unicodedata.category(ch) != "Cc").strip()


def parse_prompts(text: str | None, what: str = "prompts") -> list[str]:
    """One prompt per non-blank line (at most :data:`MAX_PROMPTS`, duplicates refused)."""
    lines = (text or "").splitlines()
    prompts = [p for i, line in enumerate(lines) if (p := clean_prompt(line, i))]
    if not prompts:
        raise InputError(f"{what}: enter at least one prompt (one per line); a prompt must be non-empty")
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{what}: {len(prompts)} prompts given; the studio takes at most {MAX_PROMPTS}")
    dup = next((p for i, p in enumerate(prompts) if p in prompts[:i]), None)
    if dup is not None:
        raise InputError(f"{what}: the prompt {dup[:60]!r} is given twice")
    return check_prompts(prompts)


def image_of(path: Any) -> Any:
    if not path:
        raise InputError("upload an image first")
    return open_upload(path)


# -- shared pieces -----------------------------------------------------------------------------------------
def classes_json(pred: Prediction, n: int = 0) -> list[dict[str, Any]]:
    """Per prompt of image ``n``: logit ``mean``, ``var`` and its parts, ``prob`` (MC) and ``map_prob``."""
    prob, det = pred.probs[n], pred.map_probs[n]
    return [{"prompt": p, "mean": float(pred.mean[n, c]), "var": float(pred.var[n, c]),
             "var_image": float(pred.var_image[n, c]), "var_text": float(pred.var_text[n, c]),
             "var_interaction": float(pred.var_interaction[n, c]), "prob": float(prob[c]),
             "map_prob": float(det[c])} for c, p in enumerate(pred.prompts)]


def entropy_parts(pred: Prediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Total, aleatoric and epistemic entropy [N] of the MC predictive (same draws as ``pred.probs``)."""
    from ..explain import decompose_uncertainty

    dec = decompose_uncertainty(pred, leave_one_out=False, rank_by="variance")
    return tuple(t.detach().numpy() for t in (dec.total_entropy, dec.aleatoric, dec.epistemic))  # type: ignore


def recommended_prediction(vlm: BayesVLM, feats: Features, prompts: list[str]) -> Prediction:
    """The recommended predictive of encoded images against ``prompts`` (fixed seed: reproducible)."""
    return vlm.predict_features(feats, vlm.encode_prompts(prompts), prompts, predictive=RECOMMENDED,
                                num_samples=NUM_SAMPLES, seed=0)


def yardstick_json(vlm: BayesVLM, yardstick: Yardstick | None, feats: Features) -> list[dict[str, Any]]:
    """Per image: ``percentiles`` (figure -> 0..100), the raw ``figures``, ``out_of_domain``, ``verdict`` and
    the rule's measured ``flag_rates`` (split -> fraction flagged) and ``unusual``, the percentile the
    verdict reports (the rule's figure)."""
    count = int(feats.embeddings.shape[0])
    if yardstick is None:
        return [{"percentiles": {}, "figures": {}, "out_of_domain": False, "flag_rates": {}, "unusual": None,
                 "verdict": "No yardstick for this posterior: the figures cannot be compared with the "
                            "model's in-domain images."}] * count
    figures = {k: v.numpy() for k, v in yardstick.measure(vlm, feats).items()}
    pct = yardstick.percentiles(figures)
    ood = yardstick.out_of_domain(pct)
    out = []
    for n in range(len(ood)):
        p = {k: float(v[n]) for k, v in pct.items()}
        out.append({"percentiles": p, "figures": {k: float(v[n]) for k, v in figures.items()},
                    "out_of_domain": bool(ood[n]), "verdict": yardstick.verdict(p),
                    "unusual": float(yardstick.unusualness({k: np.asarray(v) for k, v in p.items()})),
                    "flag_rates": dict(yardstick.rule.flag_rates) if yardstick.rule else {}})
    return out


def significant(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant figures, so that small uncertainties (nats) do not show as 0."""
    return float(f"{x:.{digits}g}")


def column_strings(values: list[float]) -> list[str]:
    """One format for a whole table column: 4 decimals, or 3 significant figures in scientific notation when
    the column's largest magnitude is below 0.01 (so 1.05e-05, 6.04e-07 and 3.00e-10 line up)."""
    small = max((abs(v) for v in values), default=0.0) < 0.01
    return [f"{v:.2e}" if small else f"{v:.4f}" for v in values]


def nats(x: float) -> str:
    """An entropy for the page: 3 decimals, or 2 significant figures below 0.001 (never a bare 0.000)."""
    return "0" if x == 0 else f"{x:.3f}" if abs(x) >= 1e-3 else f"{x:.1e}"


def table_rows(classes: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for c in sorted(classes, key=lambda c: -c["prob"]):
        var = c["var"] or 1.0
        rows.append([c["prompt"], round(c["prob"], 4), round(c["map_prob"], 4), round(c["mean"], 3),
                     round(math.sqrt(c["var"]), 3), round(c["var_image"] / var, 3), round(c["var_text"] / var, 3),
                     round(c["var_interaction"] / var, 3)])
    return rows


def probability_bars_html(classes: list[dict[str, Any]], top_k: int = 12) -> str:
    """Horizontal bars per prompt (most probable first): MC probability, deterministic beside it, and the
    logit mean ± std as text. Plain HTML/CSS, so it reflows at any width."""
    parts = ['<div class="bx-bars">']
    for c in sorted(classes, key=lambda c: -c["prob"])[:top_k]:
        p, d = 100 * c["prob"], 100 * c["map_prob"]
        parts.append(
            f'<div class="bx-row"><div class="bx-label">{html.escape(c["prompt"])}</div>'
            f'<div class="bx-track"><div class="bx-bar" style="width:{p:.1f}%"></div></div>'
            f'<div class="bx-num">{p:.1f}%</div>'
            f'<div class="bx-track"><div class="bx-bar bx-det" style="width:{d:.1f}%"></div></div>'
            f'<div class="bx-num bx-detnum">{d:.1f}%</div>'
            f'<div class="bx-logit">logit {c["mean"]:.2f} ± {math.sqrt(c["var"]):.2f}</div></div>')
    parts.append('<div class="bx-legend"><span class="bx-key"></span> Bayesian (MC) '
                 '<span class="bx-key bx-det"></span> deterministic</div></div>')
    return "".join(parts)


# -- Inspect ---------------------------------------------------------------------------------------------
def csv_cell(value: Any) -> Any:
    """User text that a spreadsheet would run as a formula gets a leading apostrophe."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# -- Calibrate ------------------------------------------------------------------------------------------
def check_count(count: int, archive: str, what: str) -> None:
    if count > MAX_ARCHIVE_IMAGES:
        raise ArchiveError(f"{archive}: {count} {what}; the studio takes at most {MAX_ARCHIVE_IMAGES}")
