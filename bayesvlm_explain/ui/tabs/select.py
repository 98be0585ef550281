"""The Select tab: a zip of pool images ranked by predictive entropy, BALD, EPIG and MAP entropy."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...adapters import Features
from ...inputs import InputError
from ..archives import ArchiveError, decoded, extracted, image_files
from ..uploads import display_name
from ..views import (
    MAX_EPIG_TARGETS,
    SELECT_CSV_HEADERS,
    SELECT_HEADERS,
    SELECT_SAMPLES,
    SELECT_SHOWN,
    check_count,
    column_strings,
    csv_cell,
    parse_prompts,
)
from .base import StudioContext

if TYPE_CHECKING:
    from ...model import BayesVLM

NOTE = (
    "Which unlabelled images would be most useful to label next (active learning). *Entropy*: the model "
    "is unsure (for any reason). *BALD*: the uncertainty comes from not knowing the weights, so a label "
    "would teach the model something. *EPIG*: the label would reduce uncertainty about the target images "
    "(the pool itself, or the optional target zip): picks that matter where you will use the model. *MAP "
    "entropy*: the entropy of the deterministic prediction, blind to the posterior (the paper's 'Entropy' "
    "baseline). All in nats; the first three from the same joint posterior draws. The CSV lists every image."
)
"""The tab's "what does this mean?" text."""


@dataclass
class SelectResult:
    """What :func:`select_archive` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /select API payload
        rows: top picks (:data:`~.views.SELECT_HEADERS`)
        csv: every pool image as CSV text
        summary: Markdown
    """

    json: dict[str, Any]
    rows: list[list[Any]]
    csv: str
    summary: str


def _archive_images(vlm: BayesVLM, archive: Any) -> tuple[list[dict[str, Any]], Features, list[str]]:
    """``[{"image", "folder"}]``, the encoded features [N, ...] and the refused files of one image zip."""
    name = display_name(archive)
    with extracted(archive) as root:
        tree = image_files(root, name)
        items = tree.all_images()
        check_count(len(items), name, "images")
        entries, parts, chunk = [], [], []
        for f, c, img in decoded(items, root, tree.refused):  # undecodable files are listed, not fatal
            entries.append({"image": f.relative_to(root).as_posix(), "folder": c})
            chunk.append(img)
            if len(chunk) == 16:  # 16 decoded at a time
                parts.append(vlm.encode_images(chunk))
                chunk = []
        if chunk:
            parts.append(vlm.encode_images(chunk))
        if not entries:
            raise ArchiveError(f"{name}: no image could be decoded (refused: {'; '.join(tree.refused[:3])})")
    feats = Features(torch.cat([f.activations for f in parts]), torch.cat([f.embeddings for f in parts]))
    return entries, feats, tree.refused


def _spaced(count: int, limit: int) -> list[int]:
    """At most ``limit`` evenly spaced indices of ``range(count)``."""
    return list(range(count)) if count <= limit else [round(i * (count - 1) / (limit - 1)) for i in range(limit)]


def select_archive(vlm: BayesVLM, pool: Any, prompts_text: str, targets: Any = None) -> SelectResult:
    """The Select view: every pool image scored by predictive entropy, BALD, EPIG and MAP entropy (nats).

    Pool and EPIG targets (the pool itself, or the images of ``targets``; at most
    :data:`MAX_EPIG_TARGETS`, evenly spaced) are scored by the library's
    :func:`~bayesvlm_explain.selection.pool_scores` (joint draws, :data:`SELECT_SAMPLES` of them, seed 0).
    Returns ``{"json": {...}, "rows": SELECT_HEADERS rows (top picks), "csv": every image}``.
    """
    from ...selection import pool_scores

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
    shown = min(SELECT_SHOWN, n)
    columns = {k: column_strings([entries[ranks[k][r]][k] for r in range(shown)])
               for k in ("entropy", "bald", "epig", "map_entropy")}
    rows = []
    for r in range(shown):
        row: list[Any] = [r + 1]
        for k, texts in columns.items():
            row += [entries[ranks[k][r]]["image"], texts[r]]
        rows.append(row)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SELECT_CSV_HEADERS)
    for e in sorted(entries, key=lambda e: e["rank_epig"]):
        writer.writerow([csv_cell(e["image"]), csv_cell(e["folder"] or ""), *(e[h] for h in SELECT_CSV_HEADERS[2:])])
    payload = {"prompts": prompts, "pool": display_name(pool), "images": n, "targets": len(keep),
               "target_source": target_source, "num_samples": SELECT_SAMPLES, "seed": 0,
               "ranking": {k: [entries[i]["image"] for i in order] for k, order in ranks.items()},
               "scores": entries, "refused": refused}
    return SelectResult(json=payload, rows=rows, csv=buf.getvalue(), summary=select_summary(payload))



def select_summary(p: dict[str, Any]) -> str:
    """Pool and target sizes, and whether the four functions agree on the first pick."""
    firsts = {k: v[0] for k, v in p["ranking"].items()}
    text = (f"{p['images']} pool images ranked over {len(p['prompts'])} class prompts, {p['num_samples']} joint "
            f"posterior draws; EPIG targets: {p['targets']} images of {p['target_source']}.")
    if len(set(firsts.values())) == 1:
        text += f" All four functions pick **{firsts['entropy']}** first."
    else:
        text += " First picks: " + "; ".join(f"{k}: **{v}**" for k, v in firsts.items()) + "."
    if p["refused"]:
        text += f"\n\nRefused files ({len(p['refused'])}): " + "; ".join(p["refused"][:5])
    return text


def page(ctx: StudioContext) -> None:
    """The Select tab's components and its ``/select`` endpoint (CSV download)."""
    import gradio as gr

    with gr.Row():
        pool_zip = gr.File(label="pool images (zip; flat or in folders)", file_types=[".zip"], type="filepath",
                           elem_id="select-pool")
        target_zip = gr.File(label="EPIG target images (zip; optional, default: the pool)", file_types=[".zip"],
                             type="filepath", elem_id="select-targets")
    gr.Markdown("The class prompts are the ones typed above.")
    sel_btn = gr.Button("rank the pool", variant="primary", elem_id="select-btn")
    sel_md = gr.Markdown(elem_id="select-summary")
    sel_table = gr.Dataframe(headers=SELECT_HEADERS, label="top picks per acquisition function",
                             elem_classes="bx-scroll",
                             interactive=False, wrap=True, max_height=1400,
                             column_widths=[*["64px"], *["250px", "112px"] * 4])
    sel_csv = gr.File(label="CSV (every pool image)")
    sel_json = ctx.json_and_note("select", NOTE)

    def run(pool: Any, prompts_text: str, targets: Any) -> tuple[Any, ...]:
        out = select_archive(ctx.vlm, pool, prompts_text, targets)
        return out.summary, out.rows, ctx.save_download("select", ".csv", out.csv), out.json

    ctx.wire(sel_btn, run, [pool_zip, ctx.prompts, target_zip], [sel_md, sel_table, sel_csv, sel_json], "select",
             lambda *_: [], "attribution", 1)
