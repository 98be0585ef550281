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
    "confident images. *fit the posterior scale n*: the images are split in two seeded halves; n is chosen on "
    "the first (MC NLL, λ re-fitted by marginal likelihood for each n) and both posteriors are compared on the "
    "second, so the after-figure is not measured on the images it was fitted on. Pick the chosen n in the "
    "scale control above to use it."
)
"""The tab's "what does this mean?" text."""


@dataclass
class CalibrateResult:
    """What :func:`calibrate_archive` returns; the page, the API and the CLI render it.

    Attributes:
        json: the /calibrate API payload (``evaluate``'s report + ``refused``)
        figure: the reliability diagram (matplotlib)
        summary: Markdown
    The payload's ``scale_fit`` (when asked) holds the chosen ``pseudo_count``, the two halves' sizes and the
    ``before``/``after`` metrics on the held-out half.
    """

    json: dict[str, Any]
    figure: Any
    summary: str


def default_template(vlm: BayesVLM) -> str:
    """The class-prompt template offered for ``vlm``: its assets' template, else the photo one."""
    from ...evaluation.evaluate import DEFAULT_TEMPLATE

    return getattr(getattr(vlm, "assets", None), "template", None) or DEFAULT_TEMPLATE


def fit_scale(vlm: BayesVLM, files: list[str], labels: list[int], prompts: list[str], seed: int = 0
              ) -> dict[str, Any]:
    """Choose the pseudo-count on a seeded half of the images (on a private copy of the posterior) and
    compare ``vlm`` with the refitted posterior on the other half: accuracy, ECE, NLPD, Brier."""
    import torch

    from ...adapters import Features
    from ...evaluation.calibrate import PSEUDO_COUNTS, LabeledFeatures, calibrate_posterior
    from ...evaluation.metrics import calibration_metrics

    if len(files) < 10:
        raise InputError(f"fitting n needs at least 10 labelled images (5 to fit, 5 to check), got {len(files)}")
    feats, txt = vlm.encode_images(files), vlm.encode_prompts(prompts)
    y = torch.tensor(labels)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
    fit_rows, test_rows = order[: len(files) // 2], order[len(files) // 2:]

    def rows(index: torch.Tensor) -> Features:
        return Features(feats.activations[index], feats.embeddings[index])

    private = vlm.with_pseudo_count(vlm.require_posterior().image.pseudo_count)  # the shared model stays as it is
    chosen = calibrate_posterior(private, LabeledFeatures(rows(fit_rows), prompts, txt, y[fit_rows]), "nll",
                                 predictive=RECOMMENDED, pseudo_counts=PSEUDO_COUNTS, num_samples=NUM_SAMPLES)

    def metrics(model: BayesVLM) -> dict[str, float]:
        pred = model.predict_features(rows(test_rows), txt, prompts, predictive=RECOMMENDED,
                                      num_samples=NUM_SAMPLES, seed=seed)
        return {"pseudo_count": model.require_posterior().image.pseudo_count,
                **calibration_metrics(pred.probs, y[test_rows])}

    return {"pseudo_count": chosen.pseudo_count, "at_grid_edge": chosen.at_grid_edge,
            "fitted_on": len(fit_rows), "compared_on": len(test_rows), "before": metrics(vlm),
            "after": metrics(private)}


def scale_markdown(fit: dict[str, Any]) -> str:
    """The before/after table of :func:`fit_scale`."""
    keys = ("accuracy", "ece", "nlpd", "brier")
    lines = [f"**Posterior scale fitted on {fit['fitted_on']} images: n = {fit['pseudo_count']:g}**"
             + (" (at the edge of the grid)" if fit["at_grid_edge"] else "")
             + f"; compared on the other {fit['compared_on']}:", "",
             "| posterior | n | accuracy | ECE | NLPD | Brier |", "|---|---|---|---|---|---|"]
    for name in ("before", "after"):
        m = fit[name]
        lines.append(f"| {name} | {m['pseudo_count']:g} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def calibrate_archive(vlm: BayesVLM, archive: Any, template: str, fit_n: bool = False) -> CalibrateResult:
    """The Calibrate view: a labelled zip (one folder per class) evaluated deterministic vs Bayes.

    The class names (folder names decoded by :func:`~bayesvlm_explain.data.folders.class_name`) fill
    ``template``; metrics, misclassification AUROCs and settings are those of
    :func:`~bayesvlm_explain.evaluation.evaluate.evaluate` with the studio's recommended predictive.
    ``fit_n``: also fit the posterior scale on half of the images (:func:`fit_scale`).
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
            files = [(str(f), i) for i, (c, fs) in enumerate(tree.classes.items()) for f in fs]
            fit = fit_scale(vlm, [f for f, _ in files], [i for _, i in files],
                            class_prompts(classnames, template.strip())) if fit_n else None
        except EvaluationError as err:
            raise InputError(str(err)) from None
    payload = {k: v for k, v in result.report.items() if k != "cache"}  # no feature cache in the studio
    payload.update(data=name, refused=tree.refused)
    if fit is not None:
        payload["scale_fit"] = fit
    figure = reliability_diagram(result.probs, result.labels, n_bins=payload["settings"]["ece_bins"],
                                 title=f"reliability: {name}")
    summary = summary_markdown(payload).split("\n", 1)[1].strip()
    if fit is not None:
        summary = scale_markdown(fit) + "\n\n" + summary
    if tree.refused:
        summary += f"\n\nRefused files ({len(tree.refused)}): " + "; ".join(tree.refused[:5])
    return CalibrateResult(json=payload, figure=figure, summary=summary)


def page(ctx: StudioContext) -> None:
    """The Calibrate tab's components and its ``/calibrate`` endpoint."""
    import gradio as gr

    with gr.Row():
        cal_zip = gr.File(label="labelled images (zip: one folder per class)", file_types=[".zip"],
                          type="filepath", elem_id="calibrate-zip")
        with gr.Column():
            cal_template = gr.Textbox(label="class prompt template ({} = the folder name)",
                                      value=default_template(ctx.vlm), elem_id="calibrate-template")
            cal_fit = gr.Checkbox(label="also fit the posterior scale n (half the images fit it, half check it)",
                                  value=False, elem_id="calibrate-fit")
    cal_btn = gr.Button("calibrate", variant="primary", elem_id="calibrate-btn")
    cal_md = gr.Markdown(elem_id="calibrate-summary", elem_classes="bx-tables")
    cal_plot = gr.Plot(format="png", show_label=False, elem_id="reliability")
    cal_json = ctx.json_and_note("calibrate", NOTE)

    def run(archive: Any, template: str, fit_n: bool) -> tuple[Any, ...]:
        out = calibrate_archive(ctx.vlm, archive, template, bool(fit_n))
        return out.summary, out.figure, out.json

    ctx.wire(cal_btn, run, [cal_zip, cal_template, cal_fit], [cal_md, cal_plot, cal_json], "calibrate",
             lambda z, *_: [], "attribution", 1)
