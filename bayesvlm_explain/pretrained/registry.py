"""Known posteriors shipped with the library, keyed by open_clip ``(model name, pretrained tag)``.

Each entry is a folder under ``bayesvlm_explain/pretrained/posteriors/`` in our format
(``posterior.safetensors`` + ``posterior.json`` with provenance), with the licence of the original factors
beside it. To add one: convert or fit the posterior, save it there, add its key here (see
``scripts/convert_reference_posterior.py`` for the authors' ViT-B/32 factors).
"""

from __future__ import annotations

from pathlib import Path

from . import package_path

__all__ = ["KNOWN_POSTERIORS", "known_posterior_dir"]

KNOWN_POSTERIORS: dict[tuple[str, str], str] = {
    # BayesVLM authors' factors (AaltoML, MIT), 327,680 LAION-400M pairs; λ re-derived (method.md §2.5).
    ("ViT-B-32", "laion2b_s34b_b79k"): "ViT-B-32__laion2b_s34b_b79k",
}
"""``(open_clip model name, pretrained tag) -> folder name`` under ``pretrained/posteriors/``."""


def known_posterior_dir(model_name: str, pretrained: str | None) -> Path | None:
    """The shipped posterior folder for ``(model_name, pretrained)``, or ``None`` if there is none.

    The tag is normalised like open_clip does (lower case, ``-`` read as ``_``)."""
    if not pretrained:
        return None
    for (name, tag), folder in KNOWN_POSTERIORS.items():
        if name == model_name and tag == pretrained.lower().replace("-", "_"):
            return package_path("posteriors", folder)
    return None
