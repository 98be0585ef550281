"""The Batch tab: several images x prompts, one row per image, most uncertain first."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...inputs import InputError
from ...yardstick import Yardstick
from ..uploads import check_pixel_budget, check_upload, display_name
from ..views import (
    BATCH_HEADERS,
    MAX_BATCH_IMAGES,
    classes_json,
    csv_cell,
    entropy_parts,
    image_of,
    parse_prompts,
    recommended_prediction,
    significant,
    yardstick_json,
)
from .base import StudioContext

if TYPE_CHECKING:
    from ...model import BayesVLM

NOTE = (
    "One row per image, the most epistemically uncertain first; click a column header to sort. Download "
    "the table as CSV, or everything (every prompt of every image) as JSON."
)
"""The tab's "what does this mean?" text."""


@dataclass
class BatchResult:
    """What :func:`batch_table` returns; the page, the API and the CLI render it.

    Attributes:
        rows: rows of :data:`~.views.BATCH_HEADERS` (the usable images)
        json: every prompt of every image (the JSON download) and ``refused``
        csv: the rows as CSV text
        refused: ``"file: why"`` for each file that was skipped (unreadable, not an image, over a limit)
    """

    rows: list[list[Any]]
    json: dict[str, Any]
    csv: str
    refused: list[str]


def batch_table(vlm: BayesVLM, images: Sequence[Any], prompts_text: str, yardstick: Yardstick | None = None
                ) -> BatchResult:
    """The Batch view: one row per image (:data:`BATCH_HEADERS`), the most epistemically uncertain first.

    Files that cannot be used are skipped and listed in ``refused`` (their headers are checked first; the
    declared pixels of all images together must stay within :data:`~..uploads.MAX_REQUEST_PIXELS`).
    Returns ``{"rows", "json": {"images": [{"name", "classes", "image"}], "refused"}, "csv": text}``.
    """
    prompts = parse_prompts(prompts_text)
    images = [p for p in (images or []) if p]
    if not images:
        raise InputError("upload one or more images first")
    if len(images) > MAX_BATCH_IMAGES:
        raise InputError(f"{len(images)} images given; a batch takes at most {MAX_BATCH_IMAGES}")
    refused: list[str] = []
    checked = []
    for path in images:  # headers first: the batch's pixel budget is checked before anything is decoded
        try:
            _, w, h = check_upload(path)
            checked.append((path, w * h))
        except InputError as err:
            refused.append(str(err))
    check_pixel_budget(sum(px for _, px in checked), "the batch")
    usable, decoded = [], []
    for path, _ in checked:
        try:
            decoded.append(image_of(path))
            usable.append(path)
        except InputError as err:
            refused.append(str(err))
    if not usable:
        raise InputError("no usable image in the batch: " + "; ".join(refused[:5]))
    images = usable
    feats = vlm.encode_images(decoded)
    pred = recommended_prediction(vlm, feats, prompts)
    total, alea, epi = entropy_parts(pred)
    ys = yardstick_json(vlm, yardstick, feats)
    entries: list[dict[str, Any]] = []
    for n, path in enumerate(images):
        entries.append({"name": display_name(path), "classes": classes_json(pred, n),
                        "image": {"entropy": float(total[n]), "aleatoric": float(alea[n]),
                                  "epistemic": float(epi[n]), **ys[n]}})
    entries.sort(key=lambda e: -e["image"]["epistemic"])
    rows = []
    for e in entries:
        top = max(e["classes"], key=lambda c: c["prob"])
        pct = e["image"]["percentiles"]
        unusual = round(e["image"]["unusual"], 1) if pct else None
        rows.append([e["name"], top["prompt"], round(top["prob"], 4), round(top["map_prob"], 4),
                     round(math.sqrt(top["var"]), 3), significant(e["image"]["entropy"]),
                     significant(e["image"]["epistemic"]), unusual, e["image"]["out_of_domain"]])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(BATCH_HEADERS)
    writer.writerows([[csv_cell(v) for v in row] for row in rows])
    return BatchResult(rows=rows, json={"prompts": prompts, "images": entries, "refused": refused},
                       csv=buf.getvalue(), refused=refused)


def page(ctx: StudioContext) -> None:
    """The Batch tab's components and its ``/batch`` endpoint (CSV and JSON downloads)."""
    import gradio as gr

    from ..uploads import EXTENSIONS

    batch_files = gr.File(label="images", file_count="multiple", file_types=EXTENSIONS, type="filepath")
    batch_btn = gr.Button("run the batch", variant="primary", elem_id="batch-btn")
    batch_frame = gr.Dataframe(headers=BATCH_HEADERS, label="one row per image", interactive=False, wrap=True,
                               elem_classes="bx-scroll")
    with gr.Row():
        batch_csv = gr.File(label="CSV")
        batch_json = gr.File(label="JSON")
    with gr.Accordion("what does this mean?", open=False):
        gr.Markdown(NOTE)

    def run(files: Any, prompts_text: str) -> tuple[Any, ...]:
        out = batch_table(ctx.vlm, files if isinstance(files, list) else [files], prompts_text, ctx.yardstick)
        if out.refused:
            gr.Warning(f"Skipped {len(out.refused)} file(s): " + "; ".join(out.refused[:5]))
        return out.rows, ctx.save_download("batch", ".csv", out.csv), ctx.save_download("batch", ".json", out.json)

    ctx.wire(batch_btn, run, [batch_files, ctx.prompts], [batch_frame, batch_csv, batch_json], "batch",
             lambda files, *_: files or [], "light", 2)
