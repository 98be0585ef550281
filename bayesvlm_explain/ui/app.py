"""The studio's Gradio page: the shared inputs, then the tabs of :data:`.tabs.TABS` (each tab module's
``page`` lays itself out; gradio is imported here and inside those ``page`` functions only).

* every run first clears all outputs it owns, then fills them; an error leaves them cleared, so results
  of two runs are never shown side by side;
* uploads arrive as files (never decoded by Gradio) and are checked by :mod:`.uploads` before PIL opens
  them; refused uploads are deleted at once, the rest by the server's cache cleanup after 10 minutes; one
  file's size is capped by :meth:`StudioBlocks.launch`, a request's and an address's uploads by :mod:`.admission`;
* zip uploads (Calibrate, Select) are checked and extracted by :mod:`.archives` into a temporary folder
  that is removed after the run;
* at most 2 light requests (predict, compare, batch) and 1 heavy one (explain, calibrate, select) run at once;
  how many may wait or run per lane, per connection address and per browser session is decided by
  :mod:`.admission` before a request enters gradio's queue (gradio's own queue-size check is off);
* user errors come back as messages (no traceback in the server log, no server path in the text);
* long work (encoding hundreds of prompts, a batch of images) shows its progress over the outputs.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.utils import get_upload_folder

from ..evaluation.calibrate import PSEUDO_COUNTS
from ..inputs import InputError
from ..posterior import PosteriorError
from ..yardstick import Yardstick, YardstickError
from .admission import Admission, AdmissionMiddleware, Limits, release_request
from .archives import remove_temp_folders_on_exit, temp_folder
from .tabs import TABS
from .tabs.base import ScaleViews, StudioContext
from .uploads import EXTENSIONS, MAX_UPLOAD_BYTES, check_upload, discard, open_upload
from .views import MAX_PROMPTS

if TYPE_CHECKING:
    from ..model import BayesVLM

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
.block:has(button[aria-label]) > label[data-testid="block-label"] {max-width: calc(100% - 3rem)}
.file-preview td.download {min-width: 0; width: 5rem}
.bx-tables th, .bx-tables td {white-space: nowrap}
@media (max-width: 640px) {
  .bx-scroll:not(:has(.bx-scroll))::after, .bx-tables:not(:has(.bx-tables))::after {
    content: "⇆ swipe the table sideways for more columns"; display: block; font-size: 12px; color: #555;
    margin-top: 4px}
}
"""

