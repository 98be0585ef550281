"""The studio: a Gradio page over :class:`~bayesvlm_explain.BayesVLM` with the tabs of :mod:`.tabs` (Inspect,
Compare prompts, Explain, Batch, Calibrate, Select), each a function to a typed result plus its page;
:mod:`.views` holds what they share, :mod:`.uploads` checks uploaded files, :mod:`.app` builds the page
(gradio is imported on first use of :func:`build_app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pretrained.registry import bundled_examples
from .tabs.inspect import inspect_image
from .views import TABLE_HEADERS, parse_prompts

if TYPE_CHECKING:
    from ..model import BayesVLM

__all__ = ["TABLE_HEADERS", "build_app", "bundled_examples", "parse_prompts", "prediction_table"]


def prediction_table(vlm: BayesVLM, image: Any, prompts_text: str) -> list[list[Any]]:
    """Rows of :data:`TABLE_HEADERS` for one image file, the most probable prompt first (no yardstick)."""
    return inspect_image(vlm, image, prompts_text).rows


def build_app(vlm: BayesVLM, **kwargs: Any) -> Any:
    """The studio page (see :func:`.app.build_app`); imports gradio."""
    from .app import build_app as build

    return build(vlm, **kwargs)

