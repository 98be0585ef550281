"""The bundled model's zero-shot label space and prompt template: all the runtime needs of the emoji data.

The label space is package data (``emoji_labels.json``, read with :mod:`importlib.resources`); it is
written at build time by ``scripts/build_emoji_data.py --write-benchmark`` (the build-only pipeline in
``tools.emoji`` in the repository), so loading it needs neither the network nor the rendered cache.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; importlib.resources.abc is Python 3.11+, importlib.abc has it before
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable  # novermin (guarded by the version check)
    else:
        from importlib.abc import Traversable

__all__ = [
    "LABEL_SPACE_FILE",
    "PROMPT_TEMPLATE",
    "LabelSpace",
    "LabelSpaceError",
    "label_space_resource",
    "load_label_space",
]

PROMPT_TEMPLATE: str = "an emoji of {label}"
"""Zero-shot prompt template of the bundled model; also its most frequent training caption."""

LABEL_SPACE_FILE: str = "emoji_labels.json"
"""Name of the committed label space inside the ``bayesvlm_explain.data`` package."""


class LabelSpaceError(ValueError):
    """A label-space file that cannot be read (the message names the file and the cause)."""


@dataclass(frozen=True)
class LabelSpace:
    """Zero-shot classes: ``keys[i]`` (emoji codepoint key) / ``labels[i]`` (CLDR name) is class ``i``."""

    keys: tuple[str, ...]
    labels: tuple[str, ...]
    subgroups: tuple[str, ...]
    template: str = PROMPT_TEMPLATE

    def prompts(self) -> list[str]:
        """One prompt per class, e.g. ``"an emoji of dog face"``."""
        return [self.template.format(label=label) for label in self.labels]

    def __len__(self) -> int:
        return len(self.keys)


def label_space_resource() -> Traversable:
    """The committed label-space JSON as a package resource."""
    return files("bayesvlm_explain.data") / LABEL_SPACE_FILE


def load_label_space(path: str | os.PathLike[str] | None = None) -> LabelSpace:
    """The label space in ``path`` (default: the committed one shipped with the package).

    Raises:
        LabelSpaceError: the file is not JSON or lacks a field, naming the file and the cause.
    """
    source = label_space_resource() if path is None else Path(path)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
        classes = payload["classes"]
        return LabelSpace(
            keys=tuple(c["key"] for c in classes),
            labels=tuple(c["label"] for c in classes),
            subgroups=tuple(c["subgroup"] for c in classes),
            template=payload.get("template", PROMPT_TEMPLATE),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise LabelSpaceError(f"{source}: not a label space ({type(err).__name__}: {err})") from err
