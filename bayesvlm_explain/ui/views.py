"""What the studio computes and shows, without any web framework: the four views as plain functions.

* :func:`inspect_image`: per prompt the recommended (Monte Carlo) and deterministic probabilities, the
  logit mean and variance with its image/text/interaction parts; per image the entropy split and the
  yardstick's percentiles, verdict and out-of-domain flag.
* :func:`compare_sets`: one image against 2-4 prompt sets (or templates such as ``"a drawing of {}"``).
* :func:`explain_prompt`: pixel and token attributions of one target for any prompt, with the numbers.
* :func:`batch_table`: several images x prompts, one row per image, most uncertain first.
* :func:`calibrate_archive`: a zip of labelled images (one folder per class): deterministic vs Bayesian
  calibration metrics and the reliability diagram (:mod:`bayesvlm_explain.evaluation.evaluate`).
* :func:`select_archive`: a zip of pool images ranked by entropy, BALD and EPIG
  (:mod:`bayesvlm_explain.selection`).

Every function returns JSON-ready dicts (floats, strings, lists) plus what the page draws; the Gradio
layer (:mod:`.app`) only wires them to components.
"""

from __future__ import annotations

import csv
import html
import io
import math
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..adapters import Features
from ..inputs import InputError, check_prompts
from ..predictive import Prediction
from ..yardstick import Yardstick
from .archives import ArchiveError, extracted, image_files
from .uploads import display_name, open_upload

MAX_PROMPTS = 64
MAX_SETS = 4
MAX_BATCH_IMAGES = 16
MAX_ARCHIVE_IMAGES = 1000  # images used from one zip (Calibrate, Select pool, Select targets)
SELECT_SAMPLES = 256  # joint posterior draws for the acquisition functions
MAX_EPIG_TARGETS = 64  # EPIG averages over at most this many targets (an evenly spaced subset)
SELECT_SHOWN = 20  # ranked picks shown per acquisition function (the CSV has every image)
SELECT_HEADERS = ["rank", "entropy: image", "entropy (nats)", "BALD: image", "BALD (nats)", "EPIG: image",
                  "EPIG (nats)"]
SELECT_CSV_HEADERS = ["image", "folder", "entropy", "bald", "epig", "rank_entropy", "rank_bald", "rank_epig"]
RECOMMENDED = "mc"  # the predictive shown first; the deterministic one is shown beside it
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


def _image(path: Any) -> Any:
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


def recommended_prediction(vlm: Any, feats: Features, prompts: list[str]) -> Prediction:
    """The recommended predictive of encoded images against ``prompts`` (fixed seed: reproducible)."""
    return vlm.predict_features(feats, vlm.encode_prompts(prompts), prompts, predictive=RECOMMENDED,
                                num_samples=NUM_SAMPLES, seed=0)


def yardstick_json(vlm: Any, yardstick: Yardstick | None, feats: Features) -> list[dict[str, Any]]:
    """Per image: ``percentiles`` (figure -> 0..100), the raw ``figures``, ``out_of_domain`` and ``verdict``."""
    count = int(feats.embeddings.shape[0])
    if yardstick is None:
        return [{"percentiles": {}, "figures": {}, "out_of_domain": False,
                 "verdict": "No yardstick for this posterior: the figures cannot be compared with the "
                            "model's in-domain images."}] * count
    figures = {k: v.numpy() for k, v in yardstick.measure(vlm, feats).items()}
    pct = yardstick.percentiles(figures)
    ood = yardstick.out_of_domain(pct)
    out = []
    for n in range(len(ood)):
        p = {k: float(v[n]) for k, v in pct.items()}
        out.append({"percentiles": p, "figures": {k: float(v[n]) for k, v in figures.items()},
                    "out_of_domain": bool(ood[n]), "verdict": yardstick.verdict(p)})
    return out


