"""The Select tab: a zip of pool images ranked by predictive entropy, BALD, EPIG and MAP entropy, under the
model as loaded or, given a zip of images the user has labelled, under the model adapted to them by the
library's learner (:func:`~bayesvlm_explain.evaluation.active_learning.fit_learner`)."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...adapters import Features
from ...data.folders import normalise_name
from ...inputs import InputError, check_number
from ..archives import ArchiveError, decoded, extracted, image_files
from ..uploads import display_name
from ..views import (
    LEARNER_KNOBS,
    LEARNER_LIMITS,
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
    from ...evaluation.active_learning import AdaptedState
    from ...model import BayesVLM

NOTE = (
    "Which unlabelled images would be most useful to label next (active learning). *Entropy*: the model "
    "is unsure (for any reason). *BALD*: the uncertainty comes from not knowing the weights, so a label "
    "would teach the model something. *EPIG*: the label would reduce uncertainty about the target images "
    "(the pool itself, or the optional target zip): picks that matter where you will use the model. *MAP "
    "entropy*: the entropy of the deterministic prediction, blind to the posterior (the paper's 'Entropy' "
    "baseline). All in nats; the first three from the same joint posterior draws. The CSV lists every image. "
    "*Labelled images* (optional zip, one folder per class, each folder named after one of the prompts): "
    "the images you have already labelled. The model is first adapted to them (the image projection "
    "fine-tuned with the posterior as a prior of the given weight, then the posterior updated with them) "
    "and the pool is ranked under the adapted model."
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


def _archive_images(vlm: BayesVLM, archive: Any, need_classes: bool = False
                    ) -> tuple[list[dict[str, Any]], Features, list[str]]:
    """``[{"image", "folder"}]``, the encoded features [N, ...] and the refused files of one image zip
    (``need_classes``: one folder per class, at least 2, no loose images)."""
    name = display_name(archive)
    with extracted(archive) as root:
        tree = image_files(root, name, need_classes)
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


def check_knobs(prior_weight: Any, steps: Any, lr: Any) -> tuple[float, int, float]:
    """The learner knobs ``(prior weight, steps, lr)`` within :data:`~.views.LEARNER_LIMITS` (steps whole);
    :class:`InputError` naming the knob otherwise."""
    (w_lo, w_hi), (s_lo, s_hi), (l_lo, l_hi) = LEARNER_LIMITS.values()
    return (check_number(prior_weight, "prior weight", w_lo, w_hi),
            int(check_number(steps, "steps", s_lo, s_hi, integer=True)), check_number(lr, "lr", l_lo, l_hi))


def folder_prompts(folders: Sequence[str], prompts: Sequence[str], archive: str) -> dict[str, int]:
    """The prompt index of each class folder: the prompt equal to the folder's name (case-insensitive, ``_``
    and ``-`` read as spaces), else the only prompt that contains it as whole words ("red_square" -> "a photo
    of a red square."). :class:`InputError` naming the folder and the prompts when none or several match."""
    keys = [normalise_name(p) for p in prompts]
    out = {}
    for folder in folders:
        name = normalise_name(folder)
        words = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
        match = [i for i, k in enumerate(keys) if k == name] or [i for i, k in enumerate(keys) if words.search(k)]
        if len(match) != 1:
            why = ("matches no prompt" if not match else
                   "is ambiguous: it is in " + ", ".join(repr(prompts[i]) for i in match[:5]))
            shown = "; ".join(repr(p) for p in prompts[:10]) + ("; ..." if len(prompts) > 10 else "")
            raise InputError(f"{archive}: class folder {folder!r} {why}; name each folder after one prompt, or "
                             f"as words that only that prompt contains (prompts: {shown})")
        out[folder] = match[0]
    return out


def _learn(vlm: BayesVLM, labelled: Any, prompts: list[str], txt: Features, knobs: tuple[float, int, float]
           ) -> tuple[AdaptedState, dict[str, Any], list[str]]:
    """The library's learner on a labelled zip: the adapted state, the ``learner`` JSON and refused files."""
    from ...evaluation.active_learning import fit_learner, map_accuracy

    name = display_name(labelled)
    entries, support, refused = _archive_images(vlm, labelled, need_classes=True)
    mapping = folder_prompts(sorted({e["folder"] for e in entries}), prompts, name)
    labels = torch.tensor([mapping[e["folder"]] for e in entries])
    start = time.perf_counter()
    state = fit_learner(vlm, support, labels, txt, knobs)
    seconds = time.perf_counter() - start
    before = map_accuracy(vlm, torch.zeros_like(state.delta), support, labels, txt)
    info = {"ran": True, "labelled": name, "labels": len(entries),
            "folders": {f: prompts[i] for f, i in mapping.items()},
            "prior_weight": knobs[0], "steps": knobs[1], "lr": knobs[2],
            "support_accuracy_before": before,
            "support_accuracy_after": map_accuracy(vlm, state.delta, support, labels, txt),
            "prior_precision_before": vlm.require_posterior().image.prior_precision,
            "prior_precision_after": state.posterior.image.prior_precision, "seconds": seconds}
    return state, info, [f"{name}/{r}" for r in refused]


def select_archive(vlm: BayesVLM, pool: Any, prompts_text: str, targets: Any = None, labelled: Any = None,
                   prior_weight: Any = LEARNER_KNOBS[0], steps: Any = LEARNER_KNOBS[1],
                   lr: Any = LEARNER_KNOBS[2]) -> SelectResult:
    """The Select view: every pool image scored by predictive entropy, BALD, EPIG and MAP entropy (nats).

    With ``labelled`` (a zip, one folder per class, each folder matched to a prompt by :func:`folder_prompts`)
    the library's learner runs first (:func:`~bayesvlm_explain.evaluation.active_learning.fit_learner` with
    ``(prior_weight, steps, lr)``, checked by :func:`check_knobs`): the image projection is fine-tuned on
    those images and the posterior updated with them (on a copy; ``vlm`` is left as it is), and the pool and
    targets are scored under that adapted model (features shifted by the learnt ``ΔW``, the updated
    posterior). Pool and EPIG targets (the pool itself, or the images of ``targets``; at most
    :data:`MAX_EPIG_TARGETS`, evenly spaced) are scored by the library's
    :func:`~bayesvlm_explain.selection.pool_scores` (joint draws, :data:`SELECT_SAMPLES` of them, seed 0).
    Returns ``{"json": {...}, "rows": SELECT_HEADERS rows (top picks), "csv": every image}``; the JSON's
    ``learner`` says whether the learner ran (``ran``) and, if so, its knobs, labels and support-set accuracy
    (deterministic prediction) before and after.
    """
    from ...evaluation.evaluate import with_posterior
    from ...selection import pool_scores

    prompts = parse_prompts(prompts_text)
    if len(prompts) < 2:
        raise InputError("give at least 2 class prompts to rank the pool by")
    knobs = check_knobs(prior_weight, steps, lr)
    if not pool:
        raise InputError("upload a zip of pool images first")
    if labelled and (vlm.posterior is None or vlm.posterior.image.num_pairs is None):
        raise InputError("labelled images need a posterior that records its number of training pairs "
                         "(num_pairs) to be updated with them; this model's posterior "
                         + ("is missing" if vlm.posterior is None else "does not record it (refit it)"))
    txt = vlm.encode_prompts(prompts)
    refused: list[str] = []
    learner: dict[str, Any] = {"ran": False}
    scorer, state = vlm, None
    if labelled:
        state, learner, refused = _learn(vlm, labelled, prompts, txt, knobs)
        scorer = with_posterior(vlm, state.posterior)
    entries, feats, pool_refused = _archive_images(vlm, pool)
    refused = pool_refused + refused
    if targets:
        _, target_feats, t_refused = _archive_images(vlm, targets)
        refused += [f"{display_name(targets)}/{r}" for r in t_refused]
        target_source = display_name(targets)
    else:
        target_feats, target_source = feats, "the pool"
    keep = _spaced(int(target_feats.embeddings.shape[0]), MAX_EPIG_TARGETS)
    n = int(feats.embeddings.shape[0])
    target_feats = Features(target_feats.activations[keep], target_feats.embeddings[keep])
    if state is not None:
        feats, target_feats = state.shift(vlm, feats), state.shift(vlm, target_feats)
    scores = pool_scores(scorer, feats, txt, SELECT_SAMPLES, torch.Generator().manual_seed(0), target_feats)
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
               "target_source": target_source, "num_samples": SELECT_SAMPLES, "seed": 0, "learner": learner,
               "ranking": {k: [entries[i]["image"] for i in order] for k, order in ranks.items()},
               "scores": entries, "refused": refused}
    return SelectResult(json=payload, rows=rows, csv=buf.getvalue(), summary=select_summary(payload))


