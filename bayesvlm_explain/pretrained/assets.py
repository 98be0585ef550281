"""What the library knows about a model besides its weights: :class:`ModelAssets`.

``BayesVLM.from_pretrained`` attaches one to every model as ``vlm.assets``, from the name-keyed registry
(:data:`~.registry.KNOWN_ASSETS`) and the posterior folder: a ``yardstick.json`` beside ``posterior.json``
is loaded and checked against the model and posterior, for any model. An unknown model gets empty assets
(no labels, no template advice, no yardstick) with a note saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import asset_spec

if TYPE_CHECKING:
    from ..model import BayesVLM

__all__ = ["ModelAssets", "load_assets"]


@dataclass
class ModelAssets:
    """A model's label set, prompt template, yardstick, examples and provenance (all optional).

    Attributes:
        labels: class names of the model's own label set (its in-domain classes), or ``None``.
        template: prompt template with one ``{}`` for a class name, or ``None``.
        yardstick: the :class:`~bayesvlm_explain.yardstick.Yardstick` of this model and posterior, or ``None``.
        yardstick_note: one sentence on the yardstick (its reference images, or why there is none).
        examples: ``[[image_path, prompts_text], ...]`` shown by the studio (images the model knows).
        outside_examples: the same for images outside what the model knows (its out-of-domain flag at work).
        pseudo_count: recommended posterior pseudo-count ``n``: the registry's, else the one a calibration
            recorded in the posterior (``posterior.metadata["calibration"]``), else ``None``.
        domain: one sentence on what the model knows.
        licence: licence and provenance of the weights and posterior.
    """

    labels: list[str] | None = None
    template: str | None = None
    yardstick: Any = None
    yardstick_note: str = "No yardstick is known for this model and posterior."
    examples: list[list[Any]] = field(default_factory=list)
    outside_examples: list[list[Any]] = field(default_factory=list)
    pseudo_count: float | None = None
    domain: str = ""
    licence: str = ""

    def prompts(self) -> list[str] | None:
        """The label set written as prompts (``template`` filled with each label; ``None`` without labels)."""
        if self.labels is None:
            return None
        return [(self.template or "{}").format(label) for label in self.labels]


def load_assets(vlm: BayesVLM, model_name: str, pretrained: str | None = None,
                posterior_dir: str | Path | None = None) -> ModelAssets:
    """The assets of ``vlm`` (loaded as ``model_name``/``pretrained``) with the yardstick stored in
    ``posterior_dir`` (default: the registry's shipped posterior folder), checked against ``vlm``."""
    spec = asset_spec(model_name, pretrained)
    assets = ModelAssets()
    if spec is not None:
        assets = ModelAssets(labels=spec.labels() if spec.labels else None, template=spec.template,
                             examples=spec.examples() if spec.examples else [],
                             outside_examples=spec.outside_examples() if spec.outside_examples else [],
                             pseudo_count=spec.pseudo_count,
                             domain=spec.domain, licence=spec.licence)
        if posterior_dir is None and spec.posterior_dir is not None:
            posterior_dir = spec.posterior_dir()
    calibration = vlm.posterior.metadata.get("calibration") if vlm.posterior is not None else None
    if assets.pseudo_count is None and isinstance(calibration, dict) and "pseudo_count" in calibration:
        assets.pseudo_count = float(calibration["pseudo_count"])
    attach_yardstick(vlm, assets, posterior_dir)
    return assets


def attach_yardstick(vlm: BayesVLM, assets: ModelAssets, directory: str | Path | None) -> None:
    """Set ``assets.yardstick`` from ``directory/yardstick.json`` when it is there and fits ``vlm``."""
    from ..yardstick import FILE_NAME, Yardstick, YardstickError

    if directory is None or vlm.posterior is None or not (Path(directory) / FILE_NAME).is_file():
        return
    try:
        ys = Yardstick.load(directory)
        ys.check(vlm)
    except YardstickError as err:
        assets.yardstick_note = f"Yardstick unavailable: {err}."
        return
    assets.yardstick, assets.yardstick_note = ys, f"Yardstick: {ys.reference}."


def rescaled_assets(vlm: BayesVLM, assets: ModelAssets) -> ModelAssets:
    """``assets`` for ``vlm`` after its posterior changed scale: the yardstick is kept only if it was made
    for that posterior (else dropped, with a note saying why)."""
    from ..yardstick import YardstickError

    if assets.yardstick is None:
        return assets
    try:
        assets.yardstick.check(vlm)
    except YardstickError:
        n, built = vlm.require_posterior().image.pseudo_count, assets.yardstick.posterior.get("pseudo_count")
        return replace(assets, yardstick=None,
                       yardstick_note=f"No yardstick at n = {n:g} (it was built for n = {built:g}): the "
                                      "out-of-domain verdict is off.")
    return assets
