"""The Inspect tab: one image; per prompt the probabilities and the logit mean and variance, per image the
entropy split and the yardstick verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...yardstick import Yardstick, ordinal
from ..uploads import display_name
from ..views import (
    TABLE_HEADERS,
    classes_json,
    entropy_parts,
    image_of,
    nats,
    parse_prompts,
    probability_bars_html,
    recommended_prediction,
    table_rows,
    yardstick_json,
)
from .base import StudioContext

if TYPE_CHECKING:
    from ...model import BayesVLM

NOTE = (
    "Each prompt's logit has a mean and a standard deviation from the Laplace posterior over the two "
    "projection layers. *p (MC)* averages the softmax over logit draws (the recommended predictive); "
    "*deterministic* ignores the uncertainty. The shares say whether the variance comes from the image "
    "projection, the text projection or their interaction. The verdict compares the image with the "
    "model's own in-domain images (against its own label set): a high percentile means the model has seen "
    "few images like it."
)
"""The tab's "what does this mean?" text."""


@dataclass
class InspectResult:
    """What :func:`inspect_image` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /predict API payload ``{"classes": [...], "image": {...}}``
        rows: rows of :data:`~.views.TABLE_HEADERS`
        bars: probability bars (HTML)
        verdict: per-image summary (Markdown)
    """

    json: dict[str, Any]
    rows: list[list[Any]]
    bars: str
    verdict: str


def inspect_image(vlm: BayesVLM, image: Any, prompts_text: str, yardstick: Yardstick | None = None) -> InspectResult:
    """The Inspect view of one uploaded image.

    Returns ``{"json": {"classes": [...], "image": {...}}, "rows": TABLE_HEADERS rows, "bars": html,
    "verdict": markdown}``; entropies in nats, over the typed prompts.
    """
    prompts = parse_prompts(prompts_text)
    feats = vlm.encode_images([image_of(image)])
    pred = recommended_prediction(vlm, feats, prompts)
    total, alea, epi = entropy_parts(pred)
    ys = yardstick_json(vlm, yardstick, feats)[0]
    classes = classes_json(pred)
    summary: dict[str, Any] = {"name": display_name(image), "entropy": float(total[0]),
                               "aleatoric": float(alea[0]), "epistemic": float(epi[0]), **ys}
    return InspectResult(json={"classes": classes, "image": summary}, rows=table_rows(classes),
                         bars=probability_bars_html(classes), verdict=verdict_markdown(summary))



def verdict_markdown(image: dict[str, Any]) -> str:
    """The per-image summary: warning (if out of domain), verdict, entropy split and percentiles."""
    lines = []
    if image["out_of_domain"]:
        lines.append("### ⚠ Outside what this model knows: do not trust this answer")
    lines.append(f"**{image['verdict']}**")
    lines.append(f"Predictive entropy over these prompts **{nats(image['entropy'])}** nats = aleatoric "
                 f"{nats(image['aleatoric'])} + epistemic {nats(image['epistemic'])}.")
    rates = image.get("flag_rates") or {}
    if "in_domain" in rates:
        others = ", ".join(f"{name} {rate:.0%}" for name, rate in rates.items() if name != "in_domain")
        lines.append(f"How far to trust the flag: it fires on {rates['in_domain']:.0%} of held-out in-domain "
                     "images" + (f"; measured on images outside the domain: {others}." if others else "."))
    if image["percentiles"]:
        p = image["percentiles"]
        lines.append(f"Against the model's own labels: epistemic (BALD) at the {ordinal(p['epistemic'])} "
                     f"percentile, image input scale at the {ordinal(p['input_scale'])}, entropy at the "
                     f"{ordinal(p['entropy'])} of its in-domain images.")
    return "\n\n".join(lines)


def page(ctx: StudioContext) -> None:
    """The Inspect tab's components and its ``/predict`` endpoint."""
    import gradio as gr

    predict_btn = gr.Button("predict", variant="primary", elem_id="predict-btn")
    verdict = gr.Markdown(elem_id="verdict")
    bars = gr.HTML(elem_id="bars")
    table = gr.Dataframe(headers=TABLE_HEADERS, label="per prompt", interactive=False, wrap=True,
                         elem_classes="bx-scroll")
    predict_json = ctx.json_and_note("predict", NOTE)

    def run(image: Any, prompts_text: str) -> tuple[Any, ...]:
        out = inspect_image(ctx.vlm, image, prompts_text, ctx.yardstick)
        return out.verdict, out.bars, out.rows, out.json

    ctx.wire(predict_btn, run, [ctx.image, ctx.prompts], [verdict, bars, table, predict_json], "predict",
             lambda im, *_: im, "light", 2)
