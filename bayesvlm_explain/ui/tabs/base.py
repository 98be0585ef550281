"""What every tab's page function receives: the model, the shared inputs and the wiring (no gradio import)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...model import BayesVLM


@dataclass
class StudioContext:
    """The studio's shared state, built once by :func:`~bayesvlm_explain.ui.app.build_app`.

    Attributes:
        vlm: the model. yardstick: its yardstick or ``None``.
        image / prompts: the shared image-file and class-prompts components.
        default_prompts: the prompts shown first (one per line).
        downloads: folder for CSV/JSON downloads (files older than 10 minutes are removed).
        wire: ``wire(button, fn, inputs, outputs, api_name, uploads, concurrency_id, limit)`` runs ``fn``
            on a click with cleared outputs, user errors as messages, admitted by :mod:`..admission` in its lane.
        json_and_note: ``json_and_note(api_name, note)`` adds a tab's JSON accordion and note; returns the JSON.
    """

    vlm: BayesVLM
    yardstick: Any
    image: Any
    prompts: Any
    default_prompts: str
    downloads: Path
    wire: Callable[..., None]
    json_and_note: Callable[[str, str], Any]

    def save_download(self, prefix: str, suffix: str, payload: str | dict[str, Any]) -> str:
        """Write ``payload`` (text, or JSON) to a fresh file in :attr:`downloads`; returns its path."""
        for old in self.downloads.glob("*"):
            if time.time() - old.stat().st_mtime > 600:
                old.unlink(missing_ok=True)
        path = self.downloads / f"{prefix}-{time.time_ns()}{suffix}"
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=1)
        path.write_text(text, encoding="utf-8")
        return str(path)