def significant(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant figures, so that small uncertainties (nats) do not show as 0."""
    return float(f"{x:.{digits}g}")


def nats(x: float) -> str:
    """An entropy for the page: 3 decimals, or 2 significant figures below 0.001 (never a bare 0.000)."""
    return "0" if x == 0 else f"{x:.3f}" if abs(x) >= 1e-3 else f"{x:.1e}"


def _rows(classes: list[dict[str, Any]]) -> list[list[Any]]:
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
def inspect_image(vlm: Any, image: Any, prompts_text: str, yardstick: Yardstick | None = None) -> dict[str, Any]:
    """The Inspect view of one uploaded image.

    Returns ``{"json": {"classes": [...], "image": {...}}, "rows": TABLE_HEADERS rows, "bars": html,
    "verdict": markdown}``; entropies in nats, over the typed prompts.
    """
    prompts = parse_prompts(prompts_text)
    feats = vlm.encode_images([_image(image)])
    pred = recommended_prediction(vlm, feats, prompts)
    total, alea, epi = entropy_parts(pred)
    ys = yardstick_json(vlm, yardstick, feats)[0]
    classes = classes_json(pred)
    payload = {"classes": classes,
               "image": {"name": display_name(image), "entropy": float(total[0]), "aleatoric": float(alea[0]),
                         "epistemic": float(epi[0]), **ys}}
    return {"json": payload, "rows": _rows(classes), "bars": probability_bars_html(classes),
            "verdict": verdict_markdown(payload["image"])}


def verdict_markdown(image: dict[str, Any]) -> str:
    """The per-image summary: warning (if out of domain), verdict, entropy split and percentiles."""
    lines = []
    if image["out_of_domain"]:
        lines.append("### ⚠ Out of domain for this model")
    lines.append(f"**{image['verdict']}**")
    lines.append(f"Predictive entropy over these prompts **{nats(image['entropy'])}** nats = aleatoric "
                 f"{nats(image['aleatoric'])} + epistemic {nats(image['epistemic'])}.")
    if image["percentiles"]:
        p = image["percentiles"]
        lines.append(f"Against the model's own labels: epistemic (BALD) at the {p['epistemic']:.0f}th percentile, "
                     f"image input scale at the {p['input_scale']:.0f}th, entropy at the {p['entropy']:.0f}th "
                     "of its in-domain images.")
    return "\n\n".join(lines)


# -- Compare ------------------------------------------------------------------------------------------------
def template_labels(prompts_text: str) -> list[str]:
    """The prompts with their common leading words removed (``"an emoji of frog"`` -> ``"frog"``)."""
    lines = [ln.strip() for ln in (prompts_text or "").splitlines() if ln.strip()]
    words = [ln.split(" ") for ln in lines]
    k = 0
    while len(lines) > 1 and all(len(w) > k + 1 and w[k] == words[0][k] for w in words):
        k += 1
    return [" ".join(w[k:]) for w in words]


def expand_set(text: str, labels: Sequence[str], index: int) -> list[str]:
    """A prompt set: one prompt per line, or one template line with ``{}`` filled with each label."""
    what = f"set {index + 1}"
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if len(lines) == 1 and "{}" in lines[0]:
        if not labels:
            raise InputError(f"{what} is a template; give the labels to fill it with")
        return parse_prompts("\n".join(lines[0].strip().replace("{}", label) for label in labels), what)
    return parse_prompts(text, what)


def compare_sets(vlm: Any, image: Any, set_texts: Sequence[str], labels_text: str = "") -> dict[str, Any]:
    """The Compare view: one image against 2-4 prompt sets (empty sets ignored).

    Returns ``{"json": {"sets": [{"prompts", "classes", "top", "entropy", "epistemic"}], "most_certain",
    "agree"}, "html": side-by-side summary, "summary": markdown}``.
    """
    texts = [t for t in set_texts if t and t.strip()]
    if len(texts) < 2:
        raise InputError("give at least 2 prompt sets to compare")
    if len(texts) > MAX_SETS:
        raise InputError(f"{len(texts)} prompt sets given; compare at most {MAX_SETS}")
    labels = [ln.strip() for ln in (labels_text or "").splitlines() if ln.strip()]
    sets = [expand_set(t, labels, i) for i, t in enumerate(texts)]
    feats = vlm.encode_images([_image(image)])
    out = []
    for prompts in sets:
        pred = recommended_prediction(vlm, feats, prompts)
        total, _, epi = entropy_parts(pred)
        classes = classes_json(pred)
        k = int(pred.probs[0].argmax())
        out.append({"prompts": prompts, "classes": classes,
                    "top": {"index": k, "prompt": prompts[k], "prob": classes[k]["prob"],
                            "std": math.sqrt(classes[k]["var"])},
                    "entropy": float(total[0]), "epistemic": float(epi[0])})
    same_size = len({len(s) for s in sets}) == 1
    tops = [s["top"]["index"] if same_size else s["top"]["prompt"] for s in out]
    most = int(np.argmin([s["entropy"] for s in out]))
    payload = {"sets": out, "most_certain": most, "agree": len(set(tops)) == 1}
    return {"json": payload, "html": compare_html(payload), "summary": compare_summary(payload, same_size)}


def compare_summary(payload: dict[str, Any], aligned: bool) -> str:
    """Which wording makes the model more certain, and whether the sets pick the same answer."""
    sets = payload["sets"]
    best = sets[payload["most_certain"]]
    text = (f"**Set {payload['most_certain'] + 1} makes the model most certain** (entropy {nats(best['entropy'])} "
            f"nats, epistemic {nats(best['epistemic'])}).")
    if payload["agree"]:
        return text + " All sets pick the same answer" + (" (same position in each set)." if aligned else ".")
    picks = "; ".join(f"set {i + 1}: {s['top']['prompt']!r}" for i, s in enumerate(sets))
    return text + f" **The sets disagree**: {picks}."


def compare_html(payload: dict[str, Any]) -> str:
    """One card per set: top answer, its probability ± the logit std, entropy split as a bar."""
    sets = payload["sets"]
    scale = max(max(s["entropy"] for s in sets), 1e-9)
    cards = []
    for i, s in enumerate(sets):
        top = s["top"]
        alea = s["entropy"] - s["epistemic"]
        best = " bx-best" if i == payload["most_certain"] else ""
        cards.append(
            f'<div class="bx-card{best}"><div class="bx-cardhead">set {i + 1} · {len(s["prompts"])} prompts</div>'
            f'<div class="bx-top">{html.escape(top["prompt"])}</div>'
            f'<div>p = {100 * top["prob"]:.1f}% · logit std {top["std"]:.2f}</div>'
            f'<div class="bx-track"><div class="bx-bar" style="width:{100 * top["prob"]:.1f}%"></div></div>'
            f'<div>entropy {nats(s["entropy"])} nats (epistemic {nats(s["epistemic"])})</div>'
            f'<div class="bx-track"><div class="bx-bar bx-alea" style="width:{100 * alea / scale:.1f}%"></div>'
            f'<div class="bx-bar bx-epi" style="width:{100 * s["epistemic"] / scale:.1f}%"></div></div></div>')
    legend = ('<div class="bx-legend"><span class="bx-key bx-alea"></span> aleatoric '
              '<span class="bx-key bx-epi"></span> epistemic</div>')
    return f'<div class="bx-cards">{"".join(cards)}</div>{legend}'


# -- Explain ------------------------------------------------------------------------------------------------
def explain_prompt(vlm: Any, image: Any, prompts_text: str, prompt: str | None = None,
                   target: str = "image_variance", method: str = "integrated_gradients", steps: int = 16,
                   num_samples: int = 500) -> dict[str, Any]:
    """The Explain view: pixel attribution of ``target`` for ``prompt`` (any of the prompts; default the
    most probable) and the prompt's token scores of its text-side variance.

    Returns ``{"json": {...}, "figure": Figure, "tokens": html, "summary": markdown}``; the JSON holds
    ``entropy``/``aleatoric``/``epistemic`` (nats), the prompt's variance and its ``shares``, the attribution
    totals and the ``tokens`` (``token``, ``score``, ``special``).
    """
    from ..explain import TokenAttribution, UncertaintyAttribution
    from ..explain import figures as figs

    if target not in TARGET_UNITS:
        raise InputError(f"unknown target {target!r}; choose one of {sorted(TARGET_UNITS)}")
    if method not in EXPLAIN_METHODS.values():
        raise InputError(f"unknown method {method!r}; choose one of {sorted(EXPLAIN_METHODS.values())}")
    if not 1 <= int(steps) <= 64:
        raise InputError("steps must be between 1 and 64")
    prompts = parse_prompts(prompts_text)
    img = _image(image)
    x = vlm.preprocess_images([img])
    pred = recommended_prediction(vlm, vlm.encode_images(x), prompts)
    if prompt:
        prompt = clean_prompt(prompt, 0)
        if prompt not in prompts:
            raise InputError(f"the prompt to explain, {prompt[:60]!r}, is not among the prompts")
        k = prompts.index(prompt)
    else:
        k = int(pred.probs[0].argmax())
    total, alea, epi = entropy_parts(pred)
    attr = UncertaintyAttribution(vlm, target=target, num_samples=num_samples).attribute(
        x, prompts, prompt_index=k, method=method, n_steps=int(steps))
    tok = TokenAttribution(vlm, target="text_variance").attribute(x, prompts[k], n_steps=int(steps))
    unit = TARGET_UNITS[target]
    norm = getattr(vlm.preprocess, "transforms", [None])[-1]
    figure = figs.attribution_panels_figure(
        x[0], attr.attributions[0], patch_size=attr.patch_size, mean=getattr(norm, "mean", None),
        std=getattr(norm, "std", None), unit=unit)
    var = float(pred.var[0, k])
    heat = attr.attributions[0].sum(0)
    tokens = [{"token": t, "score": float(s), "special": bool(sp)}
              for t, s, sp in zip(tok.tokens, tok.scores, tok.special, strict=True)]
    payload = {
        "prompt": prompts[k], "prompt_index": k, "target": target, "method": method, "steps": int(steps),
        "entropy": float(total[0]), "aleatoric": float(alea[0]), "epistemic": float(epi[0]),
        "prob": float(pred.probs[0, k]), "map_prob": float(pred.map_probs[0, k]),
        "mean": float(pred.mean[0, k]), "var": var,
        "shares": {"image": float(pred.var_image[0, k]) / var, "text": float(pred.var_text[0, k]) / var,
                   "interaction": float(pred.var_interaction[0, k]) / var},
        "attribution": {"unit": unit, "target_value": float(attr.target_values[0]), "sum": float(heat.sum()),
                        "max_abs": float(heat.abs().max()),
                        "delta": None if attr.delta is None else float(attr.delta[0])},
        "tokens": tokens,
        "token_target": {"name": "text_variance", "unit": "squared logits", "value": tok.target_value},
    }
    return {"json": payload, "figure": figure, "tokens": token_html(tokens), "summary": explain_summary(payload)}


def explain_summary(p: dict[str, Any]) -> str:
    """The explained prompt's numbers in two lines."""
    s = p["shares"]
    return (f"**{p['prompt']}**: p = {100 * p['prob']:.1f}% (deterministic {100 * p['map_prob']:.1f}%), logit "
            f"{p['mean']:.2f} ± {math.sqrt(p['var']):.2f}; variance shares image {s['image']:.0%}, text "
            f"{s['text']:.0%}, interaction {s['interaction']:.0%}.\n\nImage: entropy {nats(p['entropy'])} nats = "
            f"aleatoric {nats(p['aleatoric'])} + epistemic {nats(p['epistemic'])}. Heatmap: {p['target']} in "
            f"{p['attribution']['unit']} ({p['method']}), total {p['attribution']['sum']:+.3g}.")


def token_html(tokens: list[dict[str, Any]]) -> str:
    """The prompt's tokens as chips coloured by score (red adds text-side variance, blue removes it)."""
    vmax = max((abs(t["score"]) for t in tokens if not t["special"]), default=0.0) or 1.0
    chips = []
    for t in tokens:
        if t["special"]:
            chips.append(f'<span class="bx-tok bx-special">{html.escape(t["token"])}</span>')
            continue
        a = min(1.0, abs(t["score"]) / vmax)
        rgb = "214,39,40" if t["score"] > 0 else "31,119,180"
        chips.append(f'<span class="bx-tok" style="background:rgba({rgb},{0.15 + 0.6 * a:.2f})">'
                     f'{html.escape(t["token"])}<small>{t["score"]:+.2g}</small></span>')
    return (f'<div class="bx-tokens">{"".join(chips)}</div><div class="bx-legend">score = share of the '
            "prompt's text-side logit variance (squared logits); red raises it, blue lowers it</div>")


# -- Batch --------------------------------------------------------------------------------------------------
def batch_table(vlm: Any, images: Sequence[Any], prompts_text: str, yardstick: Yardstick | None = None
                ) -> dict[str, Any]:
    """The Batch view: one row per image (:data:`BATCH_HEADERS`), the most epistemically uncertain first.

    Returns ``{"rows", "json": {"images": [{"name", "classes", "image"}]}, "csv": text}``.
    """
    prompts = parse_prompts(prompts_text)
    images = [p for p in (images or []) if p]
    if not images:
        raise InputError("upload one or more images first")
    if len(images) > MAX_BATCH_IMAGES:
        raise InputError(f"{len(images)} images given; a batch takes at most {MAX_BATCH_IMAGES}")
    feats = vlm.encode_images([_image(p) for p in images])
    pred = recommended_prediction(vlm, feats, prompts)
    total, alea, epi = entropy_parts(pred)
    ys = yardstick_json(vlm, yardstick, feats)
    entries = []
    for n, path in enumerate(images):
        entries.append({"name": display_name(path), "classes": classes_json(pred, n),
                        "image": {"entropy": float(total[n]), "aleatoric": float(alea[n]),
                                  "epistemic": float(epi[n]), **ys[n]}})
    entries.sort(key=lambda e: -e["image"]["epistemic"])
    rows = []
    for e in entries:
        top = max(e["classes"], key=lambda c: c["prob"])
        pct = e["image"]["percentiles"]
        unusual = round(max(pct["epistemic"], pct["input_scale"]), 1) if pct else None
        rows.append([e["name"], top["prompt"], round(top["prob"], 4), round(top["map_prob"], 4),
                     round(math.sqrt(top["var"]), 3), significant(e["image"]["entropy"]),
                     significant(e["image"]["epistemic"]), unusual, e["image"]["out_of_domain"]])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(BATCH_HEADERS)
    writer.writerows([[_csv_cell(v) for v in row] for row in rows])
    return {"rows": rows, "json": {"prompts": prompts, "images": entries}, "csv": buf.getvalue()}


def _csv_cell(value: Any) -> Any:
    """User text that a spreadsheet would run as a formula gets a leading apostrophe."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# -- Calibrate ------------------------------------------------------------------------------------------
def default_template(vlm: Any) -> str:
    """The class-prompt template offered for ``vlm``: its assets' template, else the photo one."""
    from ..evaluation.evaluate import DEFAULT_TEMPLATE

    return getattr(getattr(vlm, "assets", None), "template", None) or DEFAULT_TEMPLATE


def _check_count(count: int, archive: str, what: str) -> None:
    if count > MAX_ARCHIVE_IMAGES:
        raise ArchiveError(f"{archive}: {count} {what}; the studio takes at most {MAX_ARCHIVE_IMAGES}")


def calibrate_archive(vlm: Any, archive: Any, template: str) -> dict[str, Any]:
    """The Calibrate view: a labelled zip (one folder per class) evaluated deterministic vs Bayes.

    The folder names (``_`` as spaces) fill ``template``; metrics, misclassification AUROCs and settings
    are those of :func:`~bayesvlm_explain.evaluation.evaluate.evaluate` with the studio's recommended
    predictive. Returns ``{"json": evaluation payload (+ "refused"), "figure": reliability diagram,
    "summary": markdown}``.
    """
    from ..data.pairs import InMemoryPairs
    from ..evaluation.evaluate import EvaluationError, LabeledData, class_prompts, evaluate, summary_markdown
    from ..explain.figures import reliability_diagram

    if not archive:
        raise InputError("upload a zip of labelled images first (one folder per class)")
    name = display_name(archive)
    with extracted(archive) as root:
        tree = image_files(root, name, need_classes=True)
        _check_count(len(tree.all_images()), name, "images")
        classnames = [c.replace("_", " ").strip() for c in tree.classes]
        if len(classnames) > MAX_PROMPTS:
            raise ArchiveError(f"{name}: {len(classnames)} class folders; the studio takes at most {MAX_PROMPTS}")
        try:
            parse_prompts("\n".join(class_prompts(classnames, (template or "").strip())), "class prompts")
            data = LabeledData(InMemoryPairs([(str(f), c.replace("_", " ").strip()) for f, c in tree.all_images()]),
                               classnames, name)
            result = evaluate(vlm, data, template=template.strip(), predictive=RECOMMENDED,
                              num_samples=NUM_SAMPLES, progress=False)
        except EvaluationError as err:
            raise InputError(str(err)) from None
    payload = {k: v for k, v in result.report.items() if k != "cache"}  # no feature cache in the studio
    payload.update(data=name, refused=tree.refused)
    figure = reliability_diagram(result.probs, result.labels, n_bins=payload["settings"]["ece_bins"],
                                 title=f"reliability: {name}")
    summary = summary_markdown(payload).split("\n", 1)[1].strip()
    if tree.refused:
        summary += f"\n\nRefused files ({len(tree.refused)}): " + "; ".join(tree.refused[:5])
    return {"json": payload, "figure": figure, "summary": summary}


# -- Select ---------------------------------------------------------------------------------------------
def _archive_images(vlm: Any, archive: Any) -> tuple[list[dict[str, Any]], Features, list[str]]:
    """``[{"image", "folder"}]``, the encoded features [N, ...] and the refused files of one image zip."""
    name = display_name(archive)
    with extracted(archive) as root:
        tree = image_files(root, name)
        items = tree.all_images()
        _check_count(len(items), name, "images")
        parts = [vlm.encode_images([open_upload(f) for f, _ in items[i:i + 16]])  # 16 decoded at a time
                 for i in range(0, len(items), 16)]
        entries = [{"image": f.relative_to(root).as_posix(), "folder": c} for f, c in items]
    feats = Features(torch.cat([f.activations for f in parts]), torch.cat([f.embeddings for f in parts]))
    return entries, feats, tree.refused


def _spaced(count: int, limit: int) -> list[int]:
    """At most ``limit`` evenly spaced indices of ``range(count)``."""
    return list(range(count)) if count <= limit else [round(i * (count - 1) / (limit - 1)) for i in range(limit)]


def select_archive(vlm: Any, pool: Any, prompts_text: str, targets: Any = None) -> dict[str, Any]:
    """The Select view: every pool image scored by predictive entropy, BALD and EPIG (nats).

    Pool and EPIG targets (the pool itself, or the images of ``targets``; at most
    :data:`MAX_EPIG_TARGETS`, evenly spaced) are scored by the library's
    :func:`~bayesvlm_explain.selection.pool_scores` (joint draws, :data:`SELECT_SAMPLES` of them, seed 0).
    Returns ``{"json": {...}, "rows": SELECT_HEADERS rows (top picks), "csv": every image}``.
    """
    from ..selection import pool_scores

    prompts = parse_prompts(prompts_text)
    if len(prompts) < 2:
        raise InputError("give at least 2 class prompts to rank the pool by")
    if not pool:
        raise InputError("upload a zip of pool images first")
    entries, feats, refused = _archive_images(vlm, pool)
    if targets:
        _, target_feats, t_refused = _archive_images(vlm, targets)
        refused += [f"{display_name(targets)}/{r}" for r in t_refused]
        target_source = display_name(targets)
    else:
        target_feats, target_source = feats, "the pool"
    keep = _spaced(int(target_feats.embeddings.shape[0]), MAX_EPIG_TARGETS)
    n = int(feats.embeddings.shape[0])
    target_feats = Features(target_feats.activations[keep], target_feats.embeddings[keep])
    scores = pool_scores(vlm, feats, vlm.encode_prompts(prompts), SELECT_SAMPLES, torch.Generator().manual_seed(0),
                         target_feats)
    ranks = {k: torch.sort(v, descending=True, stable=True).indices.tolist() for k, v in scores.items()}
    for e_i, e in enumerate(entries):
        e.update({k: float(v[e_i]) for k, v in scores.items()})
    for k, order in ranks.items():
        for r, i in enumerate(order):
            entries[i][f"rank_{k}"] = r + 1
    rows = []
    for r in range(min(SELECT_SHOWN, n)):
        row: list[Any] = [r + 1]
        for k in ("entropy", "bald", "epig"):
            e = entries[ranks[k][r]]
            row += [e["image"], significant(e[k])]
        rows.append(row)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SELECT_CSV_HEADERS)
    for e in sorted(entries, key=lambda e: e["rank_epig"]):
        writer.writerow([_csv_cell(e["image"]), _csv_cell(e["folder"] or ""), *(e[h] for h in SELECT_CSV_HEADERS[2:])])
    payload = {"prompts": prompts, "pool": display_name(pool), "images": n, "targets": len(keep),
               "target_source": target_source, "num_samples": SELECT_SAMPLES, "seed": 0,
               "ranking": {k: [entries[i]["image"] for i in order] for k, order in ranks.items()},
               "scores": entries, "refused": refused}
    return {"json": payload, "rows": rows, "csv": buf.getvalue(), "summary": select_summary(payload)}


def select_summary(p: dict[str, Any]) -> str:
    """Pool and target sizes, and whether the three functions agree on the first pick."""
    firsts = {k: v[0] for k, v in p["ranking"].items()}
    text = (f"{p['images']} pool images ranked over {len(p['prompts'])} class prompts, {p['num_samples']} joint "
            f"posterior draws; EPIG targets: {p['targets']} images of {p['target_source']}.")
    if len(set(firsts.values())) == 1:
        text += f" All three functions pick **{firsts['entropy']}** first."
    else:
        text += " First picks: " + "; ".join(f"{k}: **{v}**" for k, v in firsts.items()) + "."
    if p["refused"]:
        text += f"\n\nRefused files ({len(p['refused'])}): " + "; ".join(p["refused"][:5])
    return text
