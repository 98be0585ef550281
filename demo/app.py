"""Gradio entry point for Hugging Face Spaces and local runs: a thin wrapper over ``bayesvlm_explain.ui``.

Environment: ``BAYESVLM_MODEL`` (default ``bundled``), ``BAYESVLM_PRETRAINED``, ``BAYESVLM_POSTERIOR``.
"""

from __future__ import annotations

import os

from bayesvlm_explain import BayesVLM
from bayesvlm_explain.ui import build_app, bundled_examples

MODEL = os.environ.get("BAYESVLM_MODEL", "bundled")
vlm = BayesVLM.from_pretrained(MODEL, pretrained=os.environ.get("BAYESVLM_PRETRAINED") or None,
                               posterior=os.environ.get("BAYESVLM_POSTERIOR") or None)
demo = build_app(vlm, examples=bundled_examples() if MODEL == "bundled" else None)

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
