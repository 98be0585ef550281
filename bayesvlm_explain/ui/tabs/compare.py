"""The Compare tab: one image against 2-4 prompt sets or templates."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...inputs import InputError
from ..views import MAX_SETS, classes_json, entropy_parts, image_of, nats, parse_prompts, recommended_prediction
from .base import StudioContext

if TYPE_CHECKING:
    from ...model import BayesVLM

NOTE = (
    "The same image against several wordings. Lower entropy means the wording makes the model more "
    "certain; the epistemic part is the share caused by not knowing the weights. A set given as one line "
    "with `{}` is a template, filled with each label."
)
"""The tab's "what does this mean?" text."""


@dataclass
class CompareResult:
    """What :func:`compare_sets` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /compare API payload
        html: side-by-side cards (HTML)
        summary: Markdown
    """

    json: dict[str, Any]
    html: str
    summary: str


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


def compare_sets(vlm: BayesVLM, image: Any, set_texts: Sequence[str], labels_text: str = "") -> CompareResult:
    """The Compare view: one image against 2-4 prompt sets (empty sets ignored).

    Returns ``{"json": {"sets": [{"prompts", "classes", "top", "entropy", "epistemic", "relative_entropy"}],
    "most_certain", "agree"}, "html": side-by-side summary, "summary": markdown}``. ``relative_entropy`` is
    the entropy over ``log C``; sets of different sizes are ranked by it, sets of one size by the entropy.
    """
    texts = [t for t in set_texts if t and t.strip()]
    if len(texts) < 2:
        raise InputError("give at least 2 prompt sets to compare")
    if len(texts) > MAX_SETS:
        raise InputError(f"{len(texts)} prompt sets given; compare at most {MAX_SETS}")
    labels = [ln.strip() for ln in (labels_text or "").splitlines() if ln.strip()]
    sets = [expand_set(t, labels, i) for i, t in enumerate(texts)]
    feats = vlm.encode_images([image_of(image)])
    out: list[dict[str, Any]] = []
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
    for s in out:  # entropy as a share of its maximum log C: comparable across sets of different sizes
        s["relative_entropy"] = s["entropy"] / math.log(len(s["prompts"])) if len(s["prompts"]) > 1 else 0.0
    most = int(np.argmin([s["entropy" if same_size else "relative_entropy"] for s in out]))
    payload = {"sets": out, "most_certain": most, "agree": len(set(tops)) == 1}
    return CompareResult(json=payload, html=compare_html(payload), summary=compare_summary(payload, same_size))



def compare_summary(payload: dict[str, Any], aligned: bool) -> str:
    """Which wording makes the model more certain, and whether the sets pick the same answer."""
    sets = payload["sets"]
    best = sets[payload["most_certain"]]
    text = (f"**Set {payload['most_certain'] + 1} makes the model most certain** (entropy {nats(best['entropy'])} "
            f"nats, epistemic {nats(best['epistemic'])}).")
    if not aligned:
        text = (f"**Set {payload['most_certain'] + 1} makes the model most certain** for its size: entropy "
                f"{nats(best['entropy'])} nats = {best['relative_entropy']:.0%} of the most its "
                f"{len(best['prompts'])} prompts allow (sets of different sizes are compared by this share).")
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


def page(ctx: StudioContext) -> None:
    """The Compare tab's components and its ``/compare`` endpoint."""
    import gradio as gr

    with gr.Row():
        sets = [gr.Textbox(lines=3, label=f"set {i + 1}", value=v, elem_id=f"set{i + 1}")
                for i, v in enumerate(["an emoji of {}", "a drawing of {}", "", ""])]
    set_labels = gr.Textbox(lines=2, label="labels for templates (one per line; {} is replaced)",
                            value="\n".join(template_labels(ctx.default_prompts)), elem_id="set-labels")
    compare_btn = gr.Button("compare", variant="primary", elem_id="compare-btn")
    compare_md = gr.Markdown(elem_id="compare-summary")
    compare_cards = gr.HTML()
    compare_json = ctx.json_and_note("compare", NOTE)

    def run(image: Any, s1: str, s2: str, s3: str, s4: str, labels_text: str) -> tuple[Any, ...]:
        out = compare_sets(ctx.vlm, image, [s1, s2, s3, s4], labels_text)
        return out.summary, out.html, out.json

    ctx.wire(compare_btn, run, [ctx.image, *sets, set_labels], [compare_md, compare_cards, compare_json],
             "compare", lambda im, *_: im, "light", 2)
