"""Local Gradio entry point (``python demo/app.py``): the same app as an exported Hugging Face Space.

Environment: ``BAYESVLM_MODEL`` (default ``bundled``), ``BAYESVLM_PRETRAINED``, ``BAYESVLM_POSTERIOR``.
To publish a Space, use ``bayesvlm-explain export-space DIR`` (see the README).
"""

from __future__ import annotations

import os

from bayesvlm_explain.space import build_space_app

demo = build_space_app(model=os.environ.get("BAYESVLM_MODEL", "bundled"),
                       pretrained=os.environ.get("BAYESVLM_PRETRAINED") or None,
                       posterior=os.environ.get("BAYESVLM_POSTERIOR") or None)

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
