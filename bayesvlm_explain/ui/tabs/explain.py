"""The Explain tab: pixel and token attributions of one target for any prompt."""

from __future__ import annotations

import html
import math
import time
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
    from ...explain.attribution import BaselineCache
    from ...model import BayesVLM

NOTE = (
    "Which pixels raise (red) or lower (blue) the chosen quantity for the chosen prompt. The figure's colour "
    "bars are in the quantity's unit per pixel (upper panel) and per ViT patch (lower panel); the coloured "
    "image shows the per-patch map over the image at its own resolution (the parts outside the model's "
    "centre crop are dimmed). Integrated gradients' values add up to the change from a grey image; 8 steps "
    "are fast, 32 steps (the precise button) integrate more finely. The tokens show which words carry the "
    "prompt's text-side variance."
)
"""The tab's "what does this mean?" text."""
FAST_STEPS = 8
"""Integration steps of the default (fast) explanation."""
PRECISE_STEPS = 32
"""Integration steps of the precise explanation (one click away)."""


@dataclass
class ExplainResult:
    """What :func:`explain_prompt` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /explain API payload
        figure: the heat-map figure (matplotlib)
        tokens: token attributions (HTML)
        summary: Markdown
        overlay: the heatmap blended into the image at the image's own resolution (PIL)
    """

    json: dict[str, Any]
    figure: Any
    tokens: str
    summary: str
    overlay: Any = None


def explain_prompt(vlm: BayesVLM, image: Any, prompts_text: str, prompt: str | None = None,
                   target: str = "image_variance", method: str = "integrated_gradients", steps: float = FAST_STEPS,
                   num_samples: int = 500, baseline_cache: BaselineCache | None = None) -> ExplainResult:
    """The Explain view: pixel attribution of ``target`` for ``prompt`` (any of the prompts; default the
    most probable) and the prompt's token scores of its text-side variance.

    The image is encoded once, for the prediction, the pixel attribution's end value and the token attribution;
    ``baseline_cache`` (kept by the page across calls) holds the grey image's encoding. Returns an
    :class:`ExplainResult`; its JSON holds ``entropy``/``aleatoric``/``epistemic`` (nats), the prompt's
    variance and its ``shares``, the attribution totals, the ``tokens`` (``token``, ``score``, ``special``)
    and ``seconds`` (wall time of the whole call, of the pixel and of the token attribution).
    """
    start = time.perf_counter()
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
    feats = vlm.encode_images(x)
    pred = recommended_prediction(vlm, feats, prompts)
    if prompt:
        prompt = clean_prompt(prompt, 0)
        if prompt not in prompts:
            raise InputError(f"the prompt to explain, {prompt[:60]!r}, is not among the prompts")
        k = prompts.index(prompt)
    else:
        k = int(pred.probs[0].argmax())
    total, alea, epi = entropy_parts(pred)
    # both checked against the studio's choices above
    t_pixels = time.perf_counter()
    attr = UncertaintyAttribution(vlm, target=cast(PixelTarget, target), num_samples=num_samples,
                                  baseline_cache=baseline_cache).attribute(
        x, prompts, prompt_index=k, method=cast(PixelMethod, method), n_steps=int(steps), features=feats)
    t_tokens = time.perf_counter()
    tok = TokenAttribution(vlm, target="text_variance").attribute(feats, prompts[k], n_steps=int(steps))
    t_figure = time.perf_counter()
    unit = TARGET_UNITS[target]
    norm = getattr(vlm.preprocess, "transforms", [None])[-1]
    figure = figs.attribution_panels_figure(
        x[0], attr.attributions[0], patch_size=attr.patch_size, mean=getattr(norm, "mean", None),
        std=getattr(norm, "std", None), unit=unit)
    overlay = figs.attribution_overlay_image(img, attr.attributions[0], patch_size=attr.patch_size,
                                             transform=vlm.preprocess)
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
    end = time.perf_counter()
    payload["seconds"] = {"total": end - start, "pixels": t_tokens - t_pixels, "tokens": t_figure - t_tokens}
    return ExplainResult(json=payload, figure=figure, tokens=token_html(tokens), summary=explain_summary(payload),
                         overlay=overlay)