def select_summary(p: dict[str, Any]) -> str:
    """Pool and target sizes, whether the learner ran (and what it reached), and whether the four functions
    agree on the first pick."""
    firsts = {k: v[0] for k, v in p["ranking"].items()}
    text = (f"{p['images']} pool images ranked over {len(p['prompts'])} class prompts, {p['num_samples']} joint "
            f"posterior draws; EPIG targets: {p['targets']} images of {p['target_source']}.")
    if len(set(firsts.values())) == 1:
        text += f" All four functions pick **{firsts['entropy']}** first."
    else:
        text += " First picks: " + "; ".join(f"{k}: **{v}**" for k, v in firsts.items()) + "."
    lr = p["learner"]
    if lr["ran"]:
        text += (f"\n\n**Ranked under the adapted model.** Learner on {lr['labels']} labelled images of "
                 f"{len(set(lr['folders'].values()))} classes ({lr['labelled']}): prior weight "
                 f"{lr['prior_weight']:g}, {lr['steps']} Adam steps, lr {lr['lr']:g}, then the posterior updated "
                 f"({lr['seconds']:.1f} s). Accuracy on those images (deterministic): "
                 f"{lr['support_accuracy_before']:.3f} before, {lr['support_accuracy_after']:.3f} after.")
    else:
        text += "\n\nNo labelled images: ranked under the model as loaded (no learner ran)."
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
    with gr.Row():
        labelled_zip = gr.File(label="labelled images (zip, one folder per class named after its prompt; optional)",
                               file_types=[".zip"], type="filepath", elem_id="select-labelled")
        with gr.Column(min_width=200):  # ranges checked by check_knobs, so that errors name the knob
            (w_lo, w_hi), (s_lo, s_hi), (l_lo, l_hi) = LEARNER_LIMITS.values()
            prior_weight = gr.Number(LEARNER_KNOBS[0], label="learner: prior weight",
                                     info=f"{w_lo:g} (plain fine-tune) to {w_hi:g}", elem_id="select-prior-weight")
            steps = gr.Number(LEARNER_KNOBS[1], label="learner: Adam steps", info=f"{s_lo} to {s_hi}",
                              elem_id="select-steps")
            lr = gr.Number(LEARNER_KNOBS[2], label="learner: learning rate", info=f"{l_lo:g} to {l_hi:g}",
                           elem_id="select-lr")
    gr.Markdown("The class prompts are the ones typed above. With labelled images the model is adapted to them "
                "first (the learner's knobs are used only then) and the pool is ranked under the adapted model.")
    sel_btn = gr.Button("rank the pool", variant="primary", elem_id="select-btn")
    sel_md = gr.Markdown(elem_id="select-summary")
    sel_table = gr.Dataframe(headers=SELECT_HEADERS, label="top picks per acquisition function",
                             elem_classes="bx-scroll",
                             interactive=False, wrap=True, max_height=1400,
                             column_widths=[*["64px"], *["250px", "112px"] * 4])
    sel_csv = gr.File(label="CSV (every pool image)")
    sel_json = ctx.json_and_note("select", NOTE)

    def run(pool: Any, prompts_text: str, targets: Any, labelled: Any, weight: Any, n_steps: Any,
            rate: Any) -> tuple[Any, ...]:
        out = select_archive(ctx.vlm, pool, prompts_text, targets, labelled, weight, n_steps, rate)
        return out.summary, out.rows, ctx.save_download("select", ".csv", out.csv), out.json

    ctx.wire(sel_btn, run, [pool_zip, ctx.prompts, target_zip, labelled_zip, prior_weight, steps, lr],
             [sel_md, sel_table, sel_csv, sel_json], "select", lambda *_: [], "attribution", 1)
