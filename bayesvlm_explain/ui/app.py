"""The studio's Gradio page: six tabs wired to :mod:`.views` (the only module here that imports gradio).

* every run first clears all outputs it owns, then fills them; an error leaves them cleared, so results
  of two runs are never shown side by side;
* uploads arrive as files (never decoded by Gradio) and are checked by :mod:`.uploads` before PIL opens
  them; refused uploads are deleted at once, the rest by the server's cache cleanup; the upload size is
  capped by :meth:`StudioBlocks.launch`;
* zip uploads (Calibrate, Select) are checked and extracted by :mod:`.archives` into a temporary folder
  that is removed after the run;
* at most 2 light requests (predict, compare, batch) and 1 attribution or zip run at once; ``max_queue`` wait,
  and one browser session (or API client) may have at most ``per_client`` requests waiting or running;
* user errors come back as messages (no traceback in the server log, no server path in the text).
"""

from __future__ import annotations

import ctypes
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from ..inputs import InputError
from ..posterior import PosteriorError
from ..yardstick import Yardstick, YardstickError
from .uploads import EXTENSIONS, MAX_UPLOAD_BYTES, check_upload, discard
from .views import (
    BATCH_HEADERS,
    EXPLAIN_METHODS,
    EXPLAIN_TARGETS,
    MAX_PROMPTS,
    SELECT_HEADERS,
    TABLE_HEADERS,
    batch_table,
    calibrate_archive,
    compare_sets,
    default_template,
    explain_prompt,
    inspect_image,
    open_upload,
    select_archive,
    template_labels,
)

log = logging.getLogger(__name__)
USER_ERRORS = (InputError, PosteriorError, YardstickError)

CSS = """
.bx-bars, .bx-cards {font-size: 14px}
.bx-row {display: grid; grid-template-columns: minmax(7em, 1.4fr) 1fr 3.6em 1fr 3.6em; gap: 2px 8px;
         align-items: center; margin: 3px 0}
.bx-label {overflow-wrap: anywhere}
.bx-logit {grid-column: 1 / -1; color: #555; font-size: 12px; margin-top: -2px}
.bx-track {background: #eee; height: 12px; border-radius: 3px; overflow: hidden; display: flex}
.bx-key {display: inline-block; width: 12px; height: 12px; background: #2b6cb0; vertical-align: middle}
.bx-bar {background: #2b6cb0; height: 100%}
.bx-det {background: #a0a0a0}
.bx-alea {background: #7aa6d6}
.bx-epi {background: #d9534f}
.bx-num {text-align: right; font-variant-numeric: tabular-nums}
.bx-legend {font-size: 12px; color: #555; margin-top: 6px}
.bx-cards {display: flex; flex-wrap: wrap; gap: 10px}
.bx-card {flex: 1 1 220px; border: 1px solid #ccc; border-radius: 6px; padding: 8px}
.bx-card > div {margin: 3px 0}
.bx-best {border: 2px solid #2b6cb0}
.bx-cardhead {font-size: 12px; color: #555}
.bx-top {font-weight: 600; overflow-wrap: anywhere}
.bx-tokens {display: flex; flex-wrap: wrap; gap: 4px; font-size: 15px}
.bx-tok {padding: 2px 6px; border-radius: 4px; border: 1px solid #bbb}
.bx-tok small {margin-left: 4px; font-size: 11px; color: #333}
.bx-special {color: #888; font-style: italic; background: #f4f4f4}
.bx-tables table {display: block; overflow-x: auto; max-width: 100%}
.bx-tables th, .bx-tables td {white-space: nowrap}
"""