class StudioBlocks(gr.Blocks):
    """``gr.Blocks`` whose :meth:`launch` caps uploads at :data:`~.uploads.MAX_UPLOAD_BYTES`, adds the
    studio's style sheet by default and puts :attr:`admission` (:mod:`.admission`) in front of the app."""

    def __init__(self, *args: Any, admission: Admission | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission = admission or Admission()

    def launch(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - same as gr.Blocks.launch
        from starlette.middleware import Middleware

        kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
        kwargs.setdefault("css", CSS)
        app_kwargs = dict(kwargs.get("app_kwargs") or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                    Middleware(AdmissionMiddleware, admission=self.admission)]
        kwargs["app_kwargs"] = app_kwargs
        remove_temp_folders_on_exit()  # a SIGTERM-ed server removes its temporary folders too
        return super().launch(*args, **kwargs)

    async def process_api(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """gradio's processing of one queued job; the job's admission slot is freed when it ends, also when
        gradio fails before our function runs (a bad file reference, a wrong number of inputs); then the freed
        heap is handed back (:func:`trim_heap`)."""
        try:
            return await super().process_api(*args, **kwargs)
        finally:
            request = kwargs.get("request", args[3] if len(args) > 3 else None)
            for one in request if isinstance(request, list) else [request]:
                release_request(one)
            trim_heap()  # what the job freed, its output's encoding included (costs about a millisecond)


def studio_extras(vlm: BayesVLM) -> tuple[Yardstick | None, list[str] | None, str]:
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


def _json_and_note(api_name: str, note: str) -> gr.JSON:
    """A tab's footer: the endpoint's JSON (collapsed) and its "what does this mean?" note; returns the JSON."""
    with gr.Accordion(f"JSON (what the /{api_name} API returns)", open=False):
        out = gr.JSON(show_label=False)
    with gr.Accordion("what does this mean?", open=False):
        gr.Markdown(note)
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


def _guard(fn: Any, uploads: Any) -> Any:
    """``fn`` that first trims the heap and turns user errors into messages (refused uploads deleted).

    Gradio fills ``progress``: the library's tqdm bars (prompt encoding of long label sets, image batches)
    then show as a progress bar over the outputs.
    """
    def run(progress: gr.Progress = gr.Progress(track_tqdm=True), *args: Any) -> Any:  # noqa: B008
        trim_heap()  # what earlier requests freed (costs microseconds)
        try:
            return fn(*args)
        except USER_ERRORS as err:
            files = uploads(*args)
            raise _user_error(err, files if isinstance(files, list) else [files]) from None
    return run


LANE_OF = {"light": "light", "attribution": "heavy"}
"""Admission lane (:mod:`.admission`) of each gradio concurrency id."""


def _wiring(admission: Admission) -> Any:
    """The ``wire`` of :class:`~.tabs.base.StudioContext`: each endpoint registered with ``admission``."""

    def wire(button: gr.Button, fn: Any, inputs: list[Any], outputs: list[Any], name: str, uploads: Any,
             concurrency: str, limit: int) -> None:
        dep = button.click(lambda: [None] * len(outputs), None, outputs, queue=False, api_visibility="private",
                           show_progress="hidden").then(
            _guard(fn, uploads), inputs, outputs, api_name=name, concurrency_id=concurrency,
            concurrency_limit=limit)
        admission.register(dep["id"], name, LANE_OF[concurrency])
    return wire


def _preview(path: Any) -> tuple[Any, Any]:
    """``(file box, thumbnail)`` for an upload: the thumbnail, or for a refused file a warning, the file box
    emptied and the file deleted (so the next run cannot pick it up)."""
    if not path:
        return gr.update(), None
    try:
        img = open_upload(path)
    except InputError as err:
        gr.Warning(str(_user_error(err, [path]).message))
        return None, None
    img.thumbnail((256, 256))
    return gr.update(), img


def _shared_inputs(labels: list[str] | None, default_prompts: str, examples: list[list[Any]] | None,
                   outside: list[list[Any]] | None = None) -> tuple[Any, Any]:
    """The image file, its preview and the class prompts (with the model's labels and examples), stacked in
    the page's left column."""
    with gr.Row():
        image = gr.File(label="image (JPEG, PNG, WebP, GIF or BMP)", file_types=EXTENSIONS,
                        type="filepath", elem_id="image-file", height=120, min_width=180, scale=3)
        shown = gr.Image(label="the image", interactive=False, height=120, format="png", type="pil",
                         buttons=[], min_width=110, scale=2)
    prompts = gr.Textbox(lines=4, max_lines=12, label=f"class prompts (one per line, at most {MAX_PROMPTS})",
                         value=default_prompts, elem_id="prompts")
    if labels:
        shown_labels = labels[:MAX_PROMPTS]
        text = (f"use all {len(labels)} labels of the model" if len(labels) <= MAX_PROMPTS
                else f"use the first {MAX_PROMPTS} of the model's {len(labels)} labels")
        use_all = gr.Button(text, size="sm", elem_id="use-labels")
        use_all.click(lambda: "\n".join(shown_labels), None, prompts, queue=False, api_visibility="private")
    if examples:
        gr.Examples(examples, [image, prompts], label="examples the model knows (click one, then run a tab)",
                    examples_per_page=4, elem_id="examples")
    if outside:
        gr.Examples(outside, [image, prompts], label="photographs: outside what it knows",
                    examples_per_page=4, elem_id="outside-examples")
    image.change(_preview, image, [image, shown], api_visibility="private", concurrency_id="light",
                 concurrency_limit=2)
    return image, prompts


def _header(vlm: BayesVLM, labels: list[str] | None, ys_note: str) -> None:
    """What is loaded: model, device, what it knows (its domain) and its label set, the yardstick."""
    domain = vlm.assets.domain or "no description of its domain is known"
    gr.Markdown(
        "# bayesvlm-explain studio\n"
        f"Model **{vlm.name}** on `{vlm.device}`: {domain}. Every (image, prompt) logit has a mean and a "
        "variance from a Laplace posterior over the two projection layers. " + ys_note, elem_id="model-card")
    if labels:
        with gr.Accordion(f"the model's label set ({len(labels)} classes)", open=False):
            gr.Markdown(", ".join(labels))


def _scale_control(views_grid: list[float], default: float | None) -> Any:
    """The posterior-scale dropdown (``None`` without a posterior)."""
    if default is None:
        return None
    choices = [(f"{g:g}" + (" (recommended)" if g == default else ""), g) for g in views_grid]
    return gr.Dropdown(choices, value=default, label="posterior scale n (pseudo-count)", elem_id="scale",
                       info="smaller n: broader posterior; λ re-fitted for each n",
                       allow_custom_value=True)  # checked by ScaleViews


def build_app(vlm: BayesVLM, examples: list[list[Any]] | None = None, max_queue: int = 32, per_client: int = 4,
              yardstick: Yardstick | None = None, labels: list[str] | None = None) -> StudioBlocks:
    """The studio as a :class:`StudioBlocks` (not launched): the shared inputs, then :data:`~.tabs.TABS`.
    The yardstick and the label set come from ``vlm.assets`` unless given. ``max_queue`` and ``per_client``
    set the admission limits (:meth:`.admission.Limits.studio`; ``app.admission.limits`` can be replaced
    before or after launch)."""
    auto_ys, auto_labels, ys_note = studio_extras(vlm)
    if yardstick is not None:
        ys_note = f"Yardstick: {yardstick.reference}."
    labels = labels or auto_labels
    default_prompts = examples[0][1] if examples else "a photo of a cat\na photo of a dog\na photo of a car"
    # uploads are kept for 10 minutes at most (the shared image serves every tab); see docs/reliability.md
    with StudioBlocks(title="bayesvlm-explain studio", delete_cache=(60, 600),
                      admission=Admission(Limits.studio(max_queue, per_client), get_upload_folder())) as app:
        with gr.Row():
            with gr.Column(scale=4):
                _header(vlm, labels, ys_note)
            with gr.Column(scale=1, min_width=200):
                views = ScaleViews(vlm, PSEUDO_COUNTS)
                scale = _scale_control(views.grid, views.default)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                image, prompts = _shared_inputs(labels, default_prompts, examples,
                                                vlm.assets.outside_examples)
            with gr.Column(scale=3, min_width=320):
                ctx = StudioContext(vlm, yardstick or auto_ys, image, prompts, default_prompts,
                                    temp_folder("bayesvlm-studio-"), _wiring(app.admission),
                                    _json_and_note, views, scale)
                with gr.Tabs(elem_id="tabs", overflow_behavior="wrap"):  # every tab visible on a phone
                    for title, tab_id, module in TABS:
                        with gr.Tab(title, id=tab_id):
                            module.page(ctx)
    # admission (ours, atomic) bounds the queue; direct /run calls would skip it, so they are closed
    app.queue(max_size=None, default_concurrency_limit=2, api_open=False)
    return app
