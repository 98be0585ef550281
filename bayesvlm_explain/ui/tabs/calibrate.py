"""The Calibrate tab: a zip of labelled images, deterministic vs Bayesian calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...inputs import InputError
from ..archives import ArchiveError, extracted, image_files
from ..uploads import display_name
from ..views import MAX_PROMPTS, NUM_SAMPLES, RECOMMENDED, check_count, parse_prompts
from .base import StudioContext

if TYPE_CHECKING:
    from ...model import BayesVLM

NOTE = (
    "Upload a zip with one folder per class (the folder name fills the template's `{}`). Calibration: "
    "among images predicted with confidence p, a fraction p should be right; the reliability diagram "
    "plots accuracy against confidence, and ECE is the average gap. NLPD and Brier score the probability "
    "given to the true class (lower is better). *deterministic* is the model without uncertainty, *bayes* "
    "the Monte Carlo predictive of the other tabs. The AUROC rows say how well each confidence score "
    "separates right from wrong predictions; selective accuracy is the accuracy on the 50% / 80% most "
    "confident images."
)
"""The tab's "what does this mean?" text."""


@dataclass
class CalibrateResult:
    """What :func:`calibrate_archive` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /calibrate API payload (``evaluate``'s report + ``refused``)
        figure: the reliability diagram (matplotlib)
        summary: Markdown
    """

    json: dict[str, Any]
    figure: Any
    summary: str


def default_template(vlm: BayesVLM) -> str:
    """The class-prompt template offered for ``vlm``: its assets' template, else the photo one."""
    from ...evaluation.evaluate import DEFAULT_TEMPLATE

    return getattr(getattr(vlm, "assets", None), "template", None) or DEFAULT_TEMPLATE


def calibrate_archive(vlm: BayesVLM, archive: Any, template: str) -> CalibrateResult:
    """The Calibrate view: a labelled zip (one folder per class) evaluated deterministic vs Bayes.

    The class names (folder names decoded by :func:`~bayesvlm_explain.data.folders.class_name`) fill
    ``template``; metrics, misclassification AUROCs and settings are those of
    :func:`~bayesvlm_explain.evaluation.evaluate.evaluate` with the studio's recommended predictive.
    """
    from ...data.pairs import InMemoryPairs
    from ...evaluation.evaluate import EvaluationError, LabeledData, class_prompts, evaluate, summary_markdown
    from ...evaluation.figures import reliability_diagram

    if not archive:
        raise InputError("upload a zip of labelled images first (one folder per class)")
    name = display_name(archive)
    with extracted(archive) as root:
        tree = image_files(root, name, need_classes=True)
        check_count(len(tree.all_images()), name, "images")
        classnames = list(tree.classes)  # decoded by data.folders.class_name
        if len(classnames) > MAX_PROMPTS:
            raise ArchiveError(f"{name}: {len(classnames)} class folders; the studio takes at most {MAX_PROMPTS}")
        try:
            parse_prompts("\n".join(class_prompts(classnames, (template or "").strip())), "class prompts")
            data = LabeledData(InMemoryPairs([(str(f), c) for c, files in tree.classes.items() for f in files]),
                               classnames, name)
            result = evaluate(vlm, data, template=template.strip(), predictive=RECOMMENDED,
                              num_samples=NUM_SAMPLES, progress=False)
        except EvaluationError as err:
            raise InputError(str(err)) from None
    payload = {k: v for k, v in result.report.items() if k != "cache"}  # no feature cache in the studio
    payload.update(data=name, refused=tree.refused)
    figure = reliability_diagram(result.probs, result.labels, n_bins=payload["settings"]["ece_bins"],
                                 title=f"reliability: {name}")
    summary = summary_markdown(payload).split("\n", 1)[1].strip()
    if tree.refused:
        summary += f"\n\nRefused files ({len(tree.refused)}): " + "; ".join(tree.refused[:5])
    return CalibrateResult(json=payload, figure=figure, summary=summary)


def page(ctx: StudioContext) -> None:
    """The Calibrate tab's components and its ``/calibrate`` endpoint."""
    import gradio as gr

    with gr.Row():
        cal_zip = gr.File(label="labelled images (zip: one folder per class)", file_types=[".zip"],
                          type="filepath", elem_id="calibrate-zip")
        cal_template = gr.Textbox(label="class prompt template ({} = the folder name)",
                                  value=default_template(ctx.vlm), elem_id="calibrate-template")
    cal_btn = gr.Button("calibrate", variant="primary", elem_id="calibrate-btn")
    cal_md = gr.Markdown(elem_id="calibrate-summary", elem_classes="bx-tables")
    cal_plot = gr.Plot(format="png", show_label=False, elem_id="reliability")
    cal_json = ctx.json_and_note("calibrate", NOTE)

    def run(archive: Any, template: str) -> tuple[Any, ...]:
        out = calibrate_archive(ctx.vlm, archive, template)
        return out.summary, out.figure, out.json

    ctx.wire(cal_btn, run, [cal_zip, cal_template], [cal_md, cal_plot, cal_json], "calibrate",
             lambda z, *_: [], "attribution", 1)