NOTES = {
    "inspect": "Each prompt's logit has a mean and a standard deviation from the Laplace posterior over the two "
               "projection layers. *p (MC)* averages the softmax over logit draws (the recommended predictive); "
               "*deterministic* ignores the uncertainty. The shares say whether the variance comes from the "
               "image projection, the text projection or their interaction. The verdict compares the image "
               "with the model's own in-domain images (against its own label set): a high percentile means the "
               "model has seen few images like it.",
    "compare": "The same image against several wordings. Lower entropy means the wording makes the model more "
               "certain; the epistemic part is the share caused by not knowing the weights. A set given as one "
               "line with `{}` is a template, filled with each label.",
    "explain": "Which pixels raise (red) or lower (blue) the chosen quantity for the chosen prompt; the colour bar "
               "is in the quantity's unit per pixel (left) and per ViT patch (right). Integrated gradients' "
               "values add up to the change from a grey image. The tokens show which words carry the prompt's "
               "text-side variance.",
    "batch": "One row per image, the most epistemically uncertain first; click a column header to sort. "
             "Download the table as CSV, or everything (every prompt of every image) as JSON.",
    "calibrate": "Upload a zip with one folder per class (the folder name fills the template's `{}`). "
                 "Calibration: among images predicted with confidence p, a fraction p should be right; the "
                 "reliability diagram plots accuracy against confidence, and ECE is the average gap. NLPD and "
                 "Brier score the probability given to the true class (lower is better). *deterministic* is "
                 "the model without uncertainty, *bayes* the Monte Carlo predictive of the other tabs. The "
                 "AUROC rows say how well each confidence score separates right from wrong predictions; "
                 "selective accuracy is the accuracy on the 50% / 80% most confident images.",
    "select": "Which unlabelled images would be most useful to label next (active learning). *Entropy*: the "
              "model is unsure (for any reason). *BALD*: the uncertainty comes from not knowing the weights, so "
              "a label would teach the model something. *EPIG*: the label would reduce uncertainty about the "
              "target images (the pool itself, or the optional target zip): picks that matter where you will "
              "use the model. All in nats, from the same joint posterior draws. The CSV lists every image.",
}


class StudioBlocks(gr.Blocks):
    """``gr.Blocks`` whose :meth:`launch` caps uploads at :data:`~.uploads.MAX_UPLOAD_BYTES` and adds the
    studio's style sheet by default."""

    def launch(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - same as gr.Blocks.launch
        kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
        kwargs.setdefault("css", CSS)
        return super().launch(*args, **kwargs)


def studio_extras(vlm: Any) -> tuple[Yardstick | None, list[str] | None, str]:
    """``vlm.assets``' yardstick and label prompts (``None`` where the model has none), and a note on them."""
    from ..pretrained.assets import ModelAssets

    assets = getattr(vlm, "assets", None) or ModelAssets()
    return assets.yardstick, assets.prompts(), assets.yardstick_note


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere).

    Requests allocate and free short-lived tensors (hundreds of MB for an attribution run) on changing
    worker threads; glibc keeps the freed pages in per-thread arenas, so the server's memory grew call after
    call although nothing leaked (``benchmarks/load_studio.py --explain`` measures it).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _pending(blocks: gr.Blocks, session: str | None) -> int | None:
    """Requests of one session waiting in or running on the queue, or ``None`` when this gradio keeps its
    queue in another shape.

    Gradio has no public per-session count, so this reads its queue's state (``event_queue_per_concurrency_id``
    and ``active_jobs``, gradio 5-6); the real-launch test in ``tests/test_ui.py`` fails if that changes.
    """
    try:
        queue = blocks._queue
        waiting = sum(ev.session_hash == session for q in queue.event_queue_per_concurrency_id.values()
                      for ev in q.queue)
        running = sum(ev.session_hash == session for jobs in queue.active_jobs if jobs for ev in jobs)
    except (AttributeError, TypeError):
        return None
    return waiting + running


def _json_and_note(api_name: str, note: str) -> gr.JSON:
    """A tab's footer: the endpoint's JSON (collapsed) and its "what does this mean?" note; returns the JSON."""
    with gr.Accordion(f"JSON (what the /{api_name} API returns)", open=False):
        out = gr.JSON(show_label=False)
    with gr.Accordion("what does this mean?", open=False):
        gr.Markdown(NOTES[note])
    return out


