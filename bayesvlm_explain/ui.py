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


def build_app(vlm: BayesVLM, examples: list[list[Any]] | None = None, max_queue: int = 32) -> Any:
    """The studio as a ``gradio.Blocks`` (not launched)."""
    import gradio as gr

    def run(image: Any, prompts_text: str) -> Any:
        try:
            return prediction_table(vlm, image, prompts_text)
        except (InputError, PosteriorError) as err:
            raise gr.Error(str(err)) from err

    with gr.Blocks(title="bayesvlm-explain studio") as app:
        gr.Markdown(
            "# bayesvlm-explain studio\n"
            f"Model **{vlm.name}** on `{vlm.device}`. Each (image, prompt) logit has a mean and a variance "
            "from a Laplace posterior over the two projection layers; the variance splits into image, text "
            "and interaction parts."
        )
        with gr.Row():
            image = gr.Image(type="filepath", label="image")
            prompts = gr.Textbox(lines=6, label="prompts (one per line)",
                                 value="an emoji of a cat\nan emoji of a dog\nan emoji of a pizza")
        button = gr.Button("predict", variant="primary")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="per-prompt uncertainty", interactive=False)
        button.click(run, [image, prompts], table, concurrency_limit=2, api_name="predict")
        if examples:
            gr.Examples(examples, [image, prompts])
    app.queue(max_size=max_queue, default_concurrency_limit=2)
    return app


def bundled_examples() -> list[list[Any]]:
    """``[[image_path, prompts_text], ...]`` from ``assets/examples/examples.json`` when present."""
    import json

    from .bundled import BUNDLED_DIR

    index = BUNDLED_DIR.parent / "examples" / "examples.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text())
    items = items.get("examples", items) if isinstance(items, dict) else items
    out = []
    for item in items:
        path = index.parent / Path(item["file"]).name
        if path.is_file():
            out.append([str(path), "an emoji of a " + str(item.get("label", "thing"))
                        + "\nan emoji of a cat\nan emoji of a pizza"])
    return out
