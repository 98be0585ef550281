"""The project's bundled offline CLIP-style model (trained here on openly licensed emoji artwork).

``assets/bundled/`` is an open_clip ``local-dir`` model: ``open_clip_config.json`` (``model_cfg`` +
``preprocess_cfg``), ``open_clip_model.safetensors`` and a WordPiece tokenizer in ``tokenizer/``.
open_clip keeps the tokenizer location in ``text_cfg.hf_tokenizer_name`` as a path, so the shipped config
stores it relative to the model directory and :func:`load_bundled` patches in the absolute path at run time.

Architecture: plain ``open_clip.CLIP`` with open_clip's ``VisionTransformer`` (``visual.proj`` is a
``[vision_width, D]`` Parameter) and built-in ``TextTransformer`` (``text_projection`` a ``[text_width, D]``
Parameter, ``pool_type="eos"`` so the ``[SEP]`` token feature enters the projection). Recipe and metrics are
in ``assets/bundled/training.json``; artwork credits in ``assets/bundled/ATTRIBUTION.md``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_MODEL_NAME",
    "bundled_config",
    "bundled_dir",
    "load_bundled",
    "register_bundled_config",
]

BUNDLED_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "bundled"
"""Default location of the shipped model (overridable with ``$BAYESVLM_BUNDLED_DIR``)."""

BUNDLED_MODEL_NAME: str = "bayesvlm-emoji-vit-tiny"
"""Name under which :func:`register_bundled_config` registers the architecture with open_clip."""


def bundled_dir() -> Path:
    """The model directory: ``$BAYESVLM_BUNDLED_DIR`` if set, else :data:`BUNDLED_DIR`."""
    env = os.environ.get("BAYESVLM_BUNDLED_DIR")
    return Path(env).expanduser().resolve() if env else BUNDLED_DIR


def bundled_config(model_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``open_clip_config.json`` with ``text_cfg.hf_tokenizer_name`` made absolute."""
    root = Path(model_dir) if model_dir is not None else bundled_dir()
    cfg = json.loads((root / "open_clip_config.json").read_text(encoding="utf-8"))
    cfg = copy.deepcopy(cfg)
    text_cfg = cfg["model_cfg"]["text_cfg"]
    tok = Path(text_cfg.get("hf_tokenizer_name") or "tokenizer")
    text_cfg["hf_tokenizer_name"] = str(tok if tok.is_absolute() else (root / tok).resolve())
    return cfg


def register_bundled_config(
    model_cfg: dict[str, Any] | None = None, name: str = BUNDLED_MODEL_NAME
) -> str:
    """Register the architecture with open_clip (``open_clip.add_model_config``); returns its name.

    Afterwards ``open_clip.create_model(name)`` and ``open_clip.get_tokenizer(name)`` work.
    ``model_cfg`` defaults to the shipped config with the tokenizer path patched.
    """
    import open_clip

    if model_cfg is None:
        model_cfg = bundled_config()["model_cfg"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(model_cfg), encoding="utf-8")
        open_clip.add_model_config(path)
    return name


@contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_bundled(device: str | torch.device | None = None):
    """Load the bundled model offline.

    Returns:
        ``(model, tokenizer, preprocess)``: an eval-mode ``open_clip.CLIP`` on ``device`` (default CPU),
        an open_clip ``HFTokenizer`` (``tokenizer(list_of_str) -> LongTensor[N, context_length]``) and the
        eval transform (``PIL.Image -> FloatTensor[3, S, S]``, S = image size, 64 px).
    """
    import open_clip
    from safetensors.torch import load_file

    root = bundled_dir()
    cfg = bundled_config(root)
    name = register_bundled_config(cfg["model_cfg"])
    with _quiet_root_logger():  # open_clip warns "no pretrained weights"; ours are loaded just below
        model = open_clip.create_model(name, pretrained=None, device="cpu")
    state = load_file(str(root / "open_clip_model.safetensors"), device="cpu")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model = model.to(device or "cpu").eval()
    tokenizer = open_clip.get_tokenizer(name)
    pp = cfg.get("preprocess_cfg", {})
    preprocess = open_clip.image_transform(
        pp.get("size", model.visual.image_size),
        is_train=False,
        mean=pp.get("mean"),
        std=pp.get("std"),
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
        fill_color=pp.get("fill_color", 0),
    )
    return model, tokenizer, preprocess