def explain_summary(p: dict[str, Any]) -> str:
    """The explained prompt's numbers in two lines."""
    s = p["shares"]
    steps = f", {p['steps']} steps" if p["method"] == "integrated_gradients" else ""
    timing = f" Computed in {p['seconds']['total']:.2f} s." if "seconds" in p else ""
    a = p["attribution"]
    if a["delta"] is not None:  # integrated gradients: how far the map is from adding up to the change
        gap = abs(a["delta"]) / max(abs(a["sum"] - a["delta"]), 1e-300)
        timing += f" The map adds up to the change from a grey image within {100 * gap:.2g}%"
        timing += (f"; use {PRECISE_STEPS} steps (the precise button) for a closer sum." if gap > 0.05 else ".")
    return (f"**{p['prompt']}**: p = {100 * p['prob']:.1f}% (deterministic {100 * p['map_prob']:.1f}%), logit "
            f"{p['mean']:.2f} ± {math.sqrt(p['var']):.2f}; variance shares image {s['image']:.0%}, text "
            f"{s['text']:.0%}, interaction {s['interaction']:.0%}.\n\nImage: entropy {nats(p['entropy'])} nats = "
            f"aleatoric {nats(p['aleatoric'])} + epistemic {nats(p['epistemic'])}. Heatmap: {p['target']} in "
            f"{p['attribution']['unit']} ({p['method']}{steps}), total {p['attribution']['sum']:+.3g}."
            f"{timing}")


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

    from ...explain.attribution import BaselineCache

    baselines = BaselineCache()  # the grey image's encoding, shared by this page's calls
    # min_width: the longest choice ("image-side variance of the prompt") is shown whole; the row wraps
    with gr.Row(equal_height=True):
        prompt_pick = gr.Dropdown(choices=["", *ctx.default_prompts.splitlines()], value="",
                                  allow_custom_value=True, label="prompt (empty: the most probable)",
                                  elem_id="explain-prompt", min_width=260)
        target = gr.Dropdown(list(EXPLAIN_TARGETS), value=next(iter(EXPLAIN_TARGETS)), label="explain",
                             allow_custom_value=True, min_width=300, elem_id="explain-target")
    with gr.Row(equal_height=True):
        method = gr.Dropdown(list(EXPLAIN_METHODS), value=next(iter(EXPLAIN_METHODS)), label="method",
                             allow_custom_value=True, min_width=220, elem_id="explain-method")
        steps = gr.Slider(4, 64, value=FAST_STEPS, step=4, label="steps (integrated gradients)", min_width=220,
                          elem_id="explain-steps")
    with gr.Row():
        explain_btn = gr.Button(f"explain ({FAST_STEPS} steps: fast)", variant="primary", elem_id="explain-btn")
        precise_btn = gr.Button(f"explain precisely (integrated gradients, {PRECISE_STEPS} steps)",
                                elem_id="explain-precise")
    explain_md = gr.Markdown(elem_id="explain-summary")
    with gr.Row():
        heat = gr.Plot(format="png", show_label=False, elem_id="heatmap")
        overlay = gr.Image(label="per-patch map over the image (its own resolution)", type="pil", format="png",
                           interactive=False, buttons=[], elem_id="explain-overlay")
    tokens = gr.HTML(elem_id="tokens")
    explain_json = ctx.json_and_note("explain", NOTE)

    def run(image: Any, prompts_text: str, prompt: str, target: str, method: str, steps: float) -> tuple:
        out = explain_prompt(ctx.vlm, image, prompts_text, prompt, EXPLAIN_TARGETS.get(target, target),
                             EXPLAIN_METHODS.get(method, method), steps, baseline_cache=baselines)
        return out.summary, out.figure, out.tokens, out.json, out.overlay

    def label(steps: float) -> Any:
        return gr.update(value=f"explain ({int(steps)} steps{': fast' if int(steps) <= FAST_STEPS else ''})")

    ig = next(k for k, v in EXPLAIN_METHODS.items() if v == "integrated_gradients")
    steps.change(label, steps, explain_btn, queue=False, api_visibility="private")
    # the precise button sets the method and steps, then clicks "explain" (the same guarded /explain endpoint)
    precise_btn.click(lambda: (ig, PRECISE_STEPS), None, [method, steps], queue=False,
                      api_visibility="private").then(
        None, None, None, js="() => document.querySelector('#explain-btn').click()", api_visibility="private")

    def choices(text: str) -> Any:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()][:MAX_PROMPTS]
        return gr.update(choices=["", *dict.fromkeys(lines)], value="")

    ctx.prompts.change(choices, ctx.prompts, prompt_pick, queue=False, api_visibility="private")
    ctx.wire(explain_btn, run, [ctx.image, ctx.prompts, prompt_pick, target, method, steps],
             [explain_md, heat, tokens, explain_json, overlay], "explain", lambda im, *_: im, "attribution", 1)
