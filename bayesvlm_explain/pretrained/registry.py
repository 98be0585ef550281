"""Known models and posteriors shipped with the library, keyed by open_clip ``(model name, pretrained tag)``.

* :data:`KNOWN_POSTERIORS`: posterior folders under ``bayesvlm_explain/pretrained/posteriors/`` in our format
  (``posterior.safetensors`` + ``posterior.json`` with provenance), with the licence of the original factors
  beside them. To add one: convert or fit the posterior, save it there, add its key here (see
  ``scripts/convert_reference_posterior.py`` for the authors' ViT-B/32 factors).
* :data:`KNOWN_ASSETS`: what the library knows about a model besides its posterior (label set, prompt
  template, examples, domain, licence; see :mod:`.assets`). A yardstick is found as ``yardstick.json``
  beside the posterior (``bayesvlm-explain yardstick`` writes one).

:data:`BUNDLED` is the name of the offline model shipped in the package; it is the only place that name
is spelled out. Where its folder is (:func:`bundled_dir`) and its studio examples (:func:`bundled_examples`,
:func:`bundled_photo_examples`) are read here too, so that the registry needs no other module of the package
but the label set's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import package_path

__all__ = ["BUNDLED", "BUNDLED_DIR", "KNOWN_ASSETS", "KNOWN_POSTERIORS", "AssetSpec", "asset_spec", "bundled_dir",
           "bundled_examples", "bundled_photo_examples", "known_posterior_dir"]

BUNDLED = "bundled"
"""Model name of the project's offline emoji CLIP (see :mod:`bayesvlm_explain.bundled`)."""

BUNDLED_DIR: Path = package_path(BUNDLED)  # the folder is named after the model
"""Default location of the shipped model (overridable with ``$BAYESVLM_BUNDLED_DIR``)."""

KNOWN_POSTERIORS: dict[tuple[str, str], str] = {
    # BayesVLM authors' factors (AaltoML, MIT), 327,680 LAION-400M pairs; λ re-derived (method.md §2.5).
    ("ViT-B-32", "laion2b_s34b_b79k"): "ViT-B-32__laion2b_s34b_b79k",
}
"""``(open_clip model name, pretrained tag) -> folder name`` under ``pretrained/posteriors/``."""


def _normal_tag(pretrained: str | None) -> str | None:
    """The tag as open_clip reads it (lower case, ``-`` as ``_``); ``None``/empty stays ``None``."""
    return pretrained.lower().replace("-", "_") if pretrained else None


def known_posterior_dir(model_name: str, pretrained: str | None) -> Path | None:
    """The shipped posterior folder for ``(model_name, pretrained)``, or ``None`` if there is none.

    The tag is normalised like open_clip does (lower case, ``-`` read as ``_``)."""
    folder = KNOWN_POSTERIORS.get((model_name, _normal_tag(pretrained) or ""))
    return package_path("posteriors", folder) if folder else None


def bundled_dir() -> Path:
    """The bundled model's folder: ``$BAYESVLM_BUNDLED_DIR`` if set, else :data:`BUNDLED_DIR`."""
    env = os.environ.get("BAYESVLM_BUNDLED_DIR")
    return Path(env).expanduser().resolve() if env else BUNDLED_DIR


def bundled_examples() -> list[list[Any]]:
    """``[[image_path, prompts_text], ...]`` from the shipped ``examples/examples.json``.

    Each example's prompts are its own label and two other examples' labels, in the bundled template.
    """
    from ..data.labels import PROMPT_TEMPLATE

    index = bundled_dir().parent / "examples" / "examples.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text()).get("examples", [])
    labels = [str(item["label"]) for item in items]
    out = []
    for i, item in enumerate(items):
        path = index.parent / str(item["file"]).rsplit("/", 1)[-1]
        if path.is_file():
            chosen = [labels[i], labels[(i + 1) % len(labels)], labels[(i + 3) % len(labels)]]
            out.append([str(path), "\n".join(PROMPT_TEMPLATE.format(label=x) for x in chosen)])
    return out


def bundled_photo_examples() -> list[list[Any]]:
    """``[[image_path, prompts_text], ...]`` from the shipped ``examples/photos/photos.json``: openly
    licensed photographs (credits there), each with three of the bundled labels (none of them right)."""
    from ..data.labels import PROMPT_TEMPLATE

    index = bundled_dir().parent / "examples" / "photos" / "photos.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text()).get("examples", [])
    return [[str(index.parent / str(item["file"])), "\n".join(PROMPT_TEMPLATE.format(label=x) for x in item["labels"])]
            for item in items if (index.parent / str(item["file"])).is_file()]


@dataclass(frozen=True)
class AssetSpec:
    """A registry entry: the static facts of one model, and loaders for its files (called on demand).

    Attributes:
        template: prompt template with one ``{}`` for a class name (``None``: no advice).
        domain: one sentence on what the model knows.
        licence: licence and provenance of the weights and posterior.
        pseudo_count: recommended posterior pseudo-count ``n`` (``None``: use the posterior's own).
        labels: returns the model's class names (its zero-shot label set), or ``None``.
        examples: returns ``[[image_path, prompts_text], ...]`` for the studio.
        outside_examples: the same for images outside the model's domain.
        posterior_dir: returns the folder of the model's shipped posterior (and yardstick).
    """

    template: str | None = None
    domain: str = ""
    licence: str = ""
    pseudo_count: float | None = None
    labels: Callable[[], list[str]] | None = None
    examples: Callable[[], list[list[Any]]] | None = None
    outside_examples: Callable[[], list[list[Any]]] | None = None
    posterior_dir: Callable[[], Path] | None = None


def _bundled_labels() -> list[str]:
    from ..data.labels import load_label_space

    return list(load_label_space().labels)


def _bundled_posterior_dir() -> Path:
    return bundled_dir() / "posterior"


KNOWN_ASSETS: dict[tuple[str, str | None], AssetSpec] = {
    (BUNDLED, None): AssetSpec(
        template="an emoji of {}",
        domain="a small model trained on emoji artwork; photographs are outside what it knows",
        licence="weights: trained by this project on openly licensed emoji artwork (credits in "
                "pretrained/bundled/ATTRIBUTION.md); posterior fitted by this project",
        labels=_bundled_labels, examples=bundled_examples, outside_examples=bundled_photo_examples,
        posterior_dir=_bundled_posterior_dir),
    ("ViT-B-32", "laion2b_s34b_b79k"): AssetSpec(
        template="a photo of a {}.",
        domain="OpenAI-style CLIP ViT-B/32 trained by LAION on LAION-2B (English image-text pairs from the web)",
        licence="weights: LAION (MIT, via open_clip); posterior: BayesVLM authors' factors (AaltoML, MIT), "
                "converted; see pretrained/posteriors/ViT-B-32__laion2b_s34b_b79k/README.md",
        posterior_dir=lambda: package_path("posteriors", KNOWN_POSTERIORS[("ViT-B-32", "laion2b_s34b_b79k")])),
}
"""``(model name, pretrained tag or None) -> AssetSpec``; a model not listed gets empty assets."""


def asset_spec(model_name: str, pretrained: str | None = None) -> AssetSpec | None:
    """The registry entry for ``(model_name, pretrained)`` (tag normalised), or ``None``."""
    return KNOWN_ASSETS.get((model_name, _normal_tag(pretrained)))
