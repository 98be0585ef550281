"""The Explain tab: pixel and token attributions of one target for any prompt."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ...inputs import InputError, check_number
from ...options import PixelMethod
from ..views import (
    EXPLAIN_METHODS,
    EXPLAIN_TARGETS,
    MAX_PROMPTS,
    TARGET_UNITS,
    clean_prompt,
    entropy_parts,
    image_of,
    nats,
    parse_prompts,
    recommended_prediction,
)
from .base import StudioContext

if TYPE_CHECKING:
    from ...model import BayesVLM

NOTE = (
    "Which pixels raise (red) or lower (blue) the chosen quantity for the chosen prompt; the colour bar "
    "is in the quantity's unit per pixel (left) and per ViT patch (right). Integrated gradients' values "
    "add up to the change from a grey image. The tokens show which words carry the prompt's text-side "
    "variance."
)
"""The tab's "what does this mean?" text."""


@dataclass
class ExplainResult:
    """What :func:`explain_prompt` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /explain API payload
        figure: the heat-map figure (matplotlib)
        tokens: token attributions (HTML)
        summary: Markdown
    """

    json: dict[str, Any]
    figure: Any
    tokens: str
    summary: str


def explain_prompt(vlm: BayesVLM, image: Any, prompts_text: str, prompt: str | None = None,
                   target: str = "image_variance", method: str = "integrated_gradients", steps: int = 16,
                   num_samples: int = 500) -> ExplainResult:
    """The Explain view: pixel attribution of ``target`` for ``prompt`` (any of the prompts; default the
    most probable) and the prompt's token scores of its text-side variance.

    Returns ``{"json": {...}, "figure": Figure, "tokens": html, "summary": markdown}``; the JSON holds
    ``entropy``/``aleatoric``/``epistemic`` (nats), the prompt's variance and its ``shares``, the attribution
    totals and the ``tokens`` (``token``, ``score``, ``special``).
    """
    from ...explain import TokenAttribution, UncertaintyAttribution
    from ...explain import figures as figs
    from ...explain.attribution import PixelTarget

    if target not in TARGET_UNITS:
        raise InputError(f"unknown target {target!r}; choose one of {sorted(TARGET_UNITS)}")
    if method not in EXPLAIN_METHODS.values():
        raise InputError(f"unknown method {method!r}; choose one of {sorted(EXPLAIN_METHODS.values())}")
    steps = int(check_number(steps, "steps", 1, 64, integer=True))
    prompts = parse_prompts(prompts_text)
    img = image_of(image)
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
    # both checked against the studio's choices above
    attr = UncertaintyAttribution(vlm, target=cast(PixelTarget, target), num_samples=num_samples).attribute(
        x, prompts, prompt_index=k, method=cast(PixelMethod, method), n_steps=int(steps))
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
    return ExplainResult(json=payload, figure=figure, tokens=token_html(tokens), summary=explain_summary(payload))



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


def page(ctx: StudioContext) -> None:
    """The Explain tab's components and its ``/explain`` endpoint."""
    import gradio as gr

    with gr.Row():
        prompt_pick = gr.Dropdown(choices=["", *ctx.default_prompts.splitlines()], value="",
                                  allow_custom_value=True, label="prompt (empty: the most probable)",
                                  elem_id="explain-prompt")
        target = gr.Dropdown(list(EXPLAIN_TARGETS), value=next(iter(EXPLAIN_TARGETS)), label="explain",
                             allow_custom_value=True)
        method = gr.Dropdown(list(EXPLAIN_METHODS), value=next(iter(EXPLAIN_METHODS)), label="method",
                             allow_custom_value=True)
        steps = gr.Slider(4, 64, value=16, step=4, label="steps (integrated gradients)")
    explain_btn = gr.Button("explain", variant="primary", elem_id="explain-btn")
    explain_md = gr.Markdown(elem_id="explain-summary")
    heat = gr.Plot(format="png", show_label=False, elem_id="heatmap")
    tokens = gr.HTML(elem_id="tokens")
    explain_json = ctx.json_and_note("explain", NOTE)

    def run(image: Any, prompts_text: str, prompt: str, target: str, method: str, steps: float) -> tuple:
        out = explain_prompt(ctx.vlm, image, prompts_text, prompt, EXPLAIN_TARGETS.get(target, target),
                             EXPLAIN_METHODS.get(method, method), steps)
        return out.summary, out.figure, out.tokens, out.json

    def choices(text: str) -> Any:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()][:MAX_PROMPTS]
        return gr.update(choices=["", *dict.fromkeys(lines)], value="")

    ctx.prompts.change(choices, ctx.prompts, prompt_pick, queue=False, api_visibility="private")
    ctx.wire(explain_btn, run, [ctx.image, ctx.prompts, prompt_pick, target, method, steps],
             [explain_md, heat, tokens, explain_json], "explain", lambda im, *_: im, "attribution", 1)
