"""The studio: a Gradio front end over :class:`~bayesvlm_explain.BayesVLM` (UI only; all logic is in the library).

Users upload an image, type prompts (one per line) and get, per prompt, the logit mean ± std, the
probit / Monte Carlo / deterministic probabilities and the image/text/interaction shares of the
variance. Bad input yields a message, never a crash; requests are queued with a bounded size so that
too many concurrent users get "queue full" rather than an overloaded server.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .inputs import InputError, check_prompts, load_image
from .model import BayesVLM
from .posterior import PosteriorError

MAX_PROMPTS = 64
TABLE_HEADERS = ["prompt", "logit mean", "logit std", "p (probit)", "p (MC)", "p (deterministic)",
                 "image share", "text share", "interaction share"]


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-blank line (at most :data:`MAX_PROMPTS`)."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{len(prompts)} prompts given; the studio takes at most {MAX_PROMPTS}")
    return check_prompts(prompts)


def prediction_table(vlm: BayesVLM, image: Any, prompts_text: str, num_samples: int = 2000) -> list[list[Any]]:
    """Rows of :data:`TABLE_HEADERS` for one image, sorted by probit probability."""
    prompts = parse_prompts(prompts_text)
    if image is None:
        raise InputError("upload an image first")
    img = load_image(image)
    pred = vlm.predict([img], prompts, predictive="probit", num_samples=num_samples)
    mc = pred.predictive("mc")[0]
    rows = []
    for c, prompt in enumerate(prompts):
        var = float(pred.var[0, c])
        rows.append([
            prompt, round(float(pred.mean[0, c]), 3), round(math.sqrt(var), 3),
            round(float(pred.probs[0, c]), 4), round(float(mc[c]), 4), round(float(pred.map_probs[0, c]), 4),
            round(float(pred.var_image[0, c]) / var, 3), round(float(pred.var_text[0, c]) / var, 3),
            round(float(pred.var_interaction[0, c]) / var, 3),
        ])
    return sorted(rows, key=lambda r: -r[3])


EXPLAIN_TARGETS = {"image-side variance of the top prompt": "image_variance",
                   "epistemic uncertainty (BALD)": "epistemic",
                   "total predictive entropy": "entropy",
                   "logit mean of the top prompt (contrast)": "mean"}
EXPLAIN_METHODS = {"integrated gradients (16 steps)": "integrated_gradients", "saliency": "saliency",
                   "occlusion (one patch)": "occlusion"}


def explain_views(vlm: BayesVLM, image: Any, prompts_text: str, target: str = "image_variance",
                  method: str = "integrated_gradients", num_samples: int = 500) -> dict[str, Any]:
    """The studio's figures for one image: class uncertainty, decomposition, pixel and token attributions.

    Returns a dict of matplotlib Figures (``classes``, ``decomposition``, ``pixels``, ``tokens``) and the
    decomposition's entropy split (``entropy``: total, aleatoric, epistemic in nats).
    """
    from .explain import TokenAttribution, UncertaintyAttribution, decompose_uncertainty
    from .explain import figures as figs

    prompts = parse_prompts(prompts_text)
    if image is None:
        raise InputError("upload an image first")
    img = load_image(image)
    pred = vlm.predict([img], prompts, num_samples=num_samples)
    dec = decompose_uncertainty(pred, num_samples=num_samples, seed=0)
    top = int(pred.probs[0].argmax())
    x = vlm.preprocess_images([img])
    attr = UncertaintyAttribution(vlm, target=target, num_samples=num_samples).attribute(
        x, prompts, prompt_index=top, method=method, n_steps=16)
    tok = TokenAttribution(vlm, target="text_variance").attribute(x, prompts[top], n_steps=16)
    norm = getattr(vlm.preprocess, "transforms", [None])[-1]
    return {
        "classes": figs.class_uncertainty_figure(pred),
        "decomposition": figs.decomposition_figure(dec),
        "pixels": figs.attribution_overlay_figure(
            x[0], attr.attributions[0], mean=getattr(norm, "mean", None), std=getattr(norm, "std", None),
            title=f"{target} ({method}), top prompt"),
        "tokens": figs.token_scores_figure(tok, title=f"text-side variance by token: '{prompts[top]}'"),
        "entropy": (float(dec.total_entropy[0]), float(dec.aleatoric[0]), float(dec.epistemic[0])),
    }


def build_app(vlm: BayesVLM, examples: list[list[Any]] | None = None, max_queue: int = 32) -> Any:
    """The studio as a ``gradio.Blocks`` (not launched)."""
    import gradio as gr
    import matplotlib

    matplotlib.use("Agg")

    def run(image: Any, prompts_text: str) -> Any:
        try:
            return prediction_table(vlm, image, prompts_text)
        except (InputError, PosteriorError) as err:
            raise gr.Error(str(err)) from err

    def explain(image: Any, prompts_text: str, target_label: str, method_label: str) -> Any:
        try:
            views = explain_views(vlm, image, prompts_text, EXPLAIN_TARGETS[target_label],
                                  EXPLAIN_METHODS[method_label])
        except (InputError, PosteriorError) as err:
            raise gr.Error(str(err)) from err
        total, alea, epi = views["entropy"]
        text = (f"predictive entropy **{total:.3f}** nats = aleatoric **{alea:.3f}** + "
                f"epistemic (BALD) **{epi:.3f}**")
        return views["classes"], views["decomposition"], views["pixels"], views["tokens"], text

    with gr.Blocks(title="bayesvlm-explain studio") as app:
        gr.Markdown(
            "# bayesvlm-explain studio\n"
            f"Model **{vlm.name}** on `{vlm.device}`. Each (image, prompt) logit has a mean and a variance "
            "from a Laplace posterior over the two projection layers; the variance splits into image, text "
            "and interaction parts, and its sources are traced back to pixels and tokens."
        )
        with gr.Row():
            image = gr.Image(type="filepath", label="image")
            with gr.Column():
                prompts = gr.Textbox(lines=6, label="prompts (one per line)",
                                     value="an emoji of cat face\nan emoji of dog face\nan emoji of pizza")
                target = gr.Dropdown(list(EXPLAIN_TARGETS), value=next(iter(EXPLAIN_TARGETS)),
                                     label="explain")
                method = gr.Dropdown(list(EXPLAIN_METHODS), value=next(iter(EXPLAIN_METHODS)),
                                     label="attribution method")
        with gr.Row():
            button = gr.Button("predict", variant="primary")
            explain_button = gr.Button("explain the uncertainty")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="per-prompt uncertainty", interactive=False)
        entropy = gr.Markdown()
        with gr.Row():
            classes_plot = gr.Plot(label="logit mean ± std; probit vs deterministic")
            decomposition_plot = gr.Plot(label="variance decomposition")
        with gr.Row():
            pixel_plot = gr.Plot(label="pixel attribution")
            token_plot = gr.Plot(label="token attribution")
        button.click(run, [image, prompts], table, concurrency_limit=2, api_name="predict")
        explain_button.click(explain, [image, prompts, target, method],
                             [classes_plot, decomposition_plot, pixel_plot, token_plot, entropy],
                             concurrency_limit=1, api_name="explain")
        if examples:
            gr.Examples(examples, [image, prompts])
    app.queue(max_size=max_queue, default_concurrency_limit=2)
    return app


def bundled_examples() -> list[list[Any]]:
    """``[[image_path, prompts_text], ...]`` from ``assets/examples/examples.json`` when present.

    Each example's prompts are its own label and two other examples' labels, in the bundled template.
    """
    import json

    from .bundled import bundled_dir
    from .data.labels import PROMPT_TEMPLATE

    index = bundled_dir().parent / "examples" / "examples.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text()).get("examples", [])
    labels = [str(item["label"]) for item in items]
    out = []
    for i, item in enumerate(items):
        path = index.parent / Path(item["file"]).name
        if path.is_file():
            chosen = [labels[i], labels[(i + 1) % len(labels)], labels[(i + 3) % len(labels)]]
            out.append([str(path), "\n".join(PROMPT_TEMPLATE.format(label=x) for x in chosen)])
    return out