def _user_error(err: Exception, uploads: list[Any]) -> gr.Error:
    """A message for the user (logged without traceback); refused uploads in gradio's cache are deleted."""
    cache = Path(get_upload_folder()).resolve()
    for path in uploads:
        if path and Path(path).resolve().is_relative_to(cache):
            try:
                check_upload(path)
            except InputError:
                discard(path)
    log.info("refused request: %s", err)
    return gr.Error(str(err), print_exception=False)


def build_app(vlm: Any, examples: list[list[Any]] | None = None, max_queue: int = 32, per_client: int = 4,
              yardstick: Yardstick | None = None, labels: list[str] | None = None) -> StudioBlocks:
    """The studio as a :class:`StudioBlocks` (not launched). The yardstick and the label set come from
    ``vlm.assets`` unless given."""
    auto_ys, auto_labels, ys_note = studio_extras(vlm)
    if yardstick is not None:
        ys_note = f"Yardstick: {yardstick.reference}."
    yardstick = yardstick or auto_ys
    labels = labels or auto_labels
    downloads = Path(tempfile.mkdtemp(prefix="bayesvlm-studio-"))
    default_prompts = examples[0][1] if examples else "a photo of a cat\na photo of a dog\na photo of a car"

    def guard(fn: Any, uploads: Any) -> Any:
        def run(*args: Any) -> Any:
            trim_heap()  # what earlier requests freed (costs microseconds)
            try:
                return fn(*args)
            except USER_ERRORS as err:
                files = uploads(*args)
                raise _user_error(err, files if isinstance(files, list) else [files]) from None
        return run

    def inspect(image: Any, prompts_text: str) -> tuple[Any, ...]:
        out = inspect_image(vlm, image, prompts_text, yardstick)
        return out["verdict"], out["bars"], out["rows"], out["json"]

    def compare(image: Any, s1: str, s2: str, s3: str, s4: str, labels_text: str) -> tuple[Any, ...]:
        out = compare_sets(vlm, image, [s1, s2, s3, s4], labels_text)
        return out["summary"], out["html"], out["json"]

    def explain(image: Any, prompts_text: str, prompt: str, target: str, method: str, steps: float) -> tuple:
        out = explain_prompt(vlm, image, prompts_text, prompt, EXPLAIN_TARGETS.get(target, target),
                                   EXPLAIN_METHODS.get(method, method), int(steps))
        return out["summary"], out["figure"], out["tokens"], out["json"]

    def prune_downloads() -> None:
        for old in downloads.glob("*"):
            if time.time() - old.stat().st_mtime > 600:
                old.unlink(missing_ok=True)

    def batch(files: Any, prompts_text: str) -> tuple[Any, ...]:
        out = batch_table(vlm, files if isinstance(files, list) else [files], prompts_text, yardstick)
        prune_downloads()
        stem = downloads / f"batch-{time.time_ns()}"
        csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
        csv_path.write_text(out["csv"], encoding="utf-8")
        json_path.write_text(json.dumps(out["json"], indent=1), encoding="utf-8")
        return out["rows"], str(csv_path), str(json_path)

    def calibrate(archive: Any, template: str) -> tuple[Any, ...]:
        out = calibrate_archive(vlm, archive, template)
        return out["summary"], out["figure"], out["json"]

    def select(pool: Any, prompts_text: str, targets: Any) -> tuple[Any, ...]:
        out = select_archive(vlm, pool, prompts_text, targets)
        prune_downloads()
        csv_path = downloads / f"select-{time.time_ns()}.csv"
        csv_path.write_text(out["csv"], encoding="utf-8")
        return out["summary"], out["rows"], str(csv_path), out["json"]

    def preview(path: Any) -> Any:
        if not path:
            return None
        try:
            img = open_upload(path)
        except InputError as err:
            raise _user_error(err, [path]) from None
        img.thumbnail((256, 256))
        return img

    def per_client_limit(request: gr.Request, *inputs: Any) -> list[Any]:
        """Refuse, at queue join, a session that already has ``per_client`` requests waiting or running
        (where the queue's state cannot be read, only the overall ``max_queue`` applies)."""
        pending = _pending(app, request.session_hash)
        ok = pending is None or pending < per_client
        message = "" if ok else f"you already have {per_client} requests waiting; wait for them to finish"
        return [gr.validate(ok, message)] + [gr.validate(True, "")] * (len(inputs) - 1)

    def prompt_choices(text: str) -> Any:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()][: MAX_PROMPTS]
        return gr.update(choices=[""] + list(dict.fromkeys(lines)), value="")

    with StudioBlocks(title="bayesvlm-explain studio", delete_cache=(600, 3600)) as app:
        gr.Markdown(
            "# bayesvlm-explain studio\n"
            f"Model **{vlm.name}** on `{vlm.device}`. Every (image, prompt) logit has a mean and a variance from "
            "a Laplace posterior over the two projection layers. " + ys_note)
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                image = gr.File(label="image (JPEG, PNG, WebP, GIF or BMP)", file_types=EXTENSIONS,
                                type="filepath", elem_id="image-file")
                shown = gr.Image(label="the image", interactive=False, height=180, format="png", type="pil",
                                 buttons=[])
            with gr.Column(scale=2, min_width=280):
                prompts = gr.Textbox(lines=6, label="class prompts (one per line)", value=default_prompts,
                                     elem_id="prompts")
                if labels:
                    use_all = gr.Button(f"use all {len(labels)} labels of the model", size="sm")
                    use_all.click(lambda: "\n".join(labels), None, prompts, queue=False, api_visibility="private")
                    with gr.Accordion(f"the model's labels ({len(labels)})", open=False):
                        gr.Markdown(", ".join(labels))
        image.change(preview, image, shown, api_visibility="private", concurrency_id="light", concurrency_limit=2)
        if examples:
            gr.Examples(examples, [image, prompts], label="examples (the bundled model's own artwork styles)",
                        examples_per_page=4)

        with gr.Tabs():
            with gr.Tab("Inspect", id="inspect"):
                predict_btn = gr.Button("predict", variant="primary", elem_id="predict-btn")
                verdict = gr.Markdown(elem_id="verdict")
                bars = gr.HTML(elem_id="bars")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="per prompt", interactive=False,
                                     wrap=True)
                predict_json = _json_and_note("predict", "inspect")
            with gr.Tab("Compare prompts", id="compare"):
                with gr.Row():
                    sets = [gr.Textbox(lines=3, label=f"set {i + 1}", value=v, elem_id=f"set{i + 1}")
                            for i, v in enumerate(["an emoji of {}", "a drawing of {}", "", ""])]
                set_labels = gr.Textbox(lines=2, label="labels for templates (one per line; {} is replaced)",
                                        value="\n".join(template_labels(default_prompts)),
                                        elem_id="set-labels")
                compare_btn = gr.Button("compare", variant="primary", elem_id="compare-btn")
                compare_md = gr.Markdown(elem_id="compare-summary")
                compare_cards = gr.HTML()
                compare_json = _json_and_note("compare", "compare")
            with gr.Tab("Explain", id="explain"):
                with gr.Row():
                    prompt_pick = gr.Dropdown(choices=[""] + default_prompts.splitlines(), value="",
                                              allow_custom_value=True, label="prompt (empty: the most probable)",
                                              elem_id="explain-prompt")
                    target = gr.Dropdown(list(EXPLAIN_TARGETS), value=next(iter(EXPLAIN_TARGETS)),
                                         label="explain", allow_custom_value=True)
                    method = gr.Dropdown(list(EXPLAIN_METHODS), value=next(iter(EXPLAIN_METHODS)),
                                         label="method", allow_custom_value=True)
                    steps = gr.Slider(4, 64, value=16, step=4, label="steps (integrated gradients)")
                explain_btn = gr.Button("explain", variant="primary", elem_id="explain-btn")
                explain_md = gr.Markdown(elem_id="explain-summary")
                heat = gr.Plot(format="png", show_label=False, elem_id="heatmap")
                tokens = gr.HTML(elem_id="tokens")
                explain_json = _json_and_note("explain", "explain")
            with gr.Tab("Batch", id="batch"):
                batch_files = gr.File(label="images", file_count="multiple", file_types=EXTENSIONS,
                                      type="filepath")
                batch_btn = gr.Button("run the batch", variant="primary", elem_id="batch-btn")
                batch_frame = gr.Dataframe(headers=BATCH_HEADERS, label="one row per image", interactive=False,
                                           wrap=True)
                with gr.Row():
                    batch_csv = gr.File(label="CSV")
                    batch_json = gr.File(label="JSON")
                with gr.Accordion("what does this mean?", open=False):
                    gr.Markdown(NOTES["batch"])
            with gr.Tab("Calibrate", id="calibrate"):
                with gr.Row():
                    cal_zip = gr.File(label="labelled images (zip: one folder per class)", file_types=[".zip"],
                                      type="filepath", elem_id="calibrate-zip")
                    cal_template = gr.Textbox(label="class prompt template ({} = the folder name)",
                                              value=default_template(vlm), elem_id="calibrate-template")
                cal_btn = gr.Button("calibrate", variant="primary", elem_id="calibrate-btn")
                cal_md = gr.Markdown(elem_id="calibrate-summary", elem_classes="bx-tables")
                cal_plot = gr.Plot(format="png", show_label=False, elem_id="reliability")
                cal_json = _json_and_note("calibrate", "calibrate")
            with gr.Tab("Select", id="select"):
                with gr.Row():
                    pool_zip = gr.File(label="pool images (zip; flat or in folders)", file_types=[".zip"],
                                       type="filepath", elem_id="select-pool")
                    target_zip = gr.File(label="EPIG target images (zip; optional, default: the pool)",
                                         file_types=[".zip"], type="filepath", elem_id="select-targets")
                gr.Markdown("The class prompts are the ones typed above.")
                sel_btn = gr.Button("rank the pool", variant="primary", elem_id="select-btn")
                sel_md = gr.Markdown(elem_id="select-summary")
                sel_table = gr.Dataframe(headers=SELECT_HEADERS, label="top picks per acquisition function",
                                         interactive=False, wrap=True, max_height=1400,
                                         column_widths=["64px"] + ["250px", "112px"] * 3)
                sel_csv = gr.File(label="CSV (every pool image)")
                sel_json = _json_and_note("select", "select")
        prompts.change(prompt_choices, prompts, prompt_pick, queue=False, api_visibility="private")

        def wire(button: gr.Button, fn: Any, inputs: list[Any], outputs: list[Any], name: str, uploads: Any,
                 concurrency: str, limit: int) -> None:
            button.click(lambda: [None] * len(outputs), None, outputs, queue=False, api_visibility="private",
                         show_progress="hidden").then(
                guard(fn, uploads), inputs, outputs, api_name=name, concurrency_id=concurrency,
                concurrency_limit=limit, validator=per_client_limit)

        wire(predict_btn, inspect, [image, prompts], [verdict, bars, table, predict_json], "predict",
             lambda im, *_: im, "light", 2)
        wire(compare_btn, compare, [image, *sets, set_labels], [compare_md, compare_cards, compare_json], "compare",
             lambda im, *_: im, "light", 2)
        wire(explain_btn, explain, [image, prompts, prompt_pick, target, method, steps],
             [explain_md, heat, tokens, explain_json], "explain", lambda im, *_: im, "attribution", 1)
        wire(batch_btn, batch, [batch_files, prompts], [batch_frame, batch_csv, batch_json], "batch",
             lambda files, *_: files or [], "light", 2)
        wire(cal_btn, calibrate, [cal_zip, cal_template], [cal_md, cal_plot, cal_json], "calibrate",
             lambda z, *_: [], "attribution", 1)
        wire(sel_btn, select, [pool_zip, prompts, target_zip], [sel_md, sel_table, sel_csv, sel_json], "select",
             lambda *_: [], "attribution", 1)
    app.queue(max_size=max_queue, default_concurrency_limit=2)
    if _pending(app, None) is None:
        log.warning("gradio %s keeps its queue in an unknown shape: the per-client limit is off", gr.__version__)
    return app

